"""Deep models (issue 18 class 2): the layer count is an input cap (``vramplan/shapes/config.py`` MAX_LAYERS),
and the walks over every tensor that a search over --gpus repeats are done once per structure
(``estimate/distributed.py`` memo; benchmarks/layer_scaling.py measures the cost per layer). A memo must never
change an answer: estimates of every strategy and GPU count, computed in one warm sequence, equal the same
estimates each made cold on a fresh ModelSpec."""

from __future__ import annotations

import pytest
from hostile_helpers import QWEN3_06B, vp, write_config

from vramplan.cli.options import setup_from_options
from vramplan.estimate import estimate
from vramplan.profiles import resolve_gpu
from vramplan.shapes.config import MAX_LAYERS
from vramplan.shapes.from_config import spec_from_config

SETUPS = [{"method": "lora"}, {"method": "full", "grad_ckpt": True}, {"method": "qlora"},
          {"method": "full", "strategy": "zero3", "offload": "optimizer"}]
STRATEGIES = ["fsdp", "fsdp-grad-op", "zero1", "zero2", "zero3", "fsdp1"]


def _spec(layers: int = 12):
    return spec_from_config({**QWEN3_06B, "num_hidden_layers": layers}, name="qwen3-deep")


@pytest.mark.parametrize("opts", SETUPS, ids=[o["method"] + ("-offload" if "offload" in o else "") for o in SETUPS])
def test_estimates_over_gpu_counts_are_the_same_warm_or_cold(opts):
    gpu = resolve_gpu("a100-80gb")
    base = setup_from_options(opts)
    warm = _spec()
    for strategy in STRATEGIES:
        if opts.get("offload") and strategy.startswith("fsdp"):
            continue
        for n in (2, 3, 5, 8):
            s = base.with_(gpus=n, strategy=strategy)
            a, b = estimate(warm, s, gpu).to_dict(), estimate(_spec(), s, gpu).to_dict()
            assert a == b, (strategy, n)


@pytest.mark.parametrize("layers", [MAX_LAYERS + 1, 10**9, 10**400])
def test_the_layer_cap_is_one_line_naming_it(tmp_path, layers):
    """10**9 layers named the width cap (16,777,216), not the layer cap the README states."""
    write_config(tmp_path / "c", num_hidden_layers=layers)
    for command in ("plan", "params"):
        r = vp(command, str(tmp_path / "c"), codes=(2,))
        assert f"more than the {MAX_LAYERS:,} layers" in r.stderr


def test_a_model_at_the_layer_cap_is_counted_exactly(tmp_path):
    """qwen3-0.6b's shapes at 4,096 layers: per layer q,k,v,o (1024x2048, 1024x1024 twice, 2048x1024), the MLP
    (3 x 1024x3072), two RMSNorms (1024) and q/k norms (128 each); embeddings 151,936 x 1,024 (tied) and the
    final norm (transformers Qwen3 modeling: Qwen3DecoderLayer, Qwen3Attention)."""
    write_config(tmp_path / "c", num_hidden_layers=MAX_LAYERS)
    per_layer = 1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 3 * 1024 * 3072 + 2 * 1024 + 2 * 128
    import json

    d = json.loads(vp("params", str(tmp_path / "c"), "--json", codes=(0,)).stdout)
    assert d["params"]["total"] == MAX_LAYERS * per_layer + 151_936 * 1_024 + 1_024
