"""``--versions``: the library versions an estimate is for, and a warning for each change of memory behaviour the
named versions predate (issue 14). Releases are the ones docs/stacks.md dates from each library's source."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramplan.cli.main import cli
from vramplan.errors import SetupError
from vramplan.setup import setup_from_options
from vramplan.versions import (
    CHANGES,
    PINNED,
    modelled_versions,
    parse_versions,
    predates,
    release_tuple,
    version_assumptions,
    version_warnings,
)

ROOT = Path(__file__).resolve().parents[1]


def test_pinned_versions_are_the_tested_stack():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / ".ci" / "constraints.txt").read_text(), re.M))
    assert {k: pins[k] for k in PINNED} == PINNED


@pytest.mark.parametrize(("text", "expected"), [
    ("bitsandbytes=0.43.1", {"bitsandbytes": "0.43.1"}),
    (" Transformers = 4.44.2 , peft=0.11.1", {"transformers": "4.44.2", "peft": "0.11.1"}),
    ("torch==2.4.0", {"torch": "2.4.0"}), ("ms_swift=3.2.0", {"ms-swift": "3.2.0"}), ("", {}),
])
def test_parse(text, expected):
    assert parse_versions(text) == expected


@pytest.mark.parametrize(("text", "fragment"), [
    ("bitsandbytes", "is not PKG=VER"), ("numpy=2.0", "not one vramplan models"), ("torch=latest", "not a release"),
])
def test_parse_refuses(text, fragment):
    with pytest.raises(SetupError, match=fragment):
        parse_versions(text)


def test_release_tuple_drops_local_and_pre_release_parts():
    assert release_tuple("2.13.0+cpu") == (2, 13, 0) and release_tuple("4.43.0.dev0") == (4, 43, 0)
    assert release_tuple("0.43.1") < release_tuple("0.43.2") < release_tuple("0.50.0")


@pytest.mark.parametrize(("bnb", "changes"), [("0.43.1", ["0.43.2", "0.50.0"]), ("0.43.2", ["0.50.0"]),
                                              ("0.49.2", ["0.50.0"]), ("0.50.0", []), ("0.50.2", [])])
def test_an_assumption_per_modelled_change_the_version_predates(bnb, changes):
    """bitsandbytes' two changes are modelled (vramplan/estimate/layers.py): assumptions, never warnings."""
    versions = modelled_versions(f"bitsandbytes={bnb}")
    got = [re.search(r"predates (\S+):", x).group(1) for x in version_assumptions(versions)
           if x.startswith("bitsandbytes")]
    assert got == changes
    assert not [w for w in version_warnings(versions) if w.startswith("bitsandbytes")]


@pytest.mark.parametrize(("tf", "changes"), [("4.44.2", ["4.45.0", "4.46.0", "4.49.0", "4.54.0"]),
                                            ("4.48.3", ["4.49.0", "4.54.0"]), ("4.53.3", ["4.54.0"])])
def test_an_assumption_per_transformers_change_it_predates(tf, changes):
    # the releases each change landed in (docs/stacks.md "Library versions"), all modelled: none is a warning
    versions = modelled_versions(f"transformers={tf}")
    got = [re.search(r"predates (\S+):", x).group(1) for x in version_assumptions(versions)
           if x.startswith("transformers")]
    assert got == changes
    assert not [w for w in version_warnings(versions) if w.startswith("transformers")]


def test_a_warning_per_change_not_modelled(monkeypatch):
    # every change read so far is modelled; one that is not yet must be a warning naming its release and source
    import vramplan.versions as v

    monkeypatch.setattr(v, "CHANGES", (*CHANGES, v.Change("peft", "0.13.0", "something else", "peft 0.13.0 x.py")))
    got = v.version_warnings(modelled_versions("peft=0.12.0"))
    assert len(got) == 1 and "peft 0.12.0 (--versions) predates 0.13.0: before it, something else" in got[0]
    assert "peft 0.13.0 x.py" in got[0]
    assert not [c for c in CHANGES if not c.modelled]


@pytest.mark.parametrize(("method", "precision", "dtype"), [
    # peft 0.11.1 tuners/lora/layer.py:123-131 update_layer: self.to(dtype=weight.dtype) for a floating-point base
    # weight (measured: get_peft_model on a bf16 Llama under peft 0.11.1 gives bf16 lora_A/lora_B); a 4-bit
    # base's uint8 weight is not floating point, so its adapters stay fp32
    ("lora", "bf16-mixed", "bf16"), ("lora", "bf16-true", "bf16"), ("qlora", "bf16-mixed", "fp32"),
    ("lora", "32-true", "fp32")])
def test_peft_before_0_12_builds_adapters_in_the_base_dtype(method, precision, dtype):
    s = setup_from_options({"method": method, "precision": precision, "versions": "peft=0.11.1"})
    assert s.adapter_weight_dtype == dtype
    assert setup_from_options({"method": method, "precision": precision}).adapter_weight_dtype == "fp32"
    # torchtune and LitGPT build their own adapters: PEFT's release does not matter
    assert setup_from_options({"method": "lora", "stack": "torchtune", "versions": "peft=0.11.1"}) \
        .adapter_weight_dtype == "bf16"


def test_accelerate_before_1_6_runs_fsdp_as_fsdp1():
    # accelerate 1.5.2 has no fsdp_version: FullyShardedDataParallel (FSDP1) is its only FSDP
    s = setup_from_options({"method": "full", "gpus": 8, "strategy": "fsdp", "versions": "accelerate=1.5.2"})
    assert s.strategy == "fsdp1"
    assert setup_from_options({"method": "full", "gpus": 8, "strategy": "fsdp"}).strategy == "fsdp"
    # torchtune shards with its own fully_shard, not accelerate
    assert setup_from_options({"method": "full", "gpus": 8, "stack": "torchtune",
                               "versions": "accelerate=1.5.2"}).strategy == "fsdp"


def test_every_modelled_change_names_code_that_exists():
    """``modelled`` says where the older behaviour is priced: that file and function must exist."""
    for c in CHANGES:
        if not c.modelled:
            continue
        path, func = re.match(r"(vramplan/\S+\.py) (\w+)\.(\w+)", c.modelled).group(1, 3)
        assert re.search(rf"def {func}\(", (ROOT / path).read_text()), c


def test_the_pinned_stack_gets_no_version_warning():
    assert version_warnings({k: (v, "pinned") for k, v in PINNED.items()}) == []


def test_versions_reach_the_json_and_the_setup():
    r = CliRunner().invoke(cli, ["plan", "llama-3.2-1b", "--method", "qlora", "--versions",
                                 "transformers=4.44.2,bitsandbytes=0.43.1", "--json"], catch_exceptions=False)
    d = json.loads(r.stdout)
    assert d["setup"]["versions"] == "bitsandbytes=0.43.1,transformers=4.44.2"     # canonical: sorted
    assert d["versions"]["bitsandbytes"] == "0.43.1" and d["versions"]["transformers"] == "4.44.2"
    assert not [w for w in d["warnings"] if "predates" in w]
    # bitsandbytes 0.43.2 and 0.50.0 and transformers 4.45 (generate's logits), 4.46 (fp32 logits output), 4.49
    # (the shifted copy) and 4.54 (the Trainer's fused AdamW default) are modelled: an assumption each
    assert sum("bitsandbytes 0.43.1 (--versions) predates" in a for a in d["assumptions"]) == 2
    assert sum("transformers 4.44.2 (--versions) predates" in a for a in d["assumptions"]) == 4
    assert d["setup"]["optim"] == "adamw-foreach"


def test_predates():
    v = modelled_versions("bitsandbytes=0.43.1")
    assert predates(v, "bitsandbytes", "0.43.2") and not predates(v, "bitsandbytes", "0.43.1")
    assert not predates(v, "litgpt", "0.5.11")       # a package not named is not older


def test_bad_versions_are_one_line_exit_2():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "vramplan", "plan", "llama-3.2-1b", "--versions", "bnb=1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "'bnb'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(SetupError):
        setup_from_options({"versions": "peft"})
