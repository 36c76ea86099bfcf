"""``--device-map``: the split of ``from_pretrained(device_map=...)`` against transformers' own functions.

Each case builds the real model on the meta device and asks transformers 5.24.0 (``integrations/accelerate.py::
_get_device_map``, which runs ``get_balanced_memory`` and ``infer_auto_device_map``) for the device map under a
``max_memory`` budget; vramplan's pure-Python replay (``vramplan/estimate/device_map.py``) must give the same map.
transformers also lists modules without parameters (the rotary embedding, which holds a non-persistent buffer);
vramplan's shapes have no such modules, so those entries are left out of the comparison.
"""

from __future__ import annotations

import logging

import pytest
from cli_entry import vp

from vramplan.errors import SetupError
from vramplan.estimate.device_map import layer_ranges, module_tree, parse_max_memory, plan_device_map
from vramplan.shapes import spec_from_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_BASE = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=8, vocab_size=5000)
FAMILIES = {
    "llama": dict(_BASE, model_type="llama", tie_word_embeddings=False),
    "llama-tied": dict(_BASE, model_type="llama", tie_word_embeddings=True),
    "qwen2": dict(_BASE, model_type="qwen2", tie_word_embeddings=True),
    "gemma2": dict(_BASE, model_type="gemma2", head_dim=64),
    "mixtral": dict(_BASE, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2,
                    tie_word_embeddings=False),
}
#: budgets as fractions of the model's bytes: per GPU, then the CPU's (None = not given)
BUDGETS = [((0.6, 0.6), None), ((0.3, 0.3, 0.3, 0.3), None), ((0.5, 0.2), 0.2), ((0.25, 0.25), None),
           ((0.8,), None), ((0.45, 0.35, 0.5), 0.1)]


def _meta_model(cfg: dict):
    hc = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(hc, dtype=torch.bfloat16)


def _with_params(model, device_map: dict) -> dict:
    named = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return {k: v for k, v in device_map.items() if k == "" or any(p == k or p.startswith(k + ".") for p in named)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("strategy", ["auto", "balanced_low_0", "sequential"])
def test_device_map_matches_transformers(family, strategy):
    from transformers.integrations.accelerate import _get_device_map

    logging.disable(logging.WARNING)        # "Device 0 is not available" on this CPU machine
    try:
        cfg = FAMILIES[family]
        model = _meta_model(cfg)
        spec = spec_from_config(cfg, name=f"tiny-{family}")
        total = module_tree(spec, "bf16")[0].size
        assert total == sum(p.numel() * 2 for p in model.parameters()), "tied weights counted once, as transformers"
        for gpus, cpu in BUDGETS:
            mm = {i: int(f * total) for i, f in enumerate(gpus)}
            if cpu is not None:
                mm["cpu"] = int(cpu * total)
            want = _with_params(model, dict(_get_device_map(model, strategy, dict(mm), None)))
            text = ",".join(f"{k}={v}B" for k, v in mm.items())
            got = plan_device_map(spec, "bf16", strategy, len(gpus), None, text)
            assert got.device_map == want, f"{family} {strategy} max_memory {mm}"
    finally:
        logging.disable(logging.NOTSET)


def test_shares_add_up_and_tied_head_follows_the_embedding():
    cfg = FAMILIES["llama-tied"]
    spec = spec_from_config(cfg, name="tiny")
    total = module_tree(spec, "bf16")[0].size
    plan = plan_device_map(spec, "bf16", "auto", 2, int(0.7 * total), None)
    assert sum(s.weights_bytes for s in plan.shares) == total
    assert [s.device for s in plan.shares] == [0, 1]
    assert plan.share(0).holds_head, "a tied lm_head is placed with embed_tokens (get_module_size_with_ties)"
    assert sorted(i for s in plan.shares for i in s.layers) == list(range(8))


def test_max_memory_option_reads_one_size_or_a_dict():
    assert parse_max_memory("20GiB", 2) == {0: 20 << 30, 1: 20 << 30}
    assert parse_max_memory("0=10GB,1=20GiB,cpu=64GiB", 2) == {0: 10**10, 1: 20 << 30, "cpu": 64 << 30}
    for bad in ("2=10GiB", "gpu=1GiB", "cpu=10GiB", "0=lots"):
        with pytest.raises(SetupError) as e:
            parse_max_memory(bad, 2)
        assert "\n" not in str(e.value) and "--max-memory" in str(e.value)


def test_layer_ranges():
    assert layer_ranges((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert layer_ranges(()) == "-"


def test_plan_device_map_section_splits_the_weights_and_decides_the_exit_code():
    import json

    r = vp("plan", "qwen2.5-72b", "--method", "inference", "--seq", "8192", "--device-map", "auto",
                  "--gpus", "2", "--gpu", "a100-80gb", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    dm = d["device_map"]
    weights = sum(v for k, v in d["breakdown_bytes"].items() if k.startswith("weights/"))
    assert sum(row["weights_bytes"] for row in dm["devices"]) == weights
    assert [row["device"] for row in dm["devices"]] == [0, 1] and dm["fits"] is True
    assert d["fits"] is None, "no single-card verdict beside the per-GPU one"
    assert not any("one full replica" in w for w in d["warnings"])
    # four 24 GB cards: the split fills each with weights (max_memory = free memory) and leaves no room to run
    r = vp("plan", "llama-3-70b", "--method", "inference", "--device-map", "auto", "--gpus", "4",
                  "--gpu", "rtx-4090", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["device_map"]["fits"] is False


def test_device_map_is_refused_where_it_does_not_apply():
    for args in (("llama-3-8b", "--device-map", "auto"), ("llama-3-8b", "--method", "inference", "--max-memory", "9GiB"),
                 ("llama-3-8b", "--method", "inference", "--device-map", "auto", "--gpus", "2"),
                 # bitsandbytes refuses a split that offloads (quantizer_bnb_4bit.py validate_environment)
                 ("llama-3-8b", "--method", "inference", "--quant", "nf4", "--device-map", "auto", "--gpu", "a100-80gb",
                  "--max-memory", "2GiB")):
        r = vp("plan", *args)
        assert r.exit_code == 2, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
