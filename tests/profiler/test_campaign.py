"""The validation campaign's run keys are the options of ``vramplan profile``, derived, not spelled again."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vramplan.cli.profile import profile
from vramplan.errors import PlanFileError
from vramplan.profiler.campaign import RUN_KEYS, load_matrix, profile_argv

#: profile options a campaign sets itself (``--out``) or does not take (``--snapshot``, ``--json``)
NOT_RUN_KEYS = {"out", "snapshot", "as_json"}


def test_run_keys_are_the_options_of_vramplan_profile():
    options = {p.name for p in profile.params} - {"model"}
    assert RUN_KEYS - {"model", "id"} == options - NOT_RUN_KEYS


def test_loss_is_not_a_run_key(tmp_path: Path):
    p = tmp_path / "m.yaml"
    p.write_text("runs: [{model: gpt2, loss: chunked}]")
    with pytest.raises(PlanFileError, match="run 0: unknown key 'loss'"):
        load_matrix(p)


def test_profile_argv_is_read_back_by_vramplan_profile(tmp_path: Path):
    doc = {"runs": [{"model": "gpt2", "method": "qlora", "quant": "fp4", "double_quant": False, "gpus": 2,
                     "strategy": "fsdp", "offload": "params", "rank": 16, "targets": ["c_attn", "c_proj"],
                     "dora": True, "steps": 2, "loop": "plain", "until_oom": "batch"}]}
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(doc))
    (run,), _ = load_matrix(p)
    argv = profile_argv(run, tmp_path / "out")
    assert argv[2:4] == ["vramplan", "profile"]
    params = profile.make_context("profile", argv[4:]).params
    assert {k: params[k] for k in ("model", "method", "quant", "double_quant", "gpus", "strategy", "offload",
                                   "rank", "targets", "dora", "steps", "loop", "until_oom", "out")} == {
        "model": "gpt2", "method": "qlora", "quant": "fp4", "double_quant": False, "gpus": 2, "strategy": "fsdp",
        "offload": "params", "rank": 16, "targets": "c_attn,c_proj", "dora": True, "steps": 2, "loop": "plain",
        "until_oom": "batch", "out": str(tmp_path / "out")}
