"""Pre-quantized checkpoints resolve by id with their quantization (issue 16), and a config.json's
quantization_config is planned as stored. The per-Linear bytes are pinned against the real libraries in
tests/estimate/test_prequantized.py; here: which checkpoint gets which scheme, read from profiles/quantized.yaml
and from a local config.json."""

from __future__ import annotations

import json

import pytest

from vramplan.estimate import estimate
from vramplan.profiles import quantized_checkpoints, resolve_model
from vramplan.setup import Setup

EXPECTED = {   # id -> (bundled profile, --quant, bits) as each checkpoint's config.json states it
    "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4": ("qwen2.5-7b", "gptq", 4),
    "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8": ("qwen2.5-7b", "gptq", 8),
    "Qwen/Qwen2.5-7B-Instruct-AWQ": ("qwen2.5-7b", "awq", 4),
    "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4": ("llama-3.1-8b", "awq", 4),
    "hugging-quants/Meta-Llama-3.1-8B-Instruct-GPTQ-INT4": ("llama-3.1-8b", "gptq", 4),
    "unsloth/llama-3-8b-bnb-4bit": ("llama-3-8b", "nf4", 4),
    "Qwen/Qwen3-8B-FP8": ("qwen3-8b", "fp8", 4),
}


def test_every_listed_checkpoint_is_expected():
    assert {c.id for c in quantized_checkpoints().values()} == set(EXPECTED)


@pytest.mark.parametrize("hub_id", EXPECTED)
def test_prequantized_ids_resolve_offline_with_their_quantization(hub_id, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_OFFLINE", "1")
    profile, quant, bits = EXPECTED[hub_id]
    r = resolve_model(hub_id)
    base = resolve_model(profile)
    assert r.name == hub_id and r.spec.tensors == base.spec.tensors     # the profile's shapes
    est = estimate(r.spec, Setup.create(method="inference"))
    assert (est.setup.quant, est.setup.quant_bits if quant in ("gptq", "awq") else bits) == (quant, bits)
    assert any(a.startswith("pre-quantized checkpoint:") for a in est.assumptions)
    # never the bf16 plan silently: the weights are smaller than the 16-bit profile's
    assert est.peak_allocated_bytes < estimate(base.spec, Setup.create(method="inference")).peak_allocated_bytes


def test_lora_on_a_gptq_checkpoint_keeps_the_base_quantized(monkeypatch):
    monkeypatch.setenv("VRAMPLAN_OFFLINE", "1")
    r = resolve_model("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4")
    est = estimate(r.spec, Setup.create(method="qlora"))
    assert est.setup.quant == "gptq" and est.params_trainable > 0
    assert any(c.name == "adapters/lora" for c in est.components)
    # qlora's default --quant nf4 gives way to the checkpoint's GPTQ, with transformers' warning
    assert any(w.startswith("--quant nf4 (--method qlora's default) not used") for w in est.warnings)


def test_local_config_json_with_quantization_config(tmp_path):
    cfg = dict(resolve_model("qwen2.5-0.5b").profile.config)
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv",
                                  "zero_point": True}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    est = estimate(resolve_model(str(path)).spec, Setup.create(method="inference"))
    assert est.setup.quant == "awq"
    assert any("AWQ 4-bit, group 128, gemv" in a for a in est.assumptions)


def test_bad_quantization_config_type_is_refused_at_read(tmp_path):
    from vramplan.errors import ConfigError

    cfg = dict(resolve_model("qwen2.5-0.5b").profile.config)
    cfg["quantization_config"] = "gptq"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="field 'quantization_config' must be an object"):
        resolve_model(str(path))


def test_unplanned_quant_method_is_a_one_line_error_not_a_bf16_plan(tmp_path):
    from vramplan.errors import ConfigError

    cfg = dict(resolve_model("qwen2.5-0.5b").profile.config)
    cfg["quantization_config"] = {"quant_method": "hqq", "nbits": 4}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="quant_method 'hqq' is not planned yet"):
        estimate(resolve_model(str(path)).spec, Setup.create(method="inference"))


def test_gptq_modules_in_block_to_quantize_limits_what_is_quantized():
    import dataclasses

    from vramplan.estimate.weights import place_weights

    spec = resolve_model("qwen2.5-0.5b").spec
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128,
          "modules_in_block_to_quantize": [["self_attn.q_proj", "self_attn.k_proj"], ["mlp.down_proj"]]}
    spec = dataclasses.replace(spec, config={**spec.config, "quantization_config": qc})
    s = estimate(spec, Setup.create(method="inference")).setup
    q = {p.tensor.module.rpartition(".")[2] for p in place_weights(spec, s) if p.quant == "gptq"}
    assert q == {"q_proj", "k_proj", "down_proj"}


def test_text_config_wrapper_keeps_the_checkpoints_quantization(tmp_path):
    text = dict(resolve_model("qwen2.5-0.5b").profile.config)
    cfg = {"model_type": "wrapper_lm", "architectures": ["X"], "text_config": text,
           "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    est = estimate(resolve_model(str(path)).spec, Setup.create(method="inference"))
    assert est.setup.quant == "fp8"


def test_compressed_tensors_fp8_dynamic_config():
    """The layout of llm-compressor's FP8-Dynamic checkpoints (config_groups with channel-wise fp8 weights and
    dynamic per-token fp8 inputs, lm_head ignored)."""
    from vramplan.quantized import linear_parts, scheme_from_config

    qc = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
          "config_groups": {"group_0": {"targets": ["Linear"],
                                        "weights": {"num_bits": 8, "type": "float", "strategy": "channel",
                                                    "symmetric": True, "dynamic": False},
                                        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                                              "dynamic": True}}}}
    s = scheme_from_config(qc)
    assert (s.quant, s.strategy, s.static_activations, s.skip) == ("fp8", "channel", False, ("lm_head",))
    # 14336 x 4096: fp8 weight, bf16 [out, 1] scale, fp8 [out, 1] zero point (compressed-tensors 0.20.0)
    assert [b for _, b in linear_parts(s, 14336, 4096)] == [58_720_256, 28_672, 14_336]
