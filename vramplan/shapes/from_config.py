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
from .spec import ModelSpec, Tensor


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
def _llama_like(config: Mapping[str, Any], d: Dims, source: str, *, family: str) -> list[Tensor]:
    """Llama, Mistral, Qwen2/2.5, Qwen3, Baichuan (``W_pack``), Gemma, Gemma-2, Gemma-3 (text).

    Sources: transformers ``models/{llama,mistral,qwen2,qwen3,gemma,gemma2,gemma3}/modeling_*.py``.
    """
    h, hd = d.hidden_size, d.head_dim
    q_out, kv_out = d.num_heads * hd, d.num_kv_heads * hd
    inter = _int(config, "intermediate_size", source)
    default_tie = family in ("gemma", "gemma2", "gemma3_text")
    tie = bool(_flag(config, "tie_word_embeddings", default_tie))
    qkv_bias = {"qwen2": True}.get(family, bool(_flag(config, "attention_bias", False)))
    o_bias = False if family == "qwen2" else bool(_flag(config, "attention_bias", False))
    mlp_bias = bool(_flag(config, "mlp_bias", False)) if family == "llama" else False
    qk_norm = family in ("qwen3", "gemma3_text")
    sandwich = family in ("gemma2", "gemma3_text")   # pre/post feed-forward norms

    ts = TensorCollector()
    ts.embedding("model.embed_tokens", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"model.layers.{i}"
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
    ts.norm("model.norm", h)
    ts.head("lm_head", h, d.vocab_size, "model.embed_tokens.weight" if tie else None)
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


def supported_families() -> tuple[str, ...]:
    return tuple(sorted(FAMILIES))


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
    if mt not in FAMILIES:
        raise ConfigError(f"{source}: model_type {mt!r} has no pure-Python builder "
                          f"(known: {', '.join(supported_families())}); use the meta-device builder")
    d = read_dims(config, source)
    return assemble(config, d, FAMILIES[mt](config, d, source), name=name, model_type=mt, origin="config")


# Config-class defaults for summary fields a config may leave out (transformers ``configuration_*.py``;
# BLOOM has no activation field: ``BloomGelu`` is the tanh approximation).
_DEFAULT_ACT = {"llama": "silu", "mistral": "silu", "qwen2": "silu", "qwen3": "silu", "mixtral": "silu",
                "qwen2_moe": "silu", "qwen3_moe": "silu", "phi3": "silu", "phi": "gelu_new", "gpt2": "gelu_new",
                "bloom": "gelu_pytorch_tanh", "gpt_neox": "gelu", "opt": "relu", "falcon": "gelu",
                "gemma": "gelu_pytorch_tanh", "gemma2": "gelu_pytorch_tanh", "gemma3_text": "gelu_pytorch_tanh"}
_DEFAULT_TOP_K = {"mixtral": 2, "qwen2_moe": 4, "qwen3_moe": 8}


def assemble(config: Mapping[str, Any], d: Dims, tensors: list[Tensor], *, name: str, model_type: str,
             origin: str) -> ModelSpec:
    """Derive the scalar summary fields from the config and the tensors (shared by both builders)."""
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
    return ModelSpec(
        name=name or str(config.get("_name_or_path") or model_type),
        model_type=model_type,
        architecture=str(archs[0]),
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
        tensors=tuple(tensors),
        config=dict(config),
        origin=origin,
    )


__all__ = ["spec_from_config", "assemble", "supported_families", "FAMILIES", "get", "model_type_of"]


# Families whose modeling code ships with the checkpoint (auto_map), built from their published modeling files
# without running them: vramplan/shapes/remote.py. Registered here so every caller of FAMILIES sees them;
# remote.py's "baichuan" builder replaces the llama-like one above (same tensors for Baichuan 1, NormHead for
# Baichuan 2).
from .remote import REMOTE_DEFAULT_ACT, REMOTE_FAMILIES  # noqa: E402

FAMILIES.update(REMOTE_FAMILIES)
for _mt, _act in REMOTE_DEFAULT_ACT.items():
    _DEFAULT_ACT.setdefault(_mt, _act)
