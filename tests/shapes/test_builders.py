"""The pure-Python spec builder against transformers' own module tree, tensor for tensor.

``spec_from_config`` (no torch) must equal ``spec_from_meta`` (the real ``*ForCausalLM`` on the meta device) for
random small configs of every family, over the config switches each family's modeling file reads; real
published configs pin exact parameter counts; bad configs raise one-line ``ConfigError``s naming the field.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vramplan.errors import ConfigError
from vramplan.shapes.config import read_dims
from vramplan.shapes.from_config import FAMILIES, spec_from_config
from vramplan.shapes.remote import REMOTE_FAMILIES
from vramplan.shapes.spec import ModelSpec

Config = dict[str, Any]
CONFIGS_PER_FAMILY = 6


# --------------------------------------------------------------------------------------------- helpers
def _diff(a: ModelSpec, b: ModelSpec, limit: int = 5) -> str:
    """The first differing tensors and summary fields of two specs, one per line."""
    lines = []
    for f in dataclasses.fields(ModelSpec):
        if f.compare and f.name != "tensors" and getattr(a, f.name) != getattr(b, f.name):
            lines.append(f"field {f.name}: config={getattr(a, f.name)!r} meta={getattr(b, f.name)!r}")
    if len(a.tensors) != len(b.tensors):
        lines.append(f"tensor count: config={len(a.tensors)} meta={len(b.tensors)}")
    shown = 0
    for i in range(max(len(a.tensors), len(b.tensors))):
        ta = a.tensors[i] if i < len(a.tensors) else None
        tb = b.tensors[i] if i < len(b.tensors) else None
        if ta != tb:
            lines.append(f"#{i}\n  config: {ta}\n  meta:   {tb}")
            shown += 1
            if shown == limit:
                break
    return "\n".join(lines)


def _assert_builders_agree(config: Config) -> ModelSpec:
    from vramplan.shapes.from_meta import spec_from_meta

    pure, meta = spec_from_config(config), spec_from_meta(config)
    assert pure == meta, f"builders disagree for {config}:\n{_diff(pure, meta)}"
    return pure


def _heads(rng: random.Random, *, default_kv: int | None = None) -> tuple[int, Config]:
    """(num_heads, {num_key_value_heads?}): grouped, multi-query or full; sometimes omitted so that the
    family's config-class default applies (only where that default divides the head count)."""
    if default_kv and rng.random() < 0.25:
        return default_kv * rng.choice([1, 2]), {}
    heads = rng.choice([1, 2, 4, 6, 8])
    kv = rng.choice([d for d in range(1, heads + 1) if heads % d == 0])
    return heads, {"num_key_value_heads": kv}


def _attn_dims(rng: random.Random, *, default_kv: int | None = None, free_head_dim: bool = True) -> Config:
    """hidden / heads / kv heads / head_dim; ``head_dim`` sometimes decoupled from hidden // heads."""
    heads, kv = _heads(rng, default_kv=default_kv)
    hd = rng.choice([2, 4, 8])
    c: Config = {"num_attention_heads": heads, **kv, "hidden_size": heads * hd}
    if free_head_dim and rng.random() < 0.5:
        c["head_dim"] = rng.choice([2, 4, 6, 8])
    return c


def _common(rng: random.Random, model_type: str) -> Config:
    return {"model_type": model_type, "num_hidden_layers": rng.randint(1, 4), "vocab_size": rng.randint(40, 160),
            "tie_word_embeddings": rng.choice([True, False, None])}


def _drop_none(c: Config) -> Config:
    return {k: v for k, v in c.items() if v is not None}


# ------------------------------------------------------------------------------ random configs per family
def _llama_like(model_type: str) -> Callable[[random.Random], Config]:
    default_kv = {"mistral": 8, "qwen2": 32, "qwen3": 32, "gemma": 16, "gemma2": 4, "gemma3_text": 4}.get(model_type)

    def gen(rng: random.Random) -> Config:
        c = {**_common(rng, model_type), **_attn_dims(rng, default_kv=default_kv),
             "intermediate_size": rng.choice([8, 12, 20])}
        if model_type in ("llama", "qwen3", "gemma", "gemma2", "gemma3_text"):
            c["attention_bias"] = rng.choice([True, False])
        if model_type == "llama":
            c["mlp_bias"] = rng.choice([True, False])
        if model_type in ("mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"):
            c["sliding_window"] = rng.choice([None, 16])
        if model_type in ("qwen2", "qwen3"):
            c["use_sliding_window"] = rng.choice([True, False])
        if model_type in ("qwen3", "gemma", "gemma2", "gemma3_text") and "head_dim" not in c \
                and rng.random() < 0.5:
            c["head_dim"] = None   # omitted: the config class's 128 / 256 applies
        return _drop_none(c)

    return gen


def _mixtral(rng: random.Random) -> Config:
    c = {**_common(rng, "mixtral"), **_attn_dims(rng, default_kv=8), "intermediate_size": rng.choice([6, 10]),
         "num_experts_per_tok": 1}
    c[rng.choice(["num_local_experts", "num_experts"])] = rng.randint(1, 4)
    return _drop_none(c)


def _qwen_moe(model_type: str) -> Callable[[random.Random], Config]:
    def gen(rng: random.Random) -> Config:
        c = {**_common(rng, model_type), **_attn_dims(rng, default_kv=16 if model_type == "qwen2_moe" else 4),
             "intermediate_size": rng.choice([8, 12]), "moe_intermediate_size": rng.choice([4, 6]),
             "num_experts": rng.choice([0, 1, 3, 4]), "num_experts_per_tok": 1,
             "decoder_sparse_step": rng.choice([1, 1, 2, 3]),
             "mlp_only_layers": rng.choice([None, [], [0], [1, 2]])}
        if model_type == "qwen2_moe":
            c["shared_expert_intermediate_size"] = rng.choice([4, 10])
            c["qkv_bias"] = rng.choice([True, False, None])
        else:
            c["attention_bias"] = rng.choice([True, False])
        return _drop_none(c)

    return gen


def _phi3(rng: random.Random) -> Config:
    return _drop_none({**_common(rng, "phi3"), **_attn_dims(rng), "intermediate_size": rng.choice([8, 12]),
                       "pad_token_id": 0})   # the class default 32000 is outside a tiny vocabulary


def _phi(rng: random.Random) -> Config:
    c = {**_common(rng, "phi"), **_attn_dims(rng), "intermediate_size": rng.choice([8, 12]),
         "qk_layernorm": rng.choice([True, False]), "partial_rotary_factor": rng.choice([0.5, 1.0])}
    return _drop_none(c)


def _gpt2(rng: random.Random) -> Config:
    heads = rng.choice([1, 2, 4])
    c = {**_common(rng, "gpt2"), "n_head": heads, rng.choice(["n_embd", "hidden_size"]): heads * rng.choice([2, 4]),
         "n_positions": rng.choice([None, 16, 33]), "n_inner": rng.choice([None, 12]),
         "add_cross_attention": rng.choice([True, False])}
    c["n_layer"] = c.pop("num_hidden_layers")
    return _drop_none(c)


def _bloom(rng: random.Random) -> Config:
    heads = rng.choice([1, 2, 4])
    c = {**_common(rng, "bloom"), "n_head": heads, rng.choice(["n_embed", "hidden_size"]): heads * rng.choice([2, 4])}
    c["n_layer"] = c.pop("num_hidden_layers")
    return _drop_none(c)


def _gpt_neox(rng: random.Random) -> Config:
    heads = rng.choice([1, 2, 4])
    c = {**_common(rng, "gpt_neox"), "num_attention_heads": heads, "hidden_size": heads * rng.choice([4, 8]),
         "intermediate_size": rng.choice([8, 12]), "attention_bias": rng.choice([True, False, None]),
         "use_parallel_residual": rng.choice([True, False]), "rotary_pct": rng.choice([0.25, 1.0])}
    return _drop_none(c)


def _opt(rng: random.Random) -> Config:
    heads = rng.choice([1, 2, 4])
    hidden = heads * rng.choice([2, 4])
    c = {**_common(rng, "opt"), "num_attention_heads": heads, "hidden_size": hidden,
         "ffn_dim": rng.choice([8, 12]), "max_position_embeddings": rng.choice([None, 20]),
         "word_embed_proj_dim": rng.choice([None, hidden, 6]),
         "do_layer_norm_before": rng.choice([True, False, None]),
         "_remove_final_layer_norm": rng.choice([True, False, None]),
         "enable_bias": rng.choice([True, False, None]),
         "layer_norm_elementwise_affine": rng.choice([True, False, None])}
    return _drop_none(c)


def _falcon(rng: random.Random) -> Config:
    heads = rng.choice([1, 2, 4, 8])
    c = {**_common(rng, "falcon"), "num_attention_heads": heads, "hidden_size": heads * rng.choice([2, 4]),
         "new_decoder_architecture": rng.choice([True, False, None]),
         "multi_query": rng.choice([True, False, None]),
         "num_kv_heads": rng.choice([None] + [d for d in range(1, heads + 1) if heads % d == 0]),
         "parallel_attn": rng.choice([True, False, None]),
         "num_ln_in_parallel_attn": rng.choice([None, 1, 2]),
         "bias": rng.choice([True, False, None]), "alibi": rng.choice([True, False]),
         "ffn_hidden_size": rng.choice([None, 10])}
    return _drop_none(c)


GENERATORS: dict[str, Callable[[random.Random], Config]] = {
    **{f: _llama_like(f) for f in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")},
    "mixtral": _mixtral,
    "qwen2_moe": _qwen_moe("qwen2_moe"),
    "qwen3_moe": _qwen_moe("qwen3_moe"),
    "phi3": _phi3,
    "phi": _phi,
    "gpt2": _gpt2,
    "bloom": _bloom,
    "gpt_neox": _gpt_neox,
    "opt": _opt,
    "falcon": _falcon,
}
NO_TRANSFORMERS_CLASS = set(REMOTE_FAMILIES)   # need the checkpoint's remote code (vramplan/shapes/remote.py)


def test_every_family_has_a_generator():
    assert set(FAMILIES) - NO_TRANSFORMERS_CLASS == set(GENERATORS)


@pytest.mark.parametrize("family", sorted(GENERATORS))
def test_builders_agree_on_random_configs(family):
    rng = random.Random(f"vramplan-{family}")
    for _ in range(CONFIGS_PER_FAMILY):
        _assert_builders_agree(GENERATORS[family](rng))


# ------------------------------------------------------------------------------ real configs, exact counts
LLAMA3_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
             "max_position_embeddings": 8192, "rope_theta": 500000.0, "tie_word_embeddings": False}
QWEN25_14B = {"model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
              "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064,
              "max_position_embeddings": 32768, "sliding_window": 131072, "use_sliding_window": False,
              "tie_word_embeddings": False}
GPT2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "n_ctx": 1024,
        "vocab_size": 50257, "activation_function": "gelu_new"}
OPT_125M = {"model_type": "opt", "hidden_size": 768, "ffn_dim": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "vocab_size": 50272, "max_position_embeddings": 2048,
            "word_embed_proj_dim": 768, "do_layer_norm_before": True, "_remove_final_layer_norm": False,
            "enable_bias": True, "activation_function": "relu"}
OPT_350M = {**OPT_125M, "hidden_size": 1024, "ffn_dim": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
            "word_embed_proj_dim": 512, "do_layer_norm_before": False}
MIXTRAL_8X7B = {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8,
                "num_experts_per_tok": 2, "tie_word_embeddings": False}
QWEN15_MOE_A27B = {"model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632,
                   "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24,
                   "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151936, "num_experts": 60,
                   "num_experts_per_tok": 4, "decoder_sparse_step": 1, "tie_word_embeddings": False}
QWEN3_30B_A3B = {"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
                 "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32,
                 "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936, "num_experts": 128,
                 "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
                 "tie_word_embeddings": False}
PHI3_MINI = {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064, "pad_token_id": 32000,
             "tie_word_embeddings": False}
PHI2 = {"model_type": "phi", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
        "num_attention_heads": 32, "vocab_size": 51200, "partial_rotary_factor": 0.4, "qk_layernorm": False,
        "tie_word_embeddings": False}
BLOOM_560M = {"model_type": "bloom", "n_embed": 1024, "n_layer": 24, "num_attention_heads": 16,
              "vocab_size": 250880, "n_inner": None}
PYTHIA_160M = {"model_type": "gpt_neox", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "vocab_size": 50304, "rotary_pct": 0.25, "use_parallel_residual": True,
               "tie_word_embeddings": False}
FALCON_7B = {"model_type": "falcon", "hidden_size": 4544, "num_attention_heads": 71, "num_hidden_layers": 32,
             "vocab_size": 65024, "multi_query": True, "new_decoder_architecture": False, "parallel_attn": True,
             "bias": False, "alibi": False}
FALCON_40B = {"model_type": "falcon", "hidden_size": 8192, "num_attention_heads": 128, "num_kv_heads": 8,
              "num_hidden_layers": 60, "vocab_size": 65024, "new_decoder_architecture": True,
              "parallel_attn": True, "bias": False, "alibi": False}
BAICHUAN_7B = {"architectures": ["BaiChuanForCausalLM"], "model_type": "baichuan", "hidden_size": 4096,
               "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 64000,
               "tie_word_embeddings": False}

PINNED = [
    ("Llama-3-8B", LLAMA3_8B, 8_030_261_248),
    ("Qwen2.5-14B", QWEN25_14B, 14_770_033_664),
    ("gpt2", GPT2, 124_439_808),
    ("opt-125m", OPT_125M, 125_239_296),
    ("opt-350m", OPT_350M, 331_196_416),
    ("Mixtral-8x7B", MIXTRAL_8X7B, 46_702_792_704),
    ("Qwen1.5-MoE-A2.7B", QWEN15_MOE_A27B, 14_315_784_192),
    ("Qwen3-30B-A3B", QWEN3_30B_A3B, 30_532_122_624),
    ("Phi-3-mini", PHI3_MINI, 3_821_079_552),
    ("phi-2", PHI2, 2_779_683_840),
    ("bloom-560m", BLOOM_560M, 559_214_592),
    ("pythia-160m", PYTHIA_160M, 162_322_944),
    ("falcon-7b", FALCON_7B, 6_921_720_704),
    ("falcon-40b", FALCON_40B, 41_303_293_952),
]


@pytest.mark.parametrize(("name", "config", "params"), PINNED, ids=[p[0] for p in PINNED])
def test_pinned_param_count(name, config, params):
    spec = _assert_builders_agree(config)
    assert spec.params_total == params, f"{name}: {spec.params_total:,} != {params:,}"


def test_pinned_baichuan_7b_pure_builder():
    spec = spec_from_config(BAICHUAN_7B)
    assert spec.params_total == 7_000_559_616
    assert spec.tensor("model.layers.0.self_attn.W_pack.weight").shape == (3 * 4096, 4096)


def test_summary_fields_of_real_configs():
    mixtral = spec_from_config(MIXTRAL_8X7B)
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.moe_intermediate_size) == (8, 2, 14336)
    assert mixtral.tensor("model.layers.0.mlp.gate.weight").role == "moe_router"
    qwen = spec_from_config(QWEN15_MOE_A27B)
    assert qwen.tensor("model.layers.3.mlp.shared_expert_gate.weight").role == "shared_expert_router"
    assert qwen.tensor("model.layers.3.mlp.experts.gate_up_proj").shape == (60, 2 * 1408, 2048)
    falcon = spec_from_config(FALCON_7B)
    assert (falcon.num_kv_heads, falcon.head_dim) == (1, 64)
    assert falcon.tensor("transformer.h.0.self_attention.query_key_value.weight").shape == (4544 + 2 * 64, 4544)
    gpt2 = spec_from_config(GPT2)
    assert gpt2.tensor("transformer.h.0.attn.c_proj.weight").role == "attn_o"
    assert gpt2.tensor("transformer.h.0.mlp.c_proj.weight").role == "mlp_down"
    assert gpt2.tensor("lm_head.weight").tied_to == "transformer.wte.weight"
    assert spec_from_config(OPT_125M).tensor("model.decoder.embed_positions.weight").shape == (2050, 768)


def test_config_class_defaults_apply_when_keys_are_absent():
    """Qwen3Config.head_dim = 128 and MixtralConfig.num_key_value_heads = 8, not hidden // heads and heads."""
    qwen3 = {k: v for k, v in LLAMA3_8B.items() if k != "num_key_value_heads"} | {"model_type": "qwen3"}
    d = read_dims(qwen3)
    assert (d.head_dim, d.num_kv_heads) == (128, 32)
    mixtral = {k: v for k, v in MIXTRAL_8X7B.items() if k != "num_key_value_heads"}
    assert read_dims(mixtral).num_kv_heads == 8
    assert read_dims({**mixtral, "num_key_value_heads": None}).num_kv_heads == 32   # null -> all heads
    assert read_dims({k: v for k, v in FALCON_7B.items() if k != "multi_query"}).num_kv_heads == 1


# --------------------------------------------------------------------------------------------- bad configs
BASE = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 100}


@pytest.mark.parametrize(("config", "field"), [
    ({k: v for k, v in BASE.items() if k != "hidden_size"}, "hidden_size"),
    ({**BASE, "hidden_size": 0}, "hidden_size"),
    ({**BASE, "num_hidden_layers": -2}, "num_hidden_layers"),
    ({**BASE, "vocab_size": 0}, "vocab_size"),
    ({**BASE, "num_attention_heads": 0}, "num_attention_heads"),
    ({**BASE, "hidden_size": 66}, "num_attention_heads"),
    ({**BASE, "head_dim": 0}, "head_dim"),
    ({**BASE, "num_key_value_heads": 3}, "num_key_value_heads"),
    ({**BASE, "intermediate_size": 0}, "intermediate_size"),
    ({**GPT2, "n_embd": 770}, "num_attention_heads"),         # gpt2 ignores head_dim: must divide
    ({**QWEN3_30B_A3B, "decoder_sparse_step": 0}, "decoder_sparse_step"),
    ({**OPT_125M, "ffn_dim": -1}, "ffn_dim"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_config_raises_one_line_naming_the_field(config, field):
    with pytest.raises(ConfigError) as exc:
        spec_from_config(config, source="cfg.json")
    msg = str(exc.value)
    assert field in msg and msg.startswith("cfg.json: ") and "\n" not in msg, msg


@pytest.mark.parametrize("value", [[1, 2], "llama", 3, None])
def test_non_object_json_raises(value):
    with pytest.raises(ConfigError, match=r"^config.json: expected a JSON object, got \w+$"):
        read_dims(value)


def test_hidden_not_divisible_is_fine_with_head_dim():
    assert read_dims({**BASE, "hidden_size": 66, "head_dim": 16}).head_dim == 16


# ----------------------------------------------------------------------------------------- no torch import
def test_pure_builder_does_not_import_torch():
    code = ("import sys, vramplan.shapes.from_config as f\n"
            f"s = f.spec_from_config({MIXTRAL_8X7B!r})\n"
            f"f.spec_from_config({GPT2!r})\n"
            "assert s.params_total == 46_702_792_704\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root,
                          env=env)
    assert proc.returncode == 0, proc.stderr
