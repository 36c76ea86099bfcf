"""Pure-Python ModelSpec builders, one per family, from a ``config.json`` dict. No torch import.

Each builder mirrors the module tree of the installed transformers' ``*ForCausalLM`` class for that family
(``models/<family>/modeling_<family>.py``: the ``nn.Linear`` / ``nn.Embedding`` / norm constructors and
their ``bias=`` arguments), so that :func:`spec_from_config` and :func:`vramplan.shapes.from_meta.spec_from_meta`
agree tensor for tensor; ``tests/spec`` checks this for every bundled profile and for random configs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from ..io import brief
from .collect import TensorCollector
from .config import MAX_DIM, Dims, get, read_dims
from .spec import OUTSIDE_LANGUAGE_MODEL, ModelSpec, Tensor


def _flag(config: Mapping[str, Any], key: str, default: Any) -> Any:
    """A boolean field (:data:`vramplan.shapes.config.BOOL_FIELDS`, type-checked by ``read_dims``), ``default``
    when absent or null."""
    value = config.get(key)
    return default if value is None else bool(value)


def _int(config: Mapping[str, Any], key: str, source: str, default: int | None = None, *,
         minimum: int = 1) -> int:
    """``config[key]`` as an int >= ``minimum``; ``default`` (the config class's) when absent or null."""
    value = config.get(key)
    if value is None:
        value = default
    if value is None:
        raise ConfigError(f"{source}: missing field '{key}'; pass the model's full config.json")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value > MAX_DIM:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{source}: field '{key}' must be {rule} up to {MAX_DIM:,}, got {brief(value)}")
    return value


# ------------------------------------------------------------------------------------------ llama-like
def _llama_like(config: Mapping[str, Any], d: Dims, source: str, *, family: str,
                prefix: str = "model", ts: TensorCollector | None = None, tie: bool | None = None) -> list[Tensor]:
    """Llama, Mistral, Qwen2/2.5, Qwen3, Baichuan (``W_pack``), Gemma, Gemma-2, Gemma-3 (text).

    Sources: transformers ``models/{llama,mistral,qwen2,qwen3,gemma,gemma2,gemma3}/modeling_*.py``. ``prefix`` is
    where the decoder sits (``model.language_model`` inside Gemma-3's multimodal class), ``ts`` a collector that
    already holds the modules registered before it, ``tie`` a head tie the caller decided (the multimodal class
    reads its own config's ``tie_word_embeddings``).
    """
    h, hd = d.hidden_size, d.head_dim
    q_out, kv_out = d.num_heads * hd, d.num_kv_heads * hd
    inter = _int(config, "intermediate_size", source)
    default_tie = family in ("gemma", "gemma2", "gemma3_text")
    if tie is None:
        tie = bool(_flag(config, "tie_word_embeddings", default_tie))
    qkv_bias = {"qwen2": True}.get(family, bool(_flag(config, "attention_bias", False)))
    o_bias = False if family == "qwen2" else bool(_flag(config, "attention_bias", False))
    mlp_bias = bool(_flag(config, "mlp_bias", False)) if family == "llama" else False
    qk_norm = family in ("qwen3", "gemma3_text")
    sandwich = family in ("gemma2", "gemma3_text")   # pre/post feed-forward norms

    ts = ts if ts is not None else TensorCollector()
    ts.embedding(f"{prefix}.embed_tokens", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"{prefix}.layers.{i}"
        if family == "baichuan":
            ts.linear(f"{p}.self_attn.W_pack", h, 3 * h)
            ts.linear(f"{p}.self_attn.o_proj", h, h)
        else:
            ts.linear(f"{p}.self_attn.q_proj", h, q_out, qkv_bias)
            ts.linear(f"{p}.self_attn.k_proj", h, kv_out, qkv_bias)
            ts.linear(f"{p}.self_attn.v_proj", h, kv_out, qkv_bias)
            ts.linear(f"{p}.self_attn.o_proj", q_out, h, o_bias)
            if qk_norm:
                ts.norm(f"{p}.self_attn.q_norm", hd)
                ts.norm(f"{p}.self_attn.k_norm", hd)
        ts.linear(f"{p}.mlp.gate_proj", h, inter, mlp_bias)
        ts.linear(f"{p}.mlp.up_proj", h, inter, mlp_bias)
        ts.linear(f"{p}.mlp.down_proj", inter, h, mlp_bias)
        ts.norm(f"{p}.input_layernorm", h)
        ts.norm(f"{p}.post_attention_layernorm", h)
        if sandwich:
            ts.norm(f"{p}.pre_feedforward_layernorm", h)
            ts.norm(f"{p}.post_feedforward_layernorm", h)
    ts.norm(f"{prefix}.norm", h)
    ts.head("lm_head", h, d.vocab_size, f"{prefix}.embed_tokens.weight" if tie else None)
    return ts.items


# ------------------------------------------------------------------------------------------------ MoE
def _tie(config: Mapping[str, Any], default: bool, source_tensor: str) -> str | None:
    """The tensor ``lm_head.weight`` shares storage with, or None; ``default`` is the config class's."""
    return source_tensor if bool(_flag(config, "tie_word_embeddings", default)) else None


def _attention(ts: TensorCollector, p: str, d: Dims, bias: bool, o_bias: bool) -> None:
    q_out, kv_out = d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
    ts.linear(f"{p}.q_proj", d.hidden_size, q_out, bias)
    ts.linear(f"{p}.k_proj", d.hidden_size, kv_out, bias)
    ts.linear(f"{p}.v_proj", d.hidden_size, kv_out, bias)
    ts.linear(f"{p}.o_proj", q_out, d.hidden_size, o_bias)


def _sparse_layers(config: Mapping[str, Any], d: Dims, source: str, num_experts: int) -> list[bool]:
    """Which layers hold a sparse MoE block (``Qwen2MoeDecoderLayer`` / ``Qwen3MoeDecoderLayer``):
    ``layer not in mlp_only_layers and num_experts > 0 and (layer + 1) % decoder_sparse_step == 0``."""
    only = config.get("mlp_only_layers") or []
    if not isinstance(only, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
        raise ConfigError(f"{source}: field 'mlp_only_layers' must be a list of layer indices, got {only!r}")
    if num_experts == 0:
        return [False] * d.num_layers
    step = _int(config, "decoder_sparse_step", source, 1)
    return [i not in only and (i + 1) % step == 0 for i in range(d.num_layers)]


def _mixtral(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """Mixtral: every layer a sparse MoE block (router, then fused experts of size ``intermediate_size``).

    Source: transformers ``models/mixtral/modeling_mixtral.py`` (``MixtralSparseMoeBlock``: ``gate`` =
    ``MixtralTopKRouter``, ``experts`` = ``MixtralExperts``); ``num_experts`` is an alias that wins over
    ``num_local_experts`` (``MixtralConfig.attribute_map``; default 8).
    """
    h = d.hidden_size
    inter = _int(config, "intermediate_size", source)
    n_exp = _int(config, "num_experts" if config.get("num_experts") is not None else "num_local_experts",
                 source, 8)
    ts = TensorCollector()
    ts.embedding("model.embed_tokens", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"model.layers.{i}"
        _attention(ts, f"{p}.self_attn", d, False, False)
        ts.router(f"{p}.mlp.gate", n_exp, h)
        ts.experts(f"{p}.mlp.experts", n_exp, h, inter)
        ts.norm(f"{p}.input_layernorm", h)
        ts.norm(f"{p}.post_attention_layernorm", h)
    ts.norm("model.norm", h)
    ts.head("lm_head", h, d.vocab_size, _tie(config, False, "model.embed_tokens.weight"))
    return ts.items


def _qwen_moe(config: Mapping[str, Any], d: Dims, source: str, *, family: str) -> list[Tensor]:
    """Qwen1.5/2-MoE (``qwen2_moe``) and Qwen3-MoE (``qwen3_moe``).

    Sources: transformers ``models/qwen2_moe/modeling_qwen2_moe.py`` (router, experts, ``shared_expert`` MLP
    of ``shared_expert_intermediate_size`` and a ``shared_expert_gate`` Linear(H, 1); q/k/v bias =
    ``qkv_bias``, default True) and ``models/qwen3_moe/modeling_qwen3_moe.py`` (experts registered *before*
    the router; q/k/v/o bias = ``attention_bias``; per-head ``q_norm``/``k_norm``). Layers that
    ``mlp_only_layers`` / ``decoder_sparse_step`` leave dense get a gated MLP of ``intermediate_size``.
    Defaults from the config classes: 60 experts of 1408 and a 5632 shared expert (qwen2_moe), 128 of 768
    (qwen3_moe).
    """
    h = d.hidden_size
    qwen2 = family == "qwen2_moe"
    n_exp = _int(config, "num_experts", source, 60 if qwen2 else 128, minimum=0)
    sparse = _sparse_layers(config, d, source, n_exp)
    moe_inter = _int(config, "moe_intermediate_size", source, 1408 if qwen2 else 768) if any(sparse) else 0
    dense_inter = _int(config, "intermediate_size", source) if not all(sparse) else 0
    shared_inter = _int(config, "shared_expert_intermediate_size", source, 5632) if qwen2 and any(sparse) else 0
    if qwen2:
        qkv_bias, o_bias = bool(_flag(config, "qkv_bias", True)), False
    else:
        qkv_bias = o_bias = bool(_flag(config, "attention_bias", False))
    ts = TensorCollector()
    ts.embedding("model.embed_tokens", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"model.layers.{i}"
        _attention(ts, f"{p}.self_attn", d, qkv_bias, o_bias)
        if not qwen2:
            ts.norm(f"{p}.self_attn.q_norm", d.head_dim)
            ts.norm(f"{p}.self_attn.k_norm", d.head_dim)
        if not sparse[i]:
            ts.gated_mlp(f"{p}.mlp", h, dense_inter)
        elif qwen2:
            ts.router(f"{p}.mlp.gate", n_exp, h)
            ts.experts(f"{p}.mlp.experts", n_exp, h, moe_inter)
            ts.gated_mlp(f"{p}.mlp.shared_expert", h, shared_inter)
            ts.linear(f"{p}.mlp.shared_expert_gate", h, 1)
        else:
            ts.experts(f"{p}.mlp.experts", n_exp, h, moe_inter)
            ts.router(f"{p}.mlp.gate", n_exp, h)
        ts.norm(f"{p}.input_layernorm", h)
        ts.norm(f"{p}.post_attention_layernorm", h)
    ts.norm("model.norm", h)
    ts.head("lm_head", h, d.vocab_size, _tie(config, False, "model.embed_tokens.weight"))
    return ts.items


# ------------------------------------------------------------------------------------------------ phi
def _phi3(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """Phi-3 / Phi-3.5 / Phi-4 (``phi3``): fused ``qkv_proj`` and ``gate_up_proj``, no biases, RMSNorm.

    Source: transformers ``models/phi3/modeling_phi3.py`` (``Phi3Attention`` registers ``o_proj`` before
    ``qkv_proj``; ``Phi3MLP.gate_up_proj`` is Linear(H, 2 * intermediate_size)).
    """
    h, hd = d.hidden_size, d.head_dim
    inter = _int(config, "intermediate_size", source)
    q_out, kv_out = d.num_heads * hd, d.num_kv_heads * hd
    ts = TensorCollector()
    ts.embedding("model.embed_tokens", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"model.layers.{i}"
        ts.linear(f"{p}.self_attn.o_proj", q_out, h)
        ts.linear(f"{p}.self_attn.qkv_proj", h, q_out + 2 * kv_out)
        ts.linear(f"{p}.mlp.gate_up_proj", h, 2 * inter)
        ts.linear(f"{p}.mlp.down_proj", inter, h)
        ts.norm(f"{p}.input_layernorm", h)
        ts.norm(f"{p}.post_attention_layernorm", h)
    ts.norm("model.norm", h)
    ts.head("lm_head", h, d.vocab_size, _tie(config, False, "model.embed_tokens.weight"))
    return ts.items


def _phi(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """Phi-1 / 1.5 / 2 (``phi``): biased q/k/v/``dense``, ``fc1``/``fc2`` MLP in parallel with attention
    (one LayerNorm per layer), ``final_layernorm``, and an output head *with* a bias.

    Source: transformers ``models/phi/modeling_phi.py``. ``partial_rotary_factor`` changes no shape; the
    optional ``qk_layernorm`` LayerNorms are ``hidden_size // num_attention_heads`` wide even when ``head_dim``
    is given (``PhiAttention.__init__``).
    """
    h, hd = d.hidden_size, d.head_dim
    inter = _int(config, "intermediate_size", source)
    qk_ln = bool(_flag(config, "qk_layernorm", False))
    q_out, kv_out = d.num_heads * hd, d.num_kv_heads * hd
    ts = TensorCollector()
    ts.embedding("model.embed_tokens", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"model.layers.{i}"
        ts.linear(f"{p}.self_attn.q_proj", h, q_out, True)
        ts.linear(f"{p}.self_attn.k_proj", h, kv_out, True)
        ts.linear(f"{p}.self_attn.v_proj", h, kv_out, True)
        ts.linear(f"{p}.self_attn.dense", q_out, h, True)
        if qk_ln:
            ts.norm(f"{p}.self_attn.q_layernorm", h // d.num_heads, bias=True)
            ts.norm(f"{p}.self_attn.k_layernorm", h // d.num_heads, bias=True)
        ts.linear(f"{p}.mlp.fc1", h, inter, True)
        ts.linear(f"{p}.mlp.fc2", inter, h, True)
        ts.norm(f"{p}.input_layernorm", h, bias=True)
    ts.norm("model.final_layernorm", h, bias=True)
    ts.head("lm_head", h, d.vocab_size, _tie(config, False, "model.embed_tokens.weight"), bias=True)
    return ts.items


# ----------------------------------------------------------------------------- GPT-2-era LayerNorm models
def _gpt2(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """GPT-2: transformers ``Conv1D`` everywhere (weights stored (in, out), always biased), learned positions
    ``wpe`` of ``n_positions`` (default 1024), MLP width ``n_inner`` (None -> 4 * n_embd), tied head by
    default, and an optional cross-attention block (``add_cross_attention``).

    Source: transformers ``models/gpt2/modeling_gpt2.py`` (``GPT2Block``, ``GPT2Attention``, ``GPT2MLP``).
    """
    h = d.hidden_size
    inner = _int(config, "n_inner", source, 4 * h)
    ts = TensorCollector()
    ts.embedding("transformer.wte", d.vocab_size, h)
    ts.embedding("transformer.wpe", d.max_position_embeddings or 1024, h)
    for i in range(d.num_layers):
        p = f"transformer.h.{i}"
        ts.norm(f"{p}.ln_1", h, bias=True)
        ts.conv1d(f"{p}.attn.c_attn", h, 3 * h)
        ts.conv1d(f"{p}.attn.c_proj", h, h)
        ts.norm(f"{p}.ln_2", h, bias=True)
        if _flag(config, "add_cross_attention", False):
            ts.conv1d(f"{p}.crossattention.c_attn", h, 2 * h)
            ts.conv1d(f"{p}.crossattention.q_attn", h, h)
            ts.conv1d(f"{p}.crossattention.c_proj", h, h)
            ts.norm(f"{p}.ln_cross_attn", h, bias=True)
        ts.conv1d(f"{p}.mlp.c_fc", h, inner)
        ts.conv1d(f"{p}.mlp.c_proj", inner, h)
    ts.norm("transformer.ln_f", h, bias=True)
    ts.head("lm_head", h, d.vocab_size, _tie(config, True, "transformer.wte.weight"))
    return ts.items


def _bloom(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """BLOOM: ALiBi (no position table), a LayerNorm right after the embedding, biased fused
    ``query_key_value`` and ``dense``, a fixed 4 * hidden MLP (``n_inner`` is ignored), tied head by default.

    Source: transformers ``models/bloom/modeling_bloom.py`` (``BloomModel``, ``BloomBlock``, ``BloomMLP``).
    """
    h = d.hidden_size
    ts = TensorCollector()
    ts.embedding("transformer.word_embeddings", d.vocab_size, h)
    ts.norm("transformer.word_embeddings_layernorm", h, bias=True)
    for i in range(d.num_layers):
        p = f"transformer.h.{i}"
        ts.norm(f"{p}.input_layernorm", h, bias=True)
        ts.linear(f"{p}.self_attention.query_key_value", h, 3 * h, True)
        ts.linear(f"{p}.self_attention.dense", h, h, True)
        ts.norm(f"{p}.post_attention_layernorm", h, bias=True)
        ts.linear(f"{p}.mlp.dense_h_to_4h", h, 4 * h, True)
        ts.linear(f"{p}.mlp.dense_4h_to_h", 4 * h, h, True)
    ts.norm("transformer.ln_f", h, bias=True)
    ts.head("lm_head", h, d.vocab_size, _tie(config, True, "transformer.word_embeddings.weight"))
    return ts.items


def _gpt_neox(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """GPT-NeoX / Pythia: both LayerNorms registered before the attention, fused ``query_key_value`` and
    ``dense`` biased by ``attention_bias`` (default True), biased MLP, untied ``lm_head`` by default.

    Source: transformers ``models/gpt_neox/modeling_gpt_neox.py`` (5.x names the head ``lm_head``, not
    ``embed_out``; ``partial_rotary_factor`` / ``rotary_pct`` change no shape).
    """
    h = d.hidden_size
    inter = _int(config, "intermediate_size", source)
    attn_bias = bool(_flag(config, "attention_bias", True))
    ts = TensorCollector()
    ts.embedding("gpt_neox.embed_in", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"gpt_neox.layers.{i}"
        ts.norm(f"{p}.input_layernorm", h, bias=True)
        ts.norm(f"{p}.post_attention_layernorm", h, bias=True)
        ts.linear(f"{p}.attention.query_key_value", h, 3 * h, attn_bias)
        ts.linear(f"{p}.attention.dense", h, h, attn_bias)
        ts.linear(f"{p}.mlp.dense_h_to_4h", h, inter, True)
        ts.linear(f"{p}.mlp.dense_4h_to_h", inter, h, True)
    ts.norm("gpt_neox.final_layer_norm", h, bias=True)
    ts.head("lm_head", h, d.vocab_size, _tie(config, False, "gpt_neox.embed_in.weight"))
    return ts.items


def _opt(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """OPT: learned positions with 2 extra rows (``OPTLearnedPositionalEmbedding``), embeddings of width
    ``word_embed_proj_dim`` with ``project_out``/``project_in`` when it differs from ``hidden_size``
    (opt-350m), a final LayerNorm only with ``do_layer_norm_before`` and not ``_remove_final_layer_norm``,
    LayerNorms without parameters when ``layer_norm_elementwise_affine`` is false, Linear biases per
    ``enable_bias``, and a head of width ``word_embed_proj_dim``, tied by default.

    Source: transformers ``models/opt/modeling_opt.py`` (``OPTDecoder`` registers ``embed_tokens``,
    ``embed_positions``, ``project_out``, ``project_in``, ``final_layer_norm``, then ``layers``).
    """
    h = d.hidden_size
    proj = _int(config, "word_embed_proj_dim", source, h)
    ffn = _int(config, "ffn_dim", source)
    bias = bool(_flag(config, "enable_bias", True))
    affine = bool(_flag(config, "layer_norm_elementwise_affine", True))
    final_ln = bool(_flag(config, "do_layer_norm_before", True)) and not config.get("_remove_final_layer_norm")

    def layer_norm(module: str) -> None:
        if affine:
            ts.norm(module, h, bias=True)

    ts = TensorCollector()
    ts.embedding("model.decoder.embed_tokens", d.vocab_size, proj)
    ts.embedding("model.decoder.embed_positions", (d.max_position_embeddings or 2048) + 2, h)
    if proj != h:
        ts.linear("model.decoder.project_out", h, proj)
        ts.linear("model.decoder.project_in", proj, h)
    if final_ln:
        layer_norm("model.decoder.final_layer_norm")
    for i in range(d.num_layers):
        p = f"model.decoder.layers.{i}"
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            ts.linear(f"{p}.self_attn.{name}", h, h, bias)
        layer_norm(f"{p}.self_attn_layer_norm")
        ts.linear(f"{p}.fc1", h, ffn, bias)
        ts.linear(f"{p}.fc2", ffn, h, bias)
        layer_norm(f"{p}.final_layer_norm")
    ts.head("lm_head", proj, d.vocab_size, _tie(config, True, "model.decoder.embed_tokens.weight"))
    return ts.items


def _falcon(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """Falcon (7B/40B/180B layouts and Falcon-RW): fused ``query_key_value`` of
    ``(heads + 2 * kv_heads) * head_dim`` with ``new_decoder_architecture``, ``hidden + 2 * head_dim`` with
    ``multi_query`` (default True), else ``3 * hidden``; ``bias`` (default False) on every Linear;
    ``ffn_hidden_size`` (None -> 4 * hidden); LayerNorms by ``parallel_attn`` (default True) and
    ``num_ln_in_parallel_attn`` (None -> 2 with the new architecture); ``alibi`` changes no shape; tied head
    by default.

    Source: transformers ``models/falcon/modeling_falcon.py`` (``FalconAttention``, ``FalconDecoderLayer``
    registers ``self_attention`` and ``mlp`` before its norms, and ``post_attention_layernorm`` before
    ``input_layernorm``).
    """
    h, hd = d.hidden_size, d.head_dim
    bias = bool(_flag(config, "bias", False))
    ffn = _int(config, "ffn_hidden_size", source, 4 * h)
    new_arch = bool(config.get("new_decoder_architecture"))
    if new_arch:
        qkv_out = (2 * d.num_kv_heads + d.num_heads) * hd
    elif _flag(config, "multi_query", True):
        qkv_out = h + 2 * hd
    else:
        qkv_out = 3 * h
    parallel = bool(_flag(config, "parallel_attn", True))
    n_ln = config.get("num_ln_in_parallel_attn")
    if n_ln is None and new_arch:
        n_ln = 2
    ts = TensorCollector()
    ts.embedding("transformer.word_embeddings", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"transformer.h.{i}"
        ts.linear(f"{p}.self_attention.query_key_value", h, qkv_out, bias)
        ts.linear(f"{p}.self_attention.dense", h, h, bias)
        ts.linear(f"{p}.mlp.dense_h_to_4h", h, ffn, bias)
        ts.linear(f"{p}.mlp.dense_4h_to_h", ffn, h, bias)
        if not parallel:
            ts.norm(f"{p}.post_attention_layernorm", h, bias=True)
            ts.norm(f"{p}.input_layernorm", h, bias=True)
        elif n_ln == 2:
            ts.norm(f"{p}.ln_attn", h, bias=True)
            ts.norm(f"{p}.ln_mlp", h, bias=True)
        else:
            ts.norm(f"{p}.input_layernorm", h, bias=True)
    ts.norm("transformer.ln_f", h, bias=True)
    ts.head("lm_head", h, d.vocab_size, _tie(config, True, "transformer.word_embeddings.weight"))
    return ts.items


# ------------------------------------------------------------------------------------- Gemma 3 multimodal
#: ``Gemma3TextConfig`` defaults (transformers 5.24 ``models/gemma3/configuration_gemma3.py``) for the shape keys
#: a published Gemma-3 ``text_config`` may leave out (google/gemma-3-4b-it's leaves out vocab_size, the head
#: counts and head_dim).
GEMMA3_TEXT_DEFAULTS: dict[str, int] = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131072}
#: ``SiglipVisionConfig`` defaults (transformers 5.24 ``models/siglip/configuration_siglip.py``).
SIGLIP_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 16, "vision_use_head": True}

#: Multimodal model types whose vision forward a training plan replays (``vramplan/estimate/vision.py``).
VISION_PLANNED = frozenset({"gemma3", "llava", "qwen2_vl", "qwen2_5_vl"})

#: The text config key a multimodal wrapper keeps its language model under, by wrapper ``model_type``, and the
#: class the pure-Python builder mirrors.
MULTIMODAL_CLASSES: dict[str, str] = {"gemma3": "Gemma3ForConditionalGeneration"}


def language_config(config: Mapping[str, Any], text_defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A multimodal wrapper's config with its language model's keys at the top level, for the readers of flat
    keys (dimensions, sliding windows, softcapping, the serve and KV-cache code).

    The wrapper's ``model_type``, ``architectures`` and ``tie_word_embeddings`` are kept, the text config's are not
    (``Gemma3ForConditionalGeneration`` ties its head by the wrapper's flag, default True, whatever the text config
    says); ``text_config`` and ``vision_config`` stay nested, so
    the transformers config can still be rebuilt from it. ``text_defaults`` fill the shape keys the text config
    leaves to its config class. A config without a ``text_config`` mapping is returned as it is.
    """
    text = config.get("text_config")
    if not isinstance(text, Mapping):
        return dict(config)
    merged: dict[str, Any] = {k: v for k, v in config.items()}
    merged.update({k: v for k, v in text.items() if k not in ("model_type", "architectures", "tie_word_embeddings")})
    for key, value in (text_defaults or {}).items():
        if merged.get(key) is None and value is not None:
            merged[key] = value
    merged["text_config"] = dict(text)
    return merged


def _vision_int(vision: Mapping[str, Any], key: str, source: str) -> int:
    return _int(vision, key, f"{source} vision_config", SIGLIP_VISION_DEFAULTS[key])


def _siglip_tower(ts: TensorCollector, prefix: str, vision: Mapping[str, Any], source: str) -> int:
    """``SiglipVisionModel`` as transformers 5.24 registers it (``models/siglip/modeling_siglip.py``):
    ``embeddings.patch_embedding`` (``nn.Conv2d(num_channels, hidden, patch, patch)`` with bias),
    ``embeddings.position_embedding`` (``(image_size // patch_size) ** 2`` rows), per encoder layer
    ``layer_norm1``, ``self_attn.{k,v,q,out}_proj`` (biased), ``layer_norm2``, ``mlp.fc1``/``fc2`` (biased),
    then ``post_layernorm`` and, with ``vision_use_head`` (default True), the attention-pooling ``head``
    (``probe``, an ``nn.MultiheadAttention``, ``layernorm``, ``mlp``). Returns the tower's width."""
    h = _vision_int(vision, "hidden_size", source)
    inter = _vision_int(vision, "intermediate_size", source)
    layers = _vision_int(vision, "num_hidden_layers", source)
    channels = _vision_int(vision, "num_channels", source)
    patch = _vision_int(vision, "patch_size", source)
    image = _vision_int(vision, "image_size", source)
    ts.add(f"{prefix}.embeddings.patch_embedding", "weight", (h, channels, patch, patch), "other")
    ts.add(f"{prefix}.embeddings.patch_embedding", "bias", (h,), "other")
    ts.embedding(f"{prefix}.embeddings.position_embedding", (image // patch) ** 2, h)
    for i in range(layers):
        p = f"{prefix}.encoder.layers.{i}"
        ts.norm(f"{p}.layer_norm1", h, bias=True)
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            ts.linear(f"{p}.self_attn.{name}", h, h, True)
        ts.norm(f"{p}.layer_norm2", h, bias=True)
        ts.linear(f"{p}.mlp.fc1", h, inter, True)
        ts.linear(f"{p}.mlp.fc2", inter, h, True)
    ts.norm(f"{prefix}.post_layernorm", h, bias=True)
    use_head = vision.get("vision_use_head")
    if SIGLIP_VISION_DEFAULTS["vision_use_head"] if use_head is None else bool(use_head):
        ts.add(f"{prefix}.head", "probe", (1, 1, h), "other")
        ts.add(f"{prefix}.head.attention", "in_proj_weight", (3 * h, h), "other")
        ts.add(f"{prefix}.head.attention", "in_proj_bias", (3 * h,), "other")
        ts.linear(f"{prefix}.head.attention.out_proj", h, h, True)
        ts.norm(f"{prefix}.head.layernorm", h, bias=True)
        ts.linear(f"{prefix}.head.mlp.fc1", h, inter, True)
        ts.linear(f"{prefix}.head.mlp.fc2", inter, h, True)
    return h


def _gemma3_multimodal(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """``Gemma3ForConditionalGeneration`` (google/gemma-3-4b-it, 12b-it, 27b-it): ``model.vision_tower`` (SigLIP),
    ``model.multi_modal_projector`` (a bare ``mm_input_projection_weight`` [vision hidden, text hidden] and an
    RMSNorm ``mm_soft_emb_norm`` of the vision width; the average pooling owns nothing), ``model.language_model``
    (``Gemma3TextModel``) and ``lm_head``, tied to the text embedding by the wrapper's ``tie_word_embeddings``
    (default True; ``_tied_weights_keys``).

    Source: transformers 5.24 ``models/gemma3/modeling_gemma3.py`` (``Gemma3Model.__init__``,
    ``Gemma3MultiModalProjector.__init__``) and ``configuration_gemma3.py`` (``Gemma3Config``: the vision config
    defaults to ``SiglipVisionConfig()``).
    """
    vision = config.get("vision_config") or {}
    if not isinstance(vision, Mapping):
        raise ConfigError(f"{source}: field 'vision_config' must be an object, got {brief(vision)}")
    vt = vision.get("model_type")
    if vt not in (None, "siglip_vision_model"):
        raise ConfigError(f"{source}: vision_config model_type {vt!r}: vramplan's Gemma-3 builder mirrors the SigLIP "
                          "tower (siglip_vision_model) only")
    ts = TensorCollector()
    vh = _siglip_tower(ts, "model.vision_tower", vision, source)
    ts.add("model.multi_modal_projector", "mm_input_projection_weight", (vh, d.hidden_size), "other")
    ts.norm("model.multi_modal_projector.mm_soft_emb_norm", vh)
    tie = bool(_flag(config, "tie_word_embeddings", True))
    return _llama_like(config, d, source, family="gemma3_text", prefix="model.language_model", ts=ts, tie=tie)


#: family (config ``model_type``) -> builder returning the tensors in transformers' module order
FAMILIES: dict[str, Callable[[Mapping[str, Any], Dims, str], list[Tensor]]] = {
    **{fam: (lambda c, d, s, _f=fam: _llama_like(c, d, s, family=_f))
       for fam in ("llama", "mistral", "qwen2", "qwen3", "baichuan", "gemma", "gemma2", "gemma3_text")},
    "mixtral": _mixtral,
    "qwen2_moe": lambda c, d, s: _qwen_moe(c, d, s, family="qwen2_moe"),
    "qwen3_moe": lambda c, d, s: _qwen_moe(c, d, s, family="qwen3_moe"),
    "phi3": _phi3,
    "phi": _phi,
    "gpt2": _gpt2,
    "bloom": _bloom,
    "gpt_neox": _gpt_neox,
    "opt": _opt,
    "falcon": _falcon,
}

#: multimodal wrapper (config ``model_type``) -> builder of the checkpoint's own class, vision tower included
#: (issue 16); kept apart from :data:`FAMILIES`, the decoder-only text families
MULTIMODAL_FAMILIES: dict[str, Callable[[Mapping[str, Any], Dims, str], list[Tensor]]] = {
    "gemma3": _gemma3_multimodal,
}

#: per multimodal wrapper, the defaults its text config class gives the shape keys
_TEXT_DEFAULTS: dict[str, Mapping[str, Any]] = {"gemma3": GEMMA3_TEXT_DEFAULTS}


def supported_families() -> tuple[str, ...]:
    return tuple(sorted({*FAMILIES, *MULTIMODAL_FAMILIES}))


def has_builder(model_type: str) -> bool:
    """Whether :func:`spec_from_config` builds this ``model_type`` without torch."""
    return model_type in FAMILIES or model_type in MULTIMODAL_FAMILIES


def model_type_of(config: Mapping[str, Any]) -> str:
    mt = config.get("model_type")
    if not mt or not isinstance(mt, str):
        archs = config.get("architectures") or []
        if isinstance(archs, list) and archs and "baichuan" in str(archs[0]).lower():
            return "baichuan"
        return ""
    return str(mt)


def spec_from_config(config: Mapping[str, Any], name: str = "", source: str = "config.json") -> ModelSpec:
    """Build a :class:`ModelSpec` from a config dict without importing torch.

    Raises:
        ConfigError: the config is invalid, or its family is not one this builder knows (use
            :func:`vramplan.shapes.from_meta.spec_from_meta` for those).
    """
    mt = model_type_of(config)
    if not has_builder(mt):
        raise ConfigError(f"{source}: model_type {mt!r} has no pure-Python builder "
                          f"(known: {', '.join(supported_families())}); use the meta-device builder")
    flat = language_config(config, _TEXT_DEFAULTS[mt]) if mt in MULTIMODAL_CLASSES else config
    d = read_dims(flat, source)
    builder = MULTIMODAL_FAMILIES.get(mt) or FAMILIES[mt]
    return assemble(flat, d, builder(flat, d, source), name=name, model_type=mt, origin="config",
                    architecture=MULTIMODAL_CLASSES.get(mt))


# Config-class defaults for summary fields a config may leave out (transformers ``configuration_*.py``;
# BLOOM has no activation field: ``BloomGelu`` is the tanh approximation).
_DEFAULT_ACT = {"llama": "silu", "mistral": "silu", "qwen2": "silu", "qwen3": "silu", "mixtral": "silu",
                "qwen2_moe": "silu", "qwen3_moe": "silu", "phi3": "silu", "phi": "gelu_new", "gpt2": "gelu_new",
                "bloom": "gelu_pytorch_tanh", "gpt_neox": "gelu", "opt": "relu", "falcon": "gelu",
                "gemma": "gelu_pytorch_tanh", "gemma2": "gelu_pytorch_tanh", "gemma3_text": "gelu_pytorch_tanh",
                "gemma3": "gelu_pytorch_tanh"}
_DEFAULT_TOP_K = {"mixtral": 2, "qwen2_moe": 4, "qwen3_moe": 8}


def assemble(config: Mapping[str, Any], d: Dims, tensors: list[Tensor], *, name: str, model_type: str,
             origin: str, architecture: str | None = None, notes: tuple[str, ...] = (),
             plan_refusal: str | None = None) -> ModelSpec:
    """Derive the scalar summary fields from the config and the tensors (shared by both builders).

    ``architecture`` is the class the tensors are of, when the builder knows it (else the config's first
    ``architectures`` entry); the summary fields describe the language model only (a multimodal checkpoint's
    vision tower has LayerNorms with biases and its own MLP width). ``notes`` are added to those
    :func:`model_notes` derives.
    """
    all_tensors = tensors
    tensors = [t for t in tensors if t.role not in OUTSIDE_LANGUAGE_MODEL]
    roles = {t.role for t in tensors}
    inter = 0
    for t in tensors:
        if t.role in ("mlp_up", "mlp_gate") and t.module_type in ("linear", "conv1d"):
            inter = t.shape[0] if t.module_type == "linear" else t.shape[1]
            break
        if t.role == "mlp_gate_up":
            inter = t.shape[0] // 2
            break
    moe_inter, n_exp = 0, 0
    for t in tensors:
        if t.role == "moe_experts_down":
            n_exp, moe_inter = t.shape[0], t.shape[-1]
            break
    if not n_exp and any(r.startswith("moe_expert_") for r in roles):
        n_exp = int(config.get("num_local_experts") or config.get("num_experts") or 0)
        moe_inter = next((t.shape[0] for t in tensors if t.role == "moe_expert_up"), 0)
    act = (config.get("hidden_act") or config.get("hidden_activation") or config.get("activation_function")
           or config.get("activation") or _DEFAULT_ACT.get(model_type, ""))
    gated = bool(roles & {"mlp_gate", "mlp_gate_up", "moe_experts_gate_up", "moe_expert_gate"})
    has_ln_bias = any(t.module_type == "norm" and t.param_name == "bias" for t in tensors)
    sliding = config.get("sliding_window") if config.get("use_sliding_window", True) is not False else None
    archs = config.get("architectures") or [""]
    arch = architecture or str(archs[0])
    return ModelSpec(
        name=name or str(config.get("_name_or_path") or model_type),
        model_type=model_type,
        architecture=arch,
        hidden_size=d.hidden_size,
        num_layers=d.num_layers,
        num_heads=d.num_heads,
        num_kv_heads=d.num_kv_heads,
        head_dim=d.head_dim,
        intermediate_size=inter,
        vocab_size=d.vocab_size,
        tie_word_embeddings=any(t.tied_to for t in tensors),
        hidden_act=str(act),
        mlp_gated=gated,
        norm_type="layernorm" if has_ln_bias else "rmsnorm",
        max_position_embeddings=d.max_position_embeddings,
        sliding_window=sliding if isinstance(sliding, int) and not isinstance(sliding, bool) and sliding > 0
        else None,
        num_experts=n_exp,
        experts_per_token=int(config.get("num_experts_per_tok") or config.get("moe_topk")
                              or _DEFAULT_TOP_K.get(model_type, 0)) if n_exp else 0,
        moe_intermediate_size=moe_inter,
        tensors=tuple(all_tensors),
        config=dict(config),
        origin=origin,
        notes=tuple(model_notes(all_tensors, arch or model_type, model_type, config)) + tuple(notes),
        plan_refusal=plan_refusal,
    )


#: model types whose layers are (partly) recurrent or convolutional, and what those layers are (transformers 5.24
#: ``models/<type>/modeling_<type>.py``); Mamba mixers are also recognised by their tensors (``ssm_*`` roles)
RECURRENT_LAYERS: dict[str, str] = {
    "mamba": "state-space (Mamba) mixer layers", "mamba2": "state-space (Mamba-2) mixer layers",
    "falcon_mamba": "state-space (Mamba) mixer layers", "jamba": "state-space (Mamba) mixer layers",
    "zamba": "state-space (Mamba) mixer layers", "zamba2": "state-space (Mamba-2) mixer layers",
    "falcon_h1": "state-space (Mamba-2) mixer layers", "bamba": "state-space (Mamba-2) mixer layers",
    "granitemoehybrid": "state-space (Mamba-2) mixer layers", "nemotron_h": "state-space (Mamba-2) mixer layers",
    "lfm2": "short-convolution layers (Lfm2ShortConv)", "lfm2_moe": "short-convolution layers (Lfm2MoeShortConv)",
    "qwen3_next": "Gated DeltaNet linear-attention layers (Qwen3NextGatedDeltaNet)",
    "recurrent_gemma": "RG-LRU recurrent blocks (RecurrentGemmaRecurrentBlock)",
}


def _left_out_vision(config: Mapping[str, Any], source: str = "config.json") -> tuple[int, int] | None:
    """For a Gemma-3 text config that also names its checkpoint's SigLIP ``vision_config`` (the bundled
    ``gemma-3-*`` profiles: the language model of ``google/gemma-3-*-it``), the tower's and the projector's
    parameter counts that the text model leaves out (as :func:`_gemma3_multimodal` builds them); else None."""
    vision = config.get("vision_config")
    if str(config.get("model_type")) != "gemma3_text" or not isinstance(vision, Mapping):
        return None
    if vision.get("model_type") not in (None, "siglip_vision_model"):
        return None
    ts = TensorCollector()
    vh = _siglip_tower(ts, "vision_tower", vision, source)
    hidden = get(config, "hidden_size")
    return sum(t.numel for t in ts.items), vh * int(hidden) + vh if isinstance(hidden, int) else vh


def model_notes(tensors: list[Tensor], architecture: str, model_type: str = "",
                config: Mapping[str, Any] | None = None) -> list[str]:
    """What a plan of this model does not model, from its tensors: a multimodal checkpoint's vision tower and
    projector (counted and placed as frozen weights; their forward, and the image tokens' cost in the tower, are
    not modelled), a text model whose config names the vision tower it leaves out, and recurrent or state-space
    layers (no analytic replay)."""
    out = []
    left_out = _left_out_vision(config) if config is not None else None
    if left_out is not None:
        tower, proj = left_out
        text = sum(t.numel for t in tensors if t.tied_to is None)
        out.append(
            f"counted as {architecture}, the language model alone: the checkpoint's SigLIP vision tower "
            f"({tower:,} parameters) and projector ({proj:,}) named in its vision_config are not in this plan "
            f"({text + tower + proj:,} in all as Gemma3ForConditionalGeneration); pass the checkpoint's own "
            "config.json to plan the multimodal class")
    parts: dict[str, int] = {}
    for t in tensors:
        if t.tied_to is None and t.role in OUTSIDE_LANGUAGE_MODEL:
            parts[t.role] = parts.get(t.role, 0) + t.numel
    if parts and model_type in VISION_PLANNED:
        out.append(
            f"counted as {architecture}: vision tower {parts.get('vision_tower', 0):,} and projector "
            f"{parts.get('vision_projector', 0):,} parameters are weights in the plan; a training plan encodes the "
            "images --image-tokens stand for (the tower's and projector's saved activations, trained per "
            "--train-vision); the tower's forward working set and inference's image encoding are not modelled")
    elif parts:
        out.append(
            f"counted as {architecture}: vision tower {parts.get('vision_tower', 0):,} and projector "
            f"{parts.get('vision_projector', 0):,} parameters are weights in the plan, but encoding images is not "
            "modelled (the tower's activations and its per-image working set); image tokens count only as part "
            "of --seq for the language model")
    if any(".cross_attn." in t.name for t in tensors if t.role not in OUTSIDE_LANGUAGE_MODEL):
        out.append(
            f"{architecture}: its cross-attention decoder layers (MllamaCrossAttentionDecoderLayer) are replayed as "
            "self-attention over the text tokens; the image keys and values they attend to (per tile) are not "
            "modelled")
    what = RECURRENT_LAYERS.get(model_type)
    if what is None and any(t.role.startswith("ssm_") for t in tensors):
        what = "state-space (Mamba) mixer layers"
    if what is not None:
        out.append(
            f"{architecture}: its {what} have no analytic replay: their activations are the simulator's calibration "
            "of the model's first layers (one cost per such layer), and an inference plan's cache is KV for every "
            "layer at the attention heads' width (none without attention), without the recurrent and convolution "
            "states")
    return out


__all__ = ["spec_from_config", "assemble", "supported_families", "FAMILIES", "get", "model_type_of", "language_config",
           "has_builder", "MULTIMODAL_FAMILIES",
           "model_notes", "GEMMA3_TEXT_DEFAULTS", "SIGLIP_VISION_DEFAULTS", "MULTIMODAL_CLASSES", "VISION_PLANNED"]


# Families whose modeling code ships with the checkpoint (auto_map), built from their published modeling files
# without running them: vramplan/shapes/remote.py. Registered here so every caller of FAMILIES sees them;
# remote.py's "baichuan" builder replaces the llama-like one above (same tensors for Baichuan 1, NormHead for
# Baichuan 2).
from .remote import REMOTE_DEFAULT_ACT, REMOTE_FAMILIES  # noqa: E402

FAMILIES.update(REMOTE_FAMILIES)
for _mt, _act in REMOTE_DEFAULT_ACT.items():
    _DEFAULT_ACT.setdefault(_mt, _act)
