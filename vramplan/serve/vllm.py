"""vLLM (V1 engine) memory accounting, read from vLLM 0.33.0 (the PyPI wheel ``vllm-0.33.0``, Nov 2026).

The budget (``vllm/v1/worker/gpu_worker.py::Worker.determine_available_memory`` and
``vllm/v1/worker/utils.py::request_memory``)::

    requested   = ceil(total_memory × gpu_memory_utilization)
    non_kv      = total_consumed + transient_peak_headroom          (utils/mem_utils.py::memory_profiling)
    available   = requested − non_kv − cudagraph_memory_estimate    (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1)

``total_consumed`` is the free-memory drop from the worker's first snapshot (taken after the CUDA context
exists) to after the profiling run: the weights, non-torch memory (NCCL, custom all-reduce buffers,
cuBLAS workspaces) and anything the profile run keeps; ``transient_peak_headroom`` is torch's peak minus
what stays allocated: the activation peak of ``profile_run`` (``gpu_model_runner.py``: ``_dummy_run`` at
``max_num_batched_tokens`` tokens, then ``_dummy_sampler_run`` on ``min(max_num_seqs, tokens)`` rows).
The CUDA context itself is outside both (created before the first snapshot) but inside ``requested``.

The KV cache (``vllm/v1/kv_cache_interface.py``, ``vllm/v1/core/kv_cache_planning.py``,
``vllm/v1/core/kv_cache_utils.py``):

* page of one layer: ``AttentionSpec.page_size_bytes = num_kv_heads × block_size × (head_size +
  head_size_v) × dtype_size`` — ``2 × block_size × kv_heads/tp × head_dim × bytes`` (MLA: ``block_size ×
  (kv_lora_rank + qk_rope_head_dim) × bytes``); ``block_size`` defaults to 16 (``CacheConfig``);
* groups (``_get_kv_cache_groups_uniform_page_size``): layers of one kind form a group; a hybrid model's
  kinds are split into groups of ``min`` layers per kind (``max`` when max < 1.5 × min), padded;
* ``num_blocks = available // bytes_per_block`` with ``bytes_per_block`` the largest group's sum of pages
  (``_get_kv_cache_bytes_per_block``; ``get_kv_cache_config_from_groups``);
* a request at ``max_model_len`` needs, per group, ``cdiv(max_memory_usage_bytes, page_size)`` blocks:
  ``cdiv(L, block_size)`` for full attention, ``cdiv(min(window − 1 + max_in_flight_tokens, L),
  block_size) + 1`` for a sliding window (``max_in_flight_tokens = 2 × max_num_batched_tokens`` with
  async scheduling, the default) (``SlidingWindowSpec.max_admission_blocks_per_request``);
  ``max_concurrency = num_blocks / Σ_groups blocks`` (``get_max_concurrency_for_kv_cache_config``), logged as
  ``GPU KV cache size: int(max_concurrency × L) tokens`` and ``Maximum concurrency for L tokens per
  request: X.XXx`` (``update_kv_cache_capacity``).

What is measured at runtime and estimated here: the activation peak (:func:`vramplan.serve.ranks.activation_peak`),
non-torch memory (default :data:`NON_TORCH_BYTES`) and the CUDA-graph pool (:func:`cudagraph_estimate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import SetupError
from ..profiles import Gpu
from ..shapes.spec import ModelSpec
from ..units import GiB, MiB, ceil_div
from .ranks import (
    Component,
    LayerKV,
    activation_peak,
    check_tp,
    kv_dtype_bytes,
    kv_layers,
    parse_dtype,
    weights_per_rank,
)

RELEASE = "vllm 0.33.0"

#: vllm/config/cache.py CacheConfig.gpu_memory_utilization default (0.9 before 0.2x).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
#: CacheConfig.DEFAULT_BLOCK_SIZE (FlashAttention / FlashInfer backends; FlashMLA uses 64).
DEFAULT_BLOCK_SIZE = 16
#: ``vllm serve`` (usage context OPENAI_API_SERVER) defaults by card
#: (vllm/engine/arg_utils.py ``_get_default_max_num_seqs_and_batched_tokens``): >= 160 GiB (B200):
#: 16384 tokens / 1024 sequences; >= 70 GiB and not an A100 (H100, H200): 8192 / 1024; others: 2048 / 256.
def serve_defaults(gpu: Gpu) -> tuple[int, int]:
    """``(max_num_seqs, max_num_batched_tokens)`` that ``vllm serve`` picks on ``gpu``."""
    mem = gpu.memory_bytes
    if mem >= 160 * GiB:
        return 1024, 16384
    if mem >= 70 * GiB and "a100" not in gpu.name.lower():
        return 1024, 8192
    return 256, 2048


#: vllm/config/vllm.py: graphs are captured up to ``min(2 × max_num_seqs, 512)`` tokens (1024 on
#: Blackwell data-centre parts, compute capability 10.x), at the sizes
#: ``[1, 2, 4] + range(8, 256, 8) + range(256, max + 1, 16)`` (vllm/config/compilation.py).
def cudagraph_capture_sizes(max_num_seqs: int, gpu: Gpu) -> list[int]:
    ceiling = 1024 if gpu.compute_capability.startswith("10") else 512
    top = min(2 * max_num_seqs, ceiling)
    sizes = [1, 2, 4] + list(range(8, 256, 8)) + list(range(256, top + 1, 16))
    return [n for n in sizes if n <= top]


#: GPUModelRunner.profile_cudagraph_memory counts at least 1 MiB per graph beyond the first of each mode.
PER_GRAPH_BYTES = MiB

#: Non-torch memory after profiling, measured by vLLM and printed as ``non_torch_memory takes X GiB``:
#: 0.35 GiB (RTX 3090, TP 1, vllm-project/vllm#10517), 0.25 GiB (2 × RTX 4090, TP 2, #13061), 0.20 GiB
#: (TP 4, #14447). 256 MiB is the default; pass the measured figure with ``--non-torch-memory``.
NON_TORCH_BYTES = 256 * MiB


@dataclass(frozen=True)
class KVGroup:
    """A KV-cache group: layers sharing one block table (padding layers count towards ``size``)."""

    kind: str
    layers: tuple[int, ...]
    page_bytes: int
    sliding_window: int | None
    size: int                      # layers per group after padding: every group has the same size


@dataclass(frozen=True)
class VllmPlan:
    """vLLM's accounting for one configuration on one rank; all sizes ``int`` bytes."""

    model: str
    gpu: str
    tp: int
    max_model_len: int
    gpu_memory_utilization: float
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    dtype: str
    kv_cache_dtype: str
    quant: str
    total_bytes: int
    requested_bytes: int
    components: tuple[Component, ...]          # non-KV memory, in the order vLLM accounts it
    groups: tuple[KVGroup, ...]
    bytes_per_block: int
    num_blocks: int
    blocks_per_request: int
    release: str = field(default=RELEASE)

    @property
    def weights_bytes(self) -> int:
        return sum(c.bytes for c in self.components if c.name.startswith("weights/"))

    @property
    def non_kv_bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    @property
    def available_kv_bytes(self) -> int:
        return self.requested_bytes - self.non_kv_bytes

    @property
    def kv_cache_bytes(self) -> int:
        """What the KV tensors take: ``num_blocks × bytes_per_block``."""
        return self.num_blocks * self.bytes_per_block

    @property
    def max_concurrency(self) -> float:
        return self.num_blocks / self.blocks_per_request if self.blocks_per_request else 0.0

    @property
    def kv_cache_tokens(self) -> int:
        """``GPU KV cache size: N tokens``: ``int(max_concurrency × max_model_len)``."""
        return int(self.max_concurrency * self.max_model_len)

    @property
    def fits(self) -> bool:
        """vLLM starts only if one request of ``max_model_len`` fits (``check_enough_kv_cache_memory``)."""
        return self.num_blocks >= self.blocks_per_request > 0


# ------------------------------------------------------------------------------------------------- KV
def page_bytes(layer: LayerKV, block_size: int) -> int:
    """``AttentionSpec.page_size_bytes`` of one layer: ``block_size`` tokens of its K and V."""
    return layer.bytes_per_token * block_size


def kv_groups(layers: list[LayerKV], block_size: int) -> tuple[KVGroup, ...]:
    """vLLM's KV-cache groups (``kv_cache_planning.py::_get_kv_cache_groups_uniform_page_size``).

    One kind (all full, all sliding with one window, all MLA): one group of every layer. Several kinds:
    ``group_size = min`` layers of a kind (``max`` when ``max < 1.5·min``), each kind split into
    ``cdiv(n, group_size)`` groups taking ``layers[i::num_groups]``.
    """
    if not layers:
        return ()
    buckets: dict[tuple[str, int | None, int], list[int]] = {}
    for lyr in layers:
        buckets.setdefault((lyr.kind, lyr.sliding_window, lyr.bytes_per_token), []).append(lyr.layer)
    if len({k[2] for k in buckets}) > 1:
        raise SetupError("layers with different KV bytes per token need vLLM's non-uniform page planner, "
                         "which vramplan does not model")
    if len(buckets) == 1:
        (kind, window, per), names = next(iter(buckets.items()))
        return (KVGroup(kind, tuple(names), per * block_size, window, len(names)),)
    sizes = [len(v) for v in buckets.values()]
    group_size = min(sizes)
    if max(sizes) < min(sizes) * 1.5:
        group_size = max(sizes)
    out: list[KVGroup] = []
    for (kind, window, per), names in buckets.items():
        n_groups = ceil_div(len(names), group_size)
        for i in range(n_groups):
            out.append(KVGroup(kind, tuple(names[i::n_groups]), per * block_size, window, group_size))
    return tuple(out)


def bytes_per_block(groups: tuple[KVGroup, ...]) -> int:
    """``_get_kv_cache_bytes_per_block``: the largest group's pages (groups alias the same blocks)."""
    return max((g.page_bytes * g.size for g in groups), default=0)


def blocks_per_request(groups: tuple[KVGroup, ...], max_model_len: int, block_size: int,
                       max_in_flight_tokens: int) -> int:
    """Blocks one request of ``max_model_len`` tokens takes, summed over groups
    (``get_max_concurrency_for_kv_cache_config``; ``FullAttentionSpec`` / ``SlidingWindowSpec``
    ``max_memory_usage_bytes``; ``VllmConfig.max_in_flight_tokens = max_concurrent_batches ×
    max_num_batched_tokens``)."""
    total = 0
    for g in groups:
        if g.kind == "sliding" and g.sliding_window is not None:
            n = min(g.sliding_window - 1 + max_in_flight_tokens, max_model_len)
            total += ceil_div(n, block_size) + 1
        else:
            total += ceil_div(max_model_len, block_size)
    return total


def num_blocks(available_bytes: int, groups: tuple[KVGroup, ...]) -> int:
    """``get_kv_cache_config_from_groups``: ``available_memory // bytes_per_block`` (never negative)."""
    bpb = bytes_per_block(groups)
    return max(available_bytes // bpb, 0) if bpb else 0


# ---------------------------------------------------------------------------------------- CUDA graphs
def cudagraph_estimate(spec: ModelSpec, tp: int, max_num_seqs: int, dtype: str, gpu: Gpu) -> int:
    """CUDA-graph memory as vLLM 0.33 estimates it (``GPUModelRunner.profile_cudagraph_memory``, subtracted
    from the KV budget since v0.21 with ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1``): the first capture
    of each mode (the shared graph pool, sized by the largest capture size) plus the second capture's
    increment for each further graph, at least 1 MiB each, over the two default modes (FULL decode and
    PIECEWISE). Estimated here: the pool as the forward live set at the largest size, 1 MiB per further
    graph. vLLM's own figure is measured and varies (vllm-project/vllm#45178, #50780): pass it with
    ``cudagraph_bytes`` (its log's ``Estimated CUDA graph memory: X GiB total``).
    """
    sizes = cudagraph_capture_sizes(max_num_seqs, gpu)
    pool = activation_peak(spec, tp, sizes[-1], 0, dtype).forward_bytes
    return pool + 2 * (len(sizes) - 1) * PER_GRAPH_BYTES


# --------------------------------------------------------------------------------------- max_model_len
#: rope types whose max_position_embeddings is already the scaled length (vllm/config/model.py
#: ``_get_and_verify_max_len``)
_ROPE_PRESCALED = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")


def derived_max_model_len(spec: ModelSpec) -> int:
    """The longest ``max_model_len`` vLLM accepts without ``VLLM_ALLOW_LONG_MAX_MODEL_LEN``, and its default
    (``vllm/config/model.py::_get_and_verify_max_len``): ``max_position_embeddings`` (else ``n_positions``,
    ``max_seq_len``, ``seq_length``; 2048 when none), times the rope ``factor`` for rope types that do not
    already include it (not for Gemma 3, whose 128K is already scaled)."""
    cfg = spec.config
    n = next((cfg[k] for k in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
              if isinstance(cfg.get(k), int)), None) or spec.max_position_embeddings or 2048
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if isinstance(rope, dict) and "gemma3" not in spec.model_type:
        kind = rope.get("rope_type") or rope.get("type") or "default"
        factor = rope.get("factor")
        if kind not in _ROPE_PRESCALED and kind != "default" and isinstance(factor, (int, float)):
            n = int(n * factor)
    return int(n)


# ------------------------------------------------------------------------------------------------- plan
def plan_vllm(spec: ModelSpec, gpu: Gpu, *, tp: int = 1, max_model_len: int | None = None,
              gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
              max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None,
              kv_cache_dtype: str = "auto", quant: str = "none", dtype: str = "auto",
              block_size: int = DEFAULT_BLOCK_SIZE, non_torch_bytes: int = NON_TORCH_BYTES,
              cudagraph_bytes: int | None = None, enforce_eager: bool = False,
              activation_bytes: int | None = None, async_scheduling: bool = True) -> VllmPlan:
    """vLLM's KV-cache budget, blocks and concurrency for ``spec`` on ``tp`` ranks of ``gpu``.

    Args:
        max_model_len: defaults to, and may not exceed, :func:`derived_max_model_len`.
        max_num_seqs, max_num_batched_tokens: sequences and tokens per step; the profiling forward pass runs
            ``max_num_batched_tokens`` tokens. ``None``: what ``vllm serve`` picks on ``gpu``
            (:func:`serve_defaults`).
        cudagraph_bytes: the measured CUDA-graph memory; ``None`` estimates it
            (:func:`cudagraph_estimate`), ``enforce_eager`` makes it 0.
        activation_bytes: the measured ``PyTorch activation peak``; ``None`` estimates it.
        async_scheduling: vLLM 0.33 turns it on unless an option rules it out (``VllmConfig``); two batches
            are then in flight (``max_concurrent_batches``), so a sliding-window request holds
            ``window − 1 + 2 × max_num_batched_tokens`` tokens at most.

    Raises:
        SetupError: a value out of range (quoted, with the rule).
    """
    check_tp(spec, tp)
    if not 0 < gpu_memory_utilization <= 1:
        raise SetupError(f"--gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization}")
    derived = derived_max_model_len(spec)
    L = derived if max_model_len is None else int(max_model_len)
    if L < 1:
        raise SetupError(f"--max-model-len must be >= 1, got {max_model_len}")
    if L > derived:
        raise SetupError(f"--max-model-len {L} is longer than {spec.name}'s {derived:,} positions, which vLLM "
                         "refuses (unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1): lower it")
    default_seqs, default_tokens = serve_defaults(gpu)
    max_num_seqs = default_seqs if max_num_seqs is None else int(max_num_seqs)
    if max_num_seqs < 1:
        raise SetupError(f"--max-num-seqs must be >= 1, got {max_num_seqs}")
    if block_size < 1:
        raise SetupError(f"--block-size must be >= 1, got {block_size}")
    B = default_tokens if max_num_batched_tokens is None else int(max_num_batched_tokens)
    if B < 1:
        raise SetupError(f"--max-num-batched-tokens must be >= 1, got {max_num_batched_tokens}")
    model_dtype = parse_dtype(dtype, spec)
    kvb = kv_dtype_bytes(kv_cache_dtype, model_dtype)

    total = gpu.memory_bytes
    requested = math.ceil(total * gpu_memory_utilization)
    comps = list(weights_per_rank(spec, tp, model_dtype, quant))
    comps.append(Component("overhead/non_torch", non_torch_bytes,
                           "NCCL, custom all-reduce and cuBLAS memory outside torch (measured by vLLM as "
                           "non_torch_memory; default from published logs)"))
    rows = min(max_num_seqs, B)
    if activation_bytes is None:
        act = activation_peak(spec, tp, B, rows, model_dtype)
        comps.append(Component("activations/profile_peak", act.bytes,
                               f"profile_run at max_num_batched_tokens={B:,}: {act.formula}"))
    else:
        comps.append(Component("activations/profile_peak", activation_bytes, "as measured (given)"))
    if enforce_eager:
        cg = 0
    elif cudagraph_bytes is not None:
        cg = cudagraph_bytes
    else:
        cg = cudagraph_estimate(spec, tp, max_num_seqs, model_dtype, gpu)
    if cg:
        n = len(cudagraph_capture_sizes(max_num_seqs, gpu))
        how = "as measured (given)" if cudagraph_bytes is not None else (
            f"estimated: the pool as the forward live set at the largest of {n} capture sizes "
            f"({cudagraph_capture_sizes(max_num_seqs, gpu)[-1]} tokens) + 1 MiB per further graph of 2 modes")
        comps.append(Component("overhead/cuda_graphs", cg,
                               f"CUDA-graph pool subtracted by vLLM 0.33 (profile_cudagraph_memory); {how}"))

    groups = kv_groups(kv_layers(spec, tp, kvb), block_size)
    non_kv = sum(c.bytes for c in comps)
    n = num_blocks(requested - non_kv, groups)
    return VllmPlan(
        model=spec.name, gpu=gpu.name, tp=tp, max_model_len=L, gpu_memory_utilization=gpu_memory_utilization,
        max_num_seqs=max_num_seqs, max_num_batched_tokens=B, block_size=block_size, dtype=model_dtype,
        kv_cache_dtype=kv_cache_dtype, quant=quant, total_bytes=total, requested_bytes=requested,
        components=tuple(comps), groups=groups, bytes_per_block=bytes_per_block(groups), num_blocks=n,
        blocks_per_request=blocks_per_request(groups, L, block_size, (2 if async_scheduling else 1) * B))
