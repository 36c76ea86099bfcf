"""Attention-free and hybrid models (issue 16): configs transformers builds are read through its resolved config
class (no demand for num_attention_heads at the top level), counted exactly, LoRA-counted as PEFT 0.21.2 counts
them, PEFT's Mamba guard mirrored (so ``params`` and ``plan`` agree), and every plan says what it does not model.

Expected values: the real ``AutoModelForCausalLM`` class on meta and real PEFT in each test; tiny configs from
transformers' config classes (no Hub).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from vramplan.errors import TargetError
from vramplan.lora import MAMBA_MODEL_TYPES, LoraConfig, plan_lora
from vramplan.shapes.spec import ModelSpec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
logging.getLogger("transformers").setLevel(logging.ERROR)

H = {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512}
A = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128}


def _configs() -> dict[str, Any]:
    T = transformers
    return {
        "mamba": T.MambaConfig(**H, state_size=8),
        "mamba2": T.Mamba2Config(**H, state_size=8, num_heads=8, head_dim=16, n_groups=1),
        "falcon_mamba": T.FalconMambaConfig(**H, state_size=8),
        "jamba": T.JambaConfig(**{**H, "num_hidden_layers": 4}, **A, num_experts=4, attn_layer_period=2,
                               attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8),
        "zamba2": T.Zamba2Config(**{**H, "num_hidden_layers": 4}, **A, mamba_d_state=8, mamba_headdim=16,
                                 n_mamba_heads=8, hybrid_layer_ids=[1],
                                 layers_block_type=["mamba", "hybrid", "mamba", "mamba"], num_mem_blocks=1,
                                 adapter_rank=4, use_shared_attention_adapter=False, attention_head_dim=16),
        "falcon_h1": T.FalconH1Config(**H, **A, mamba_d_state=8, mamba_n_heads=8, mamba_d_head=16, mamba_d_ssm=128,
                                      mamba_n_groups=1, head_dim=16),
        "lfm2": T.Lfm2Config(**{**H, "num_hidden_layers": 3}, **A, layer_types=["conv", "full_attention", "conv"]),
        "qwen3_next": T.Qwen3NextConfig(**{**H, "num_hidden_layers": 4}, **A, head_dim=16, linear_num_value_heads=4,
                                        linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
                                        num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                                        num_experts_per_tok=2),
        "recurrent_gemma": T.RecurrentGemmaConfig(**{**H, "num_hidden_layers": 3}, num_attention_heads=4,
                                                  num_key_value_heads=1, intermediate_size=128, lru_width=64,
                                                  attention_window_size=16),
    }


CONFIGS = _configs()
ATTENTION_FREE = ("mamba", "mamba2", "falcon_mamba")


def _as_dict(cfg: Any) -> dict[str, Any]:
    """A config.json as json.load reads it (Mamba-2's time_step_limit holds an Infinity)."""
    return json.loads(json.dumps(cfg.to_dict()))


def _real(config: dict[str, Any]):
    kwargs = {k: v for k, v in config.items() if k != "model_type" and not k.startswith("_")}
    cfg = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(cfg)


def _spec(family: str, monkeypatch) -> tuple[dict[str, Any], ModelSpec]:
    from vramplan.shapes.from_meta import spec_from_meta

    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    config = _as_dict(CONFIGS[family])
    return config, spec_from_meta(config, family)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_counts_and_the_note_every_plan_carries(family, monkeypatch):
    config, spec = _spec(family, monkeypatch)
    assert spec.params_total == sum(p.numel() for p in _real(config).parameters())
    assert len(spec.notes) == 1 and "no analytic replay" in spec.notes[0] and "recurrent" in spec.notes[0]
    assert spec.plan_refusal is None


@pytest.mark.parametrize("family", ATTENTION_FREE)
def test_attention_free_configs_have_no_attention_heads(family, monkeypatch):
    """Mamba-2's num_heads / head_dim are SSM heads, not attention heads (no KV cache is made of them)."""
    config, spec = _spec(family, monkeypatch)
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim) == (0, 0, 0)
    assert spec.num_layers == config["num_hidden_layers"] and spec.hidden_size == config["hidden_size"]
    assert {"ssm_in", "ssm_out", "ssm_conv", "ssm_param"} <= {t.role for t in spec.tensors}
    assert any(t.role == "embedding" for t in spec.tensors)


def _peft(config: dict[str, Any], targets: Any) -> int:
    return peft.get_peft_model(_real(config), peft.LoraConfig(r=4, target_modules=targets)) \
        .get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_all_linear_as_peft_does(family, monkeypatch):
    """PEFT refuses all-linear on its Mamba types (every mixer's out_proj); elsewhere the counts agree."""
    config, spec = _spec(family, monkeypatch)
    if spec.model_type in MAMBA_MODEL_TYPES:
        with pytest.raises(ValueError, match="incompatible with Mamba-based models"):
            _peft(config, "all-linear")
        with pytest.raises(TargetError, match=r"PEFT refuses LoRA on 'out_proj' in Mamba-based models") as exc:
            plan_lora(spec, LoraConfig(r=4, targets=("all-linear",)))
        assert "\n" not in str(exc.value) and "--targets" in str(exc.value)
    else:
        assert plan_lora(spec, LoraConfig(r=4, targets=("all-linear",))).trainable == _peft(config, "all-linear")


@pytest.mark.parametrize("family", ["mamba", "falcon_h1"])
def test_conv1d_target_refused_by_the_guard_and_in_proj_counted(family, monkeypatch):
    config, spec = _spec(family, monkeypatch)
    with pytest.raises(ValueError, match="incompatible with Mamba-based models"):
        _peft(config, ["conv1d"])
    with pytest.raises(TargetError, match="'conv1d'"):
        plan_lora(spec, LoraConfig(r=4, targets=("conv1d",)))
    assert plan_lora(spec, LoraConfig(r=4, targets=("in_proj",))).trainable == _peft(config, ["in_proj"])


def test_jamba_out_proj_is_not_guarded(monkeypatch):
    """jamba is not in PEFT 0.21.2's Mamba set: its out_proj takes LoRA."""
    config, spec = _spec("jamba", monkeypatch)
    assert plan_lora(spec, LoraConfig(r=4, targets=("out_proj",))).trainable == _peft(config, ["out_proj"])


def test_default_targets_refused_as_peft_does(monkeypatch):
    config, spec = _spec("mamba", monkeypatch)
    with pytest.raises(ValueError, match="Please specify `target_modules`"):
        peft.get_peft_model(_real(config), peft.LoraConfig(r=4))
    with pytest.raises(TargetError, match="no default LoRA targets for model_type 'mamba'"):
        plan_lora(spec, LoraConfig(r=4))


def test_params_cli_reads_a_mamba_config(tmp_path, capsys, monkeypatch):
    """It used to say "missing field 'num_attention_heads' ... pass the full config.json", which was not true."""
    from vramplan.cli.main import main

    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    config = _as_dict(CONFIGS["mamba"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exc:
        main(["params", str(path)])
    out, err = capsys.readouterr()
    assert exc.value.code in (0, None), err
    assert f"{sum(p.numel() for p in _real(config).parameters()):,} parameters" in out


def test_cached_mamba_spec_reads_back_the_same(tmp_path, monkeypatch):
    """A second call answers from the on-disk cache with the same spec (0 heads and the notes survive JSON)."""
    from vramplan.shapes.from_meta import spec_from_meta

    monkeypatch.setenv("VRAMPLAN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("VRAMPLAN_NO_CACHE", raising=False)
    config = _as_dict(CONFIGS["mamba"])      # (mamba2's Infinity keeps it out of the cache key: spec_key is None)
    first, second = spec_from_meta(config, "m"), spec_from_meta(config, "m")
    assert first == second and second.notes == first.notes and isinstance(second.notes, tuple)
    assert list(tmp_path.rglob("*.json"))
