"""Pure-Python ModelSpec builders for families whose modeling code lives on the Hub (``auto_map``), not in
transformers: Qwen (v1), InternLM2, ChatGLM2/3 and GLM-4 (``chatglm``), Baichuan 1/2 and MiniCPM.

transformers cannot build these without running the checkpoint's own ``modeling_*.py`` (``trust_remote_code``),
so the meta-device builder cannot check them; each builder below mirrors the published modeling file instead:
the ``nn.Linear`` / ``nn.Embedding`` / norm constructors, their ``bias=`` arguments, the config class's
defaults, and the order in which modules are registered (which is the order of ``named_modules``). The file
each builder follows is named in its docstring (repository, path and commit of the mirror read); ``docs/models.md``
lists them with the checkpoints whose totals the tests pin.

No torch import. :data:`REMOTE_FAMILIES` is registered into
:data:`vramplan.shapes.from_config.FAMILIES` by that module, so :func:`~vramplan.shapes.from_config.spec_from_config`
and profile resolution use these builders for a config of these ``model_type`` s whether or not it has an
``auto_map``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from .collect import TensorCollector
from .config import Dims
from .spec import Tensor

Builder = Callable[[Mapping[str, Any], Dims, str], list[Tensor]]

#: Baichuan 2's vocabulary; its checkpoints (7B and 13B) replace the output Linear by ``NormHead``, and
#: Baichuan 1 (64,000) does not. The same rule tells the two apart in ipex-llm's ``convert.py``
#: (``model.config.model_type == "baichuan" and model.config.vocab_size == 125696``), vLLM and llama.cpp.
BAICHUAN2_VOCAB = 125696


def _int(config: Mapping[str, Any], key: str, source: str, default: int) -> int:
    """``config[key]`` as a positive int; the config class's ``default`` when absent or null."""
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{source}: field '{key}' must be a positive integer, got {value!r}")
    return value


def _bool(config: Mapping[str, Any], key: str, source: str, default: bool) -> bool:
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: field '{key}' must be true or false, got {value!r}")
    return value


def _head_dim(d: Dims, source: str, family: str) -> int:
    """``hidden_size // num_attention_heads``, which these attention classes use whatever ``head_dim`` says;
    they raise when it does not divide."""
    if d.hidden_size % d.num_heads:
        raise ConfigError(f"{source}: {family}: hidden_size {d.hidden_size} is not divisible by "
                          f"num_attention_heads {d.num_heads}; fix the config")
    return d.hidden_size // d.num_heads


# ----------------------------------------------------------------------------------------------- Qwen v1
def _qwen(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """Qwen (v1: Qwen-1.8B/7B/14B/72B and their Chat models), ``QWenLMHeadModel``.

    Source: ``modeling_qwen.py`` and ``configuration_qwen.py`` of Qwen/Qwen-7B, read in the mirror
    github.com/zhangningboo/Qwen-7B at d4efd21e866b9cb3466cb65b963933f5e98016d1 (``QWenAttention``,
    ``QWenMLP``, ``QWenBlock``, ``QWenModel``, ``QWenLMHeadModel``):

    - ``attn.c_attn = nn.Linear(hidden, 3 * kv_channels * heads)``, always biased;
      ``attn.c_proj = nn.Linear(hidden, kv_channels * heads, bias=not no_bias)`` (in = hidden, as written);
    - ``mlp.w1`` / ``mlp.w2 = nn.Linear(hidden, intermediate_size // 2, bias=not no_bias)`` and
      ``mlp.c_proj = nn.Linear(intermediate_size // 2, hidden, ...)``; the forward is ``w1(x) * silu(w2(x))``,
      so ``w2`` is the gate and ``w1`` the up projection (the shared name table reads ``w1`` as a gate);
    - ``ln_1``, ``attn``, ``ln_2``, ``mlp`` per block; ``wte``, ``h``, ``ln_f``; ``lm_head`` without bias.

    Config defaults (``QWenConfig``): ``kv_channels`` 128, ``intermediate_size`` 22016, ``no_bias`` True,
    ``tie_word_embeddings`` False.

    The first release (August 2023; Qwen-7B-Chat's ``modeling_qwen.py`` in the mirror
    github.com/undefdev/Qwen-7B-Chat at 04df5dd57b94b9ed20498ee42063ea9e164f98b3) names the same tree with
    GPT-2 keys (``n_embd``, ``n_head``, ``n_layer``, ``n_positions``: its ``attribute_map``), sizes the MLP from
    ``ffn_hidden_size`` and the embedding from ``padded_vocab_size`` (the head from ``vocab_size``); both
    spellings are read here.
    """
    h = d.hidden_size
    proj = _int(config, "kv_channels", source, 128) * d.num_heads
    ff_key = "ffn_hidden_size" if config.get("intermediate_size") is None and "ffn_hidden_size" in config \
        else "intermediate_size"
    ff = _int(config, ff_key, source, 22016) // 2
    emb_rows = _int(config, "padded_vocab_size", source, d.vocab_size)
    bias = not _bool(config, "no_bias", source, True)
    ts = TensorCollector()
    ts.embedding("transformer.wte", emb_rows, h)
    for i in range(d.num_layers):
        p = f"transformer.h.{i}"
        ts.norm(f"{p}.ln_1", h)
        ts.linear(f"{p}.attn.c_attn", h, 3 * proj, True, role="attn_qkv")
        ts.linear(f"{p}.attn.c_proj", h, proj, bias, role="attn_o")
        ts.norm(f"{p}.ln_2", h)
        ts.linear(f"{p}.mlp.w1", h, ff, bias, role="mlp_up")
        ts.linear(f"{p}.mlp.w2", h, ff, bias, role="mlp_gate")
        ts.linear(f"{p}.mlp.c_proj", ff, h, bias, role="mlp_down")
    ts.norm("transformer.ln_f", h)
    tie = _bool(config, "tie_word_embeddings", source, False)
    ts.head("lm_head", h, d.vocab_size, "transformer.wte.weight" if tie else None)
    return ts.items


# ---------------------------------------------------------------------------------------------- InternLM2
def _internlm2(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """InternLM2 / InternLM2.5 (``InternLM2ForCausalLM``): fused ``wqkv``, ``w1``/``w3``/``w2`` MLP.

    Source: ``modeling_internlm2.py`` and ``configuration_internlm2.py`` of internlm/internlm2-chat-7b, read in
    the mirror github.com/NanSang2000/S1mpleAgent at 4275caa205dbb8ff83930e2c1ce6bc62ec49329c:

    - ``attention.wqkv = nn.Linear(hidden, (heads + 2 * kv_heads) * head_dim, bias=config.bias)`` and
      ``attention.wo = nn.Linear(heads * head_dim, hidden, bias=config.bias)``, ``head_dim = hidden // heads``;
    - ``feed_forward.w1`` (gate), ``w3`` (up), ``w2`` (down), no bias; then ``attention_norm``, ``ffn_norm``;
    - ``model.tok_embeddings``, ``model.layers``, ``model.norm``; ``output = nn.Linear(hidden, vocab)``
      (``_tied_weights_keys = ["output.weight"]``: tied to the embedding when ``tie_word_embeddings``).

    Config defaults (``InternLM2Config``): ``bias`` True, ``num_key_value_heads`` = heads,
    ``tie_word_embeddings`` False.
    """
    h, hd = d.hidden_size, _head_dim(d, source, "internlm2")
    bias = _bool(config, "bias", source, True)
    inter = _int(config, "intermediate_size", source, 11008)
    ts = TensorCollector()
    ts.embedding("model.tok_embeddings", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"model.layers.{i}"
        ts.linear(f"{p}.attention.wqkv", h, (d.num_heads + 2 * d.num_kv_heads) * hd, bias, role="attn_qkv")
        ts.linear(f"{p}.attention.wo", d.num_heads * hd, h, bias, role="attn_o")
        ts.linear(f"{p}.feed_forward.w1", h, inter, False, role="mlp_gate")
        ts.linear(f"{p}.feed_forward.w3", h, inter, False, role="mlp_up")
        ts.linear(f"{p}.feed_forward.w2", inter, h, False, role="mlp_down")
        ts.norm(f"{p}.attention_norm", h)
        ts.norm(f"{p}.ffn_norm", h)
    ts.norm("model.norm", h)
    tie = _bool(config, "tie_word_embeddings", source, False)
    ts.head("output", h, d.vocab_size, "model.tok_embeddings.weight" if tie else None)
    return ts.items


# ------------------------------------------------------------------------------------- ChatGLM2/3, GLM-4
def _chatglm(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """ChatGLM2-6B, ChatGLM3-6B and the GLM-4 remote-code checkpoints (``ChatGLMForConditionalGeneration``).

    Source: ``modeling_chatglm.py`` and ``configuration_chatglm.py`` of THUDM/chatglm3-6b, read in the mirror
    github.com/czk1997/chatglm3-copy at 456aa875cf1f46623006edaa23103774ea9c0eae:

    - ``self_attention.query_key_value = nn.Linear(hidden, qkv, bias=add_bias_linear or add_qkv_bias)`` with
      ``qkv = kv_channels * heads + 2 * kv_channels * multi_query_group_num`` under ``multi_query_attention``,
      else ``3 * kv_channels * heads``; ``self_attention.dense = nn.Linear(kv_channels * heads, hidden,
      bias=add_bias_linear)``;
    - ``mlp.dense_h_to_4h = nn.Linear(hidden, 2 * ffn_hidden_size)`` (gate and up fused: ``swiglu`` chunks it)
      and ``mlp.dense_4h_to_h = nn.Linear(ffn_hidden_size, hidden)``, both ``bias=add_bias_linear``;
    - per ``GLMBlock``: ``input_layernorm``, ``self_attention``, ``post_attention_layernorm``, ``mlp``; RMSNorm
      with ``rmsnorm`` (else LayerNorm with bias); ``encoder.final_layernorm`` with ``post_layer_norm``;
    - ``transformer.embedding.word_embeddings`` (``padded_vocab_size`` rows), ``transformer.rotary_pos_emb``
      (an ``inv_freq`` *buffer*: saved in the checkpoint, not a parameter), ``transformer.encoder``,
      ``transformer.output_layer = nn.Linear(hidden, padded_vocab_size, bias=False)``, never tied (the class
      defines no ``get_output_embeddings``, so transformers' ``tie_weights`` has nothing to tie).

    Config defaults (``ChatGLMConfig``): ``kv_channels`` 128, ``ffn_hidden_size`` 13696, ``padded_vocab_size``
    65024, ``rmsnorm`` True, ``post_layer_norm`` True, ``add_bias_linear`` / ``add_qkv_bias`` /
    ``multi_query_attention`` False, ``multi_query_group_num`` 1.

    Raises:
        ConfigError: a ChatGLM-6B (v1) config (GLM blocks with 2-D positions: ``position_encoding_2d`` /
            ``inner_hidden_size``, a different module tree) or a P-tuning prefix (``pre_seq_len``).
    """
    if "inner_hidden_size" in config or "position_encoding_2d" in config:
        raise ConfigError(f"{source}: this is a ChatGLM-6B (v1) config (inner_hidden_size / position_encoding_2d); "
                          "vramplan builds ChatGLM2/3 and GLM-4 (padded_vocab_size, ffn_hidden_size) only")
    if config.get("pre_seq_len") is not None:
        raise ConfigError(f"{source}: pre_seq_len {config.get('pre_seq_len')!r} asks for ChatGLM's P-tuning "
                          "prefix encoder, which vramplan does not model; remove it from the config to plan LoRA")
    h = d.hidden_size
    kv_ch = _int(config, "kv_channels", source, 128)
    proj = kv_ch * d.num_heads
    if _bool(config, "multi_query_attention", source, False):
        qkv = proj + 2 * kv_ch * _int(config, "multi_query_group_num", source, 1)
    else:
        qkv = 3 * proj
    ffn = _int(config, "ffn_hidden_size", source, 13696)
    vocab = _int(config, "padded_vocab_size", source, 65024)
    bias = _bool(config, "add_bias_linear", source, False)
    qkv_bias = bias or _bool(config, "add_qkv_bias", source, False)
    layer_norm = not _bool(config, "rmsnorm", source, True)
    ts = TensorCollector()
    ts.embedding("transformer.embedding.word_embeddings", vocab, h)
    for i in range(d.num_layers):
        p = f"transformer.encoder.layers.{i}"
        ts.norm(f"{p}.input_layernorm", h, layer_norm)
        ts.linear(f"{p}.self_attention.query_key_value", h, qkv, qkv_bias, role="attn_qkv")
        ts.linear(f"{p}.self_attention.dense", proj, h, bias, role="attn_o")
        ts.norm(f"{p}.post_attention_layernorm", h, layer_norm)
        ts.linear(f"{p}.mlp.dense_h_to_4h", h, 2 * ffn, bias, role="mlp_gate_up")
        ts.linear(f"{p}.mlp.dense_4h_to_h", ffn, h, bias, role="mlp_down")
    if _bool(config, "post_layer_norm", source, True):
        ts.norm("transformer.encoder.final_layernorm", h, layer_norm)
    ts.head("transformer.output_layer", h, vocab, None)
    return ts.items


# ------------------------------------------------------------------------------------------- Baichuan 1/2
def _baichuan(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """Baichuan-7B/13B (v1) and Baichuan2-7B/13B: fused ``W_pack``, RoPE at 7B, ALiBi at 13B (no parameters
    either way), and, for Baichuan 2 (vocabulary :data:`BAICHUAN2_VOCAB`), ``NormHead`` as the output layer.

    Source: ``modeling_baichuan.py`` of baichuan-inc/Baichuan2-13B-Chat, read in the mirror
    github.com/jrd77/Baichuan2-13B-Chat at d022d7264467b2c3bc483e7a3a17105dedba50b8:

    - ``self_attn.W_pack = nn.Linear(hidden, 3 * hidden, bias=False)``, ``self_attn.o_proj`` (no bias);
      ``mlp.gate_proj``, ``mlp.down_proj``, ``mlp.up_proj`` (registered in that order; ``named_modules`` follows
      it), no bias; ``input_layernorm``, ``post_attention_layernorm`` (RMSNorm, weight only);
    - ``model.embed_tokens``, ``model.layers``, ``model.norm``; ``lm_head = NormHead(hidden, vocab)``: an
      ``nn.Module`` holding one ``weight`` [vocab, hidden] that it L2-normalises on use. It is not an
      ``nn.Linear``: PEFT cannot wrap it (a LoRA target ``lm_head`` is refused), bitsandbytes leaves it as it is,
      and ``all-linear`` leaves it out. The ALiBi mask is a non-persistent buffer (``future_mask``), no parameter.

    Baichuan 1 (BaiChuanForCausalLM, Baichuan-13B-Base) has the same tree with a plain ``nn.Linear`` head; the
    count for Baichuan-7B is unchanged from the llama-like builder that served it before.
    """
    h = d.hidden_size
    inter = config.get("intermediate_size")
    if isinstance(inter, bool) or not isinstance(inter, int) or inter <= 0:
        raise ConfigError(f"{source}: field 'intermediate_size' must be a positive integer, got {inter!r}"
                          if inter is not None else
                          f"{source}: missing field 'intermediate_size'; pass the model's full config.json")
    v2 = d.vocab_size == BAICHUAN2_VOCAB
    ts = TensorCollector()
    ts.embedding("model.embed_tokens", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"model.layers.{i}"
        ts.linear(f"{p}.self_attn.W_pack", h, 3 * h, False)
        ts.linear(f"{p}.self_attn.o_proj", h, h, False)
        ts.linear(f"{p}.mlp.gate_proj", h, inter, False)
        if v2:   # Baichuan 2's MLP registers gate, down, up; Baichuan 1 keeps the order it was built with
            ts.linear(f"{p}.mlp.down_proj", inter, h, False)
            ts.linear(f"{p}.mlp.up_proj", h, inter, False)
        else:
            ts.linear(f"{p}.mlp.up_proj", h, inter, False)
            ts.linear(f"{p}.mlp.down_proj", inter, h, False)
        ts.norm(f"{p}.input_layernorm", h)
        ts.norm(f"{p}.post_attention_layernorm", h)
    ts.norm("model.norm", h)
    tie = _bool(config, "tie_word_embeddings", source, False)
    ts.head("lm_head", h, d.vocab_size, "model.embed_tokens.weight" if tie else None,
            module_type="other" if v2 else "linear")
    return ts.items


# ------------------------------------------------------------------------------------------------ MiniCPM
def _minicpm(config: Mapping[str, Any], d: Dims, source: str) -> list[Tensor]:
    """MiniCPM-1B/2B and MiniCPM4 (``MiniCPMForCausalLM``): a Llama module tree with muP scalars
    (``scale_emb``, ``dim_model_base``, ``scale_depth``: no parameters) and a head tied by default.

    Source: ``modeling_minicpm.py`` and ``configuration_minicpm.py`` (OpenBMB), read in the mirror
    github.com/wxthu/nas_tuner at 316794f27329462e7e899a75a126972a6e44074b (``MiniCPMAttention``: q/k/v/o with
    ``bias=config.attention_bias``, ``head_dim = hidden // heads``; ``MiniCPMMLP``: gate/up/down, no bias;
    ``MiniCPMDecoderLayer``: ``self_attn``, ``mlp``, ``input_layernorm``, ``post_attention_layernorm``; the
    InfLLMv2 sparse attention of MiniCPM4 adds ``CompressK``, which owns no parameter).

    Config defaults (``MiniCPMConfig``): ``tie_word_embeddings`` **True**, ``attention_bias`` False,
    ``num_key_value_heads`` = heads.

    Raises:
        ConfigError: a MiniCPM-MoE config (``num_experts``), whose expert layout is not modelled.
    """
    if config.get("num_experts"):
        raise ConfigError(f"{source}: num_experts {config.get('num_experts')!r}: MiniCPM-MoE's expert layout is not "
                          "modelled by vramplan's MiniCPM builder")
    h, hd = d.hidden_size, _head_dim(d, source, "minicpm")
    inter = _int(config, "intermediate_size", source, 11008)
    bias = _bool(config, "attention_bias", source, False)
    q_out, kv_out = d.num_heads * hd, d.num_kv_heads * hd
    ts = TensorCollector()
    ts.embedding("model.embed_tokens", d.vocab_size, h)
    for i in range(d.num_layers):
        p = f"model.layers.{i}"
        ts.linear(f"{p}.self_attn.q_proj", h, q_out, bias)
        ts.linear(f"{p}.self_attn.k_proj", h, kv_out, bias)
        ts.linear(f"{p}.self_attn.v_proj", h, kv_out, bias)
        ts.linear(f"{p}.self_attn.o_proj", q_out, h, bias)
        ts.linear(f"{p}.mlp.gate_proj", h, inter, False)
        ts.linear(f"{p}.mlp.up_proj", h, inter, False)
        ts.linear(f"{p}.mlp.down_proj", inter, h, False)
        ts.norm(f"{p}.input_layernorm", h)
        ts.norm(f"{p}.post_attention_layernorm", h)
    ts.norm("model.norm", h)
    tie = _bool(config, "tie_word_embeddings", source, True)
    ts.head("lm_head", h, d.vocab_size, "model.embed_tokens.weight" if tie else None)
    return ts.items


#: model_type -> builder, for families transformers cannot build without the checkpoint's own code
REMOTE_FAMILIES: dict[str, Builder] = {
    "qwen": _qwen,
    "internlm2": _internlm2,
    "chatglm": _chatglm,
    "baichuan": _baichuan,
    "minicpm": _minicpm,
}

#: the MLP activation of each family, for configs that do not name one (all SiLU-gated: ``QWenMLP``,
#: ``InternLM2MLP``, ChatGLM's ``swiglu``, Baichuan's and MiniCPM's ``hidden_act`` default "silu")
REMOTE_DEFAULT_ACT: dict[str, str] = {mt: "silu" for mt in REMOTE_FAMILIES}

__all__ = ["BAICHUAN2_VOCAB", "REMOTE_DEFAULT_ACT", "REMOTE_FAMILIES"]
