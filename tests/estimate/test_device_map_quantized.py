"""``--device-map`` on quantized models against transformers' own split (issue 17).

transformers 5.24.0 ``from_pretrained`` runs ``hf_quantizer.preprocess_model`` (the Linears replaced, weights
untouched) before ``_get_device_map(model, device_map, max_memory, hf_quantizer)``; that sizes each parameter with
``hf_quantizer.param_element_size`` (bitsandbytes: 0.5 / 1 B per quantized weight element), scales the budgets by
``adjust_max_memory`` (bitsandbytes: × 0.9) and, for bitsandbytes, refuses a map with CPU or disk entries
(``validate_environment``). Each case does exactly that on the meta device and compares vramplan's replay.
"""

from __future__ import annotations

import logging

import pytest
from cli_entry import vp

from vramplan.errors import SetupError
from vramplan.estimate.device_map import plan_device_map, split_sizes
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_BASE = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=8, vocab_size=5000)
FAMILIES = {
    "llama": dict(_BASE, model_type="llama", tie_word_embeddings=False),
    "qwen2-tied": dict(_BASE, model_type="qwen2", tie_word_embeddings=True),
}
#: per-GPU budgets as fractions of the quantized model's size (transformers' compute_module_sizes)
BUDGETS = [(0.7, 0.7), (0.4, 0.4, 0.4, 0.4), (0.9, 0.5), (0.3, 0.3), (1.3,)]


def _quantizer(quant: str):
    from transformers import BitsAndBytesConfig, FineGrainedFP8Config
    from transformers.quantizers import AutoHfQuantizer

    if quant == "nf4":
        return AutoHfQuantizer.from_config(BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                              bnb_4bit_compute_dtype=torch.bfloat16))
    if quant == "int8":
        return AutoHfQuantizer.from_config(BitsAndBytesConfig(load_in_8bit=True))
    return AutoHfQuantizer.from_config(FineGrainedFP8Config(), pre_quantized=True)


def _meta_quantized(cfg: dict, quant: str):
    hc = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hc, dtype=torch.bfloat16)
    q = _quantizer(quant)
    q.preprocess_model(model=model, dtype=torch.bfloat16, device_map="auto", checkpoint_files=None, use_kernels=False)
    return model, q


def _with_params(model, device_map: dict) -> dict:
    named = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return {k: v for k, v in device_map.items() if k == "" or any(p == k or p.startswith(k + ".") for p in named)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("quant", ["nf4", "int8", "fp8"])
@pytest.mark.parametrize("strategy", ["auto", "sequential"])
def test_quantized_device_map_matches_transformers(family, quant, strategy):
    from transformers.integrations.accelerate import _get_device_map, compute_module_sizes

    logging.disable(logging.WARNING)
    try:
        cfg = FAMILIES[family]
        model, q = _meta_quantized(cfg, quant)
        total = compute_module_sizes(model, q)[0][""]
        buffers = sum(b.numel() * b.element_size() for _, b in model.named_buffers())   # rotary inv_freq
        spec = spec_from_config(cfg, name=f"tiny-{family}")
        setup = Setup.create(method="inference", quant=quant, precision="bf16-true")
        sizes, _, _ = split_sizes(spec, setup)
        assert sum(sizes.values()) == total - buffers, "sized as compute_module_sizes(model, hf_quantizer)"
        for gpus in BUDGETS:
            mm = {i: int(f * total) for i, f in enumerate(gpus)}
            text = ",".join(f"{k}={v}B" for k, v in mm.items())
            try:
                want = _with_params(model, dict(_get_device_map(model, strategy, dict(mm), q)))
            except ValueError as e:
                assert "dispatched on the CPU or the disk" in str(e)
                with pytest.raises(SetupError, match="CPU or disk"):
                    from vramplan.estimate.device_map import device_map_section
                    device_map_section(spec, Setup.create(method="inference", quant=quant, precision="bf16-true",
                                                          device_map=strategy, gpus=len(gpus), max_memory=text),
                                       {}, None, 0.0, None, 0)
                continue
            got = plan_device_map(spec, "bf16", strategy, len(gpus), None, text, setup)
            assert got.device_map == want, f"{family} {quant} {strategy} max_memory {mm}"
    finally:
        logging.disable(logging.NOTSET)


def test_bnb_shares_hold_the_packed_bytes_not_the_sizing_ones():
    """The split sizes a 4-bit weight at 0.5 B per element; what the GPU holds is bitsandbytes' packed codes + absmax."""
    spec = spec_from_config(FAMILIES["llama"], name="tiny")
    setup = Setup.create(method="inference", quant="nf4", precision="bf16-true")
    sizes, resident, factor = split_sizes(spec, setup)
    assert factor == 0.9
    q = "model.layers.0.self_attn.q_proj.weight"
    assert sizes[q] == 256 * 256 * 0.5 and resident[q] > sizes[q]
    plan = plan_device_map(spec, "bf16", "auto", 2, 10**9, None, setup)
    assert sum(s.weights_bytes for s in plan.shares) == sum(resident.values())


def test_cli_plans_a_split_of_a_quantized_model():
    import json

    for args in (("--quant", "nf4"), ("--quant", "int8"), ("--quant", "fp8"), ("--quant", "gptq"), ("--quant", "awq")):
        r = vp("plan", "llama-3-70b", "--method", "inference", *args, "--device-map", "auto", "--gpus", "2",
               "--gpu", "a100-80gb", "--json")
        assert r.exit_code in (0, 1), (args, r.output)
        d = json.loads(r.stdout)
        weights = sum(v for k, v in d["breakdown_bytes"].items() if k.startswith("weights/"))
        got = sum(row["weights_bytes"] for row in d["device_map"]["devices"])
        assert abs(got - weights) <= 512 * 4 * 80 * 8, (args, got, weights)   # the breakdown rounds each allocation
