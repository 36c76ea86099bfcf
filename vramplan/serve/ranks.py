"""What a serving engine holds per tensor-parallel rank, engine-independent: weights, KV layer specs, the
activation peak of one forward pass. Pure Python (no torch); sizes are ``int`` bytes.

Tensor-parallel sharding follows vLLM's parallel layers (SGLang uses the same Megatron split):

* ``vllm/model_executor/layers/linear.py``: ``ColumnParallelLinear`` / ``QKVParallelLinear`` /
  ``MergedColumnParallelLinear`` split the output dimension (q, k, v, gate, up and their biases);
  ``QKVParallelLinear`` replicates KV heads when ``num_kv_heads < tp`` (``num_kv_head_replicas``), so each
  rank holds ``max(1, num_kv_heads // tp)`` KV heads. ``RowParallelLinear`` splits the input dimension
  (o, down) and keeps its bias whole on every rank.
* ``vllm/model_executor/layers/vocab_parallel_embedding.py``: ``VocabParallelEmbedding`` / ``ParallelLMHead``
  pad the vocabulary to a multiple of ``DEFAULT_VOCAB_PADDING_SIZE = 64`` (``pad_vocab_size``) and split it
  evenly across ranks (``divide(num_embeddings_padded, tp_size)``).
* ``vllm/model_executor/layers/fused_moe/layer.py``: without expert parallelism every rank holds every
  expert with its intermediate dimension split by ``tp``; the router (``gate``) is replicated.
* ``vllm/model_executor/layers/rotary_embedding/base.py``: ``RotaryEmbedding`` registers a
  ``cos_sin_cache`` buffer ``[max_position, rotary_dim]`` cast to the model dtype (one per distinct rope
  config, shared by all layers through ``get_rope``'s cache). It is loaded with the weights, so vLLM's
  "model weights" figure includes it (Llama-3.1-8B: 131,072 × 128 × 2 B = 32 MiB, which is exactly the gap
  between 8,030,261,248 params × 2 B = 14.9575 GiB and the published 14.9888).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..dtypes import BYTES, alloc
from ..errors import SetupError
from ..estimate.weights import quantizable, weight_component
from ..shapes.spec import ModelSpec, Tensor
from ..units import ceil_div

#: vllm/model_executor/layers/vocab_parallel_embedding.py DEFAULT_VOCAB_PADDING_SIZE
VOCAB_PADDING = 64

#: KV-cache dtypes: ``auto`` is the model dtype; ``fp8`` (e4m3/e5m2) stores one byte per element
#: (vllm/config/cache.py CacheDType; vllm/utils/torch_utils.py STR_DTYPE_TO_TORCH_DTYPE).
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bf16", "fp16")

#: Weight formats ``vramplan serve`` knows for the engines: the model dtype, or vLLM's online FP8
#: (``--quantization fp8``: ``vllm/model_executor/layers/quantization/fp8.py`` stores every Linear and fused
#: MoE weight as ``float8_e4m3fn`` with one fp32 ``weight_scale`` per logical weight; embeddings, the head
#: and norms stay in the model dtype).
QUANTS = ("none", "fp8")

#: Model dtypes the engines load (vllm/config/model.py ``_resolve_auto_dtype``: ``auto`` takes the
#: config's ``torch_dtype``, except float32 checkpoints, served in bfloat16 (Gemma 2/3) or float16).
DTYPES = ("auto", "bf16", "fp16")

Kind = Literal["full", "sliding", "mla"]


@dataclass(frozen=True)
class Component:
    """One line of a serving budget: ``weights/linear``, ``activations/profile_peak``, ``kv_cache``."""

    name: str
    bytes: int
    formula: str


def parse_dtype(dtype: str, spec: ModelSpec) -> str:
    """The dtype the engine loads the weights in (``auto``: the config's ``torch_dtype``; float32 -> bf16)."""
    if dtype not in DTYPES:
        raise SetupError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    cfg_dtype = str(spec.config.get("torch_dtype") or spec.config.get("dtype") or "bfloat16")
    return "fp16" if cfg_dtype in ("float16", "half") else "bf16"


def kv_dtype_bytes(kv_cache_dtype: str, model_dtype: str) -> int:
    """Bytes per stored K or V element (``--kv-cache-dtype``)."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise SetupError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
    if kv_cache_dtype == "auto":
        return BYTES[model_dtype]
    return 1 if kv_cache_dtype.startswith("fp8") else 2


def check_tp(spec: ModelSpec, tp: int) -> None:
    """vLLM refuses a TP size that does not divide the attention heads (``vllm/config/model.py``
    ``verify_with_parallel_config``: "Total number of attention heads must be divisible by tensor parallel
    size"); KV heads must divide or be divided by it (``QKVParallelLinear``)."""
    if tp < 1:
        raise SetupError(f"--tp must be >= 1, got {tp}")
    if spec.num_heads % tp:
        raise SetupError(f"--tp {tp} does not divide the {spec.num_heads} attention heads of {spec.name}: "
                         "choose a divisor")
    kv = spec.num_kv_heads
    if kv % tp and tp % kv:
        raise SetupError(f"--tp {tp} and the {kv} KV heads of {spec.name} do not divide one another: "
                         "choose a TP size that divides or is a multiple of the KV heads")


def kv_heads_per_rank(spec: ModelSpec, tp: int) -> int:
    """KV heads one rank stores: ``max(1, num_kv_heads // tp)`` (``QKVParallelLinear.num_kv_head_replicas``)."""
    return max(1, spec.num_kv_heads // tp)


# ----------------------------------------------------------------------------------------------- weights
def _owner_role(t: Tensor, spec: ModelSpec, roles: Mapping[str, str]) -> str:
    if t.role != "bias":
        return t.role
    return roles.get(t.module, "other")


def rank_numel(t: Tensor, role: str, spec: ModelSpec, tp: int) -> int:
    """Elements of ``t`` on one rank (the module docstring gives the rules)."""
    n = t.numel
    if tp == 1:
        if role in ("embedding", "lm_head") and len(t.shape) == 2:
            return (ceil_div(t.shape[0], VOCAB_PADDING) * VOCAB_PADDING) * t.shape[1]
        return n
    hd = spec.head_dim
    kv_rank = kv_heads_per_rank(spec, tp)
    is_bias = t.role == "bias"
    if role in ("embedding", "lm_head") and len(t.shape) == 2:
        return (ceil_div(t.shape[0], VOCAB_PADDING) * VOCAB_PADDING) // tp * t.shape[1]
    if role in ("attn_k", "attn_v"):
        per_out = n // t.shape[0] if not is_bias else 1
        return kv_rank * hd * per_out
    if role == "attn_qkv":
        per_out = n // t.shape[0] if not is_bias else 1
        rows = (spec.num_heads // tp + 2 * kv_rank) * hd
        return rows * per_out
    if role in ("attn_o", "mlp_down", "moe_expert_down", "shared_expert_down"):
        return n if is_bias else n // tp      # RowParallelLinear: input split, bias whole
    if role in ("attn_q", "mlp_gate", "mlp_up", "mlp_gate_up", "moe_experts_gate_up", "moe_experts_down",
                "moe_expert_gate", "moe_expert_up", "shared_expert_gate", "shared_expert_up"):
        return n // tp
    return n                                  # norms, routers, position embeddings: replicated


def rope_cache_bytes(spec: ModelSpec, dtype: str) -> int:
    """``cos_sin_cache`` of ``RotaryEmbedding``: ``max_position × rotary_dim`` in the model dtype.

    ``rotary_dim = head_dim × partial_rotary_factor``; models with learned positions (gpt2, opt) have none.
    Gemma 3 builds two ropes (local and global), each its own cache.
    """
    if any(t.role == "position_embedding" for t in spec.tensors):
        return 0
    cfg = spec.config
    factor = float(cfg.get("partial_rotary_factor") or cfg.get("rotary_pct") or 1.0)
    rotary_dim = int(spec.head_dim * factor)
    max_pos = int(spec.max_position_embeddings or cfg.get("seq_length") or 2048)
    n_ropes = 2 if spec.model_type in ("gemma3", "gemma3_text") else 1
    return n_ropes * alloc(max_pos * rotary_dim * BYTES[dtype])


#: MoE families whose router (``GateLinear``) vLLM builds with the model's ``quant_config`` (``qwen3_moe.py``);
#: Mixtral's and Qwen2-MoE's get none and stay in the model dtype, as do shared-expert gates.
_QUANTIZED_ROUTERS = ("qwen3_moe",)


def _fp8_quantized(t: Tensor, spec: ModelSpec) -> bool:
    """vLLM's online FP8 converts every ``LinearBase`` weight given the quant config and the fused experts."""
    if t.param_name == "bias" or t.role == "shared_expert_router":
        return False
    if t.role == "moe_router":
        return spec.model_type in _QUANTIZED_ROUTERS
    return quantizable(t, spec) or t.module_type == "experts"


def weights_per_rank(spec: ModelSpec, tp: int, dtype: str, quant: str = "none") -> tuple[Component, ...]:
    """Weight bytes on one TP rank, by component, with each allocation rounded as the caching allocator does.

    Component names are :func:`vramplan.estimate.weights.weight_component`'s; quantized weights (``fp8``)
    are ``weights/quantized`` and their scales ``weights/quant_constants``; the rope cache is
    ``weights/rope_cache``.
    """
    if quant not in QUANTS:
        raise SetupError(f"--quant must be one of {', '.join(QUANTS)} for serving, got {quant!r}")
    roles = {t.module: t.role for t in spec.tensors if t.role != "bias"}
    out: dict[str, int] = {}
    counts: dict[str, int] = {}
    for t in spec.tensors:
        if t.tied_to is not None:
            continue
        role = _owner_role(t, spec, roles)
        n = rank_numel(t, role, spec, tp)
        if quant == "fp8" and _fp8_quantized(t, spec):
            comp, nbytes = "weights/quantized", n
            out["weights/quant_constants"] = out.get("weights/quant_constants", 0) + alloc(4)
        else:
            comp, nbytes = weight_component(t), n * BYTES[dtype]
        out[comp] = out.get(comp, 0) + alloc(nbytes)
        counts[comp] = counts.get(comp, 0) + n
    rope = rope_cache_bytes(spec, dtype)
    if rope:
        out["weights/rope_cache"] = rope
    where = "per TP rank" if tp > 1 else "on the one GPU"
    comps = []
    for name, b in out.items():
        if name == "weights/rope_cache":
            f = (f"RotaryEmbedding.cos_sin_cache: max_position {spec.max_position_embeddings:,} × rotary_dim "
                 f"in {dtype} (vllm rotary_embedding/base.py)")
        elif name == "weights/quant_constants":
            f = "one fp32 weight_scale per fp8 weight (vllm quantization/fp8.py Fp8LinearMethod)"
        elif name == "weights/quantized":
            f = f"{counts[name]:,} float8_e4m3fn elements {where} (vllm quantization/fp8.py)"
        elif name in ("weights/embeddings", "weights/lm_head"):
            f = (f"{counts[name]:,} elements in {dtype} {where}: the vocabulary padded to a multiple of 64 and "
                 "split across ranks (VocabParallelEmbedding / ParallelLMHead)")
        elif name == "weights/norms":
            f = f"{counts[name]:,} elements in {dtype}, whole on every rank"
        else:
            f = (f"{counts[name]:,} elements in {dtype} {where} (column-parallel outputs and row-parallel "
                 "inputs split by TP, KV heads replicated below one per rank; linear.py)")
        comps.append(Component(name, b, f))
    return tuple(comps)


# ---------------------------------------------------------------------------------------------- KV specs
@dataclass(frozen=True)
class LayerKV:
    """The KV cache of one attention layer on one rank, per token."""

    layer: int
    kind: Kind
    bytes_per_token: int          # K and V (MLA: the one latent vector) of this layer on this rank
    sliding_window: int | None = None


def mla_dims(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """``(kv_lora_rank, qk_rope_head_dim)`` of a DeepSeek-V2/V3 MLA config, else ``None``."""
    r, p = config.get("kv_lora_rank"), config.get("qk_rope_head_dim")
    if isinstance(r, int) and isinstance(p, int) and r > 0:
        return r, p
    return None


def layer_types(spec: ModelSpec) -> list[str]:
    """``full_attention`` / ``sliding_attention`` per layer, as the engines assign them.

    vLLM 0.33's ``gemma2.py``, ``gemma3.py`` and ``llama.py`` read ``config.layer_types``; where the config
    file has none, transformers fills it (``Gemma2Config``: layer ``i`` slides when ``(i + 1) % 2``;
    ``Gemma3TextConfig``: unless ``(i + 1) % sliding_window_pattern == 0``). Any other model with a
    ``sliding_window`` and no ``layer_types`` (Mistral-7B-v0.1, Phi-3-mini-4k) slides on every layer:
    ``Attention`` takes the model-level window (``cache_config.sliding_window``,
    ``ModelConfig.get_sliding_window``; ``vllm/model_executor/layers/attention/attention.py``).
    """
    cfg, n = spec.config, spec.num_layers
    lt = cfg.get("layer_types")
    if isinstance(lt, list) and len(lt) == n:
        return [str(x) for x in lt]
    if spec.sliding_window is None:
        return ["full_attention"] * n
    if spec.model_type == "gemma2":
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    if spec.model_type in ("gemma3", "gemma3_text"):
        pattern = int(cfg.get("sliding_window_pattern") or 6)
        return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n)]
    return ["sliding_attention"] * n


def kv_layers(spec: ModelSpec, tp: int, kv_bytes: int) -> list[LayerKV]:
    """Every attention layer's KV bytes per token on one rank.

    Standard attention: ``2 (K, V) × kv_heads_per_rank × head_dim × kv_bytes``. MLA (DeepSeek-V2/V3):
    one latent of ``kv_lora_rank + qk_rope_head_dim`` per token and layer, replicated on every rank
    (vllm ``MLAAttentionSpec``: ``num_kv_heads = 1``, ``head_size = kv_lora_rank + qk_rope_head_dim``,
    ``head_size_v = 0``).
    """
    mla = mla_dims(spec.config)
    if mla is not None:
        per = (mla[0] + mla[1]) * kv_bytes
        return [LayerKV(i, "mla", per) for i in range(spec.num_layers)]
    per = 2 * kv_heads_per_rank(spec, tp) * spec.head_dim * kv_bytes
    out = []
    for i, kind in enumerate(layer_types(spec)):
        if kind == "sliding_attention":
            out.append(LayerKV(i, "sliding", per, spec.sliding_window))
        else:
            out.append(LayerKV(i, "full", per))
    return out


# ------------------------------------------------------------------------------------- activation peak
@dataclass(frozen=True)
class ActivationPeak:
    """The transient peak of one dummy forward + sampler pass on one rank, by where it happens."""

    forward_bytes: int        # largest live set inside one decoder layer at ``tokens``
    sampler_bytes: int        # hidden states kept + logits and sampler temporaries of ``rows`` sequences
    formula: str

    @property
    def bytes(self) -> int:
        return max(self.forward_bytes, self.sampler_bytes)


def activation_peak(spec: ModelSpec, tp: int, tokens: int, rows: int, dtype: str) -> ActivationPeak:
    """Approximate transient peak of the engines' profiling run (``tokens`` = ``max_num_batched_tokens``,
    ``rows`` = ``min(max_num_seqs, tokens)`` sequences sampled), from the live tensors of one layer.

    Forward (vLLM ``LlamaMLP.forward``: ``gate_up`` stays referenced while ``act_fn`` and ``down_proj`` run):
    the hidden states and the residual (``2·T·h``), the ``gate_up`` output (``2·T·i/tp``), the activation
    (``T·i/tp``) and the ``down_proj`` output (``T·h``), all in the model dtype. MoE layers
    (``fused_moe.py``: ``intermediate_cache1/2/3``) hold ``T·k·2I/tp``, ``T·k·I/tp`` and ``T·k·h``.
    The attention block (``qkv``, its output, ``o_proj``) is smaller for every bundled model and is
    taken as a lower bound only.

    Sampler (``_dummy_sampler_run``: logits of ``rows`` sequences with top-k and top-p on, run a second
    time through ``TopKTopPSampler.forward_native``): the last hidden states ``T·h`` stay alive, then the
    logits ``rows·V`` in the model dtype, their fp32 copy (``Sampler.forward``), the fp32 probabilities
    (top-k/top-p masks the logits in place, ``apply_top_k_top_p_triton``) and the fp32 exponential noise of
    ``random_sample``: ``rows·V·(b + 4 + 4 + 4)`` (``vllm/v1/sample/sampler.py``,
    ``ops/topk_topp_sampler.py``).

    Approximated: fused kernels and torch.compile can free or fuse some of these; attention-backend
    workspaces (FlashInfer, FlashMLA) are not counted.
    """
    b = BYTES[dtype]
    h = spec.hidden_size
    T = tokens
    q_rank = spec.num_heads // tp * spec.head_dim
    kv_rank = kv_heads_per_rank(spec, tp) * spec.head_dim
    attn = T * b * (2 * h + (q_rank + 2 * kv_rank) + q_rank + h)
    if spec.is_moe:
        k, im = spec.experts_per_token, spec.moe_intermediate_size
        mlp = T * b * (2 * h + k * 2 * im // tp + k * im // tp + k * h)
        what = (f"MoE: T·b·(2h + k·2I/tp + k·I/tp + k·h) with T={T:,}, h={h:,}, k={k}, I={im:,}")
    else:
        i = spec.intermediate_size
        mult = 3 if spec.mlp_gated else 2
        mlp = T * b * (3 * h + mult * i // tp)
        what = f"MLP: T·b·(3h + {mult}i/tp) with T={T:,}, h={h:,}, i={i:,}"
    forward = max(attn, mlp)
    vocab = ceil_div(spec.vocab_size, VOCAB_PADDING) * VOCAB_PADDING
    sampler = T * h * b + rows * vocab * (b + 4 + 4 + 4)
    formula = (f"max(forward {what}, tp={tp}; sampler T·h·b + rows·V·(b+12) with rows={rows:,}, "
               f"V={vocab:,}) — approximated from the live tensors of one layer")
    return ActivationPeak(forward, sampler, formula)
