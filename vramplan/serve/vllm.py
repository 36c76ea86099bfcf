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
  ``cdiv(L, block_size)`` for full attention, ``cdiv(min(window − 1 + max_num_batched_tokens, L),
  block_size) + 1`` for a sliding window (``SlidingWindowSpec.max_admission_blocks_per_request``);
  ``max_concurrency = num_blocks / Σ_groups blocks`` (``get_max_concurrency_for_kv_cache_config``), logged as
  ``GPU KV cache size: int(max_concurrency × L) tokens`` and ``Maximum concurrency for L tokens per
  request: X.XXx`` (``update_kv_cache_capacity``).

What is measured at runtime and estimated here: the activation peak (:func:`vramplan.serve.model.activation_peak`),
non-torch memory (default :data:`NON_TORCH_BYTES`) and the CUDA-graph pool (:func:`cudagraph_estimate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import SetupError
from ..profiles import Gpu
from ..shapes.spec import ModelSpec
from ..units import MiB, ceil_div
from .model import (
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
#: The ``vllm serve`` defaults on a data-centre GPU are larger (vllm/engine/arg_utils.py
#: ``_set_default_args`` picks them per usage context and card); these are the offline ``LLM`` ones.
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
#: vllm/config/compilation.py: graphs are captured up to ``max_cudagraph_capture_size`` (min(2·S, 512)).
MAX_CUDAGRAPH_CAPTURE = 512

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
                       max_num_batched_tokens: int) -> int:
    """Blocks one request of ``max_model_len`` tokens takes, summed over groups
    (``get_max_concurrency_for_kv_cache_config``; ``FullAttentionSpec`` / ``SlidingWindowSpec``
    ``max_memory_usage_bytes``; ``max_in_flight_tokens = max_num_batched_tokens`` with one batch in flight)."""
    total = 0
    for g in groups:
        if g.kind == "sliding" and g.sliding_window is not None:
            n = min(g.sliding_window - 1 + max_num_batched_tokens, max_model_len)
            total += ceil_div(n, block_size) + 1
        else:
            total += ceil_div(max_model_len, block_size)
    return total


def num_blocks(available_bytes: int, groups: tuple[KVGroup, ...]) -> int:
    """``get_kv_cache_config_from_groups``: ``available_memory // bytes_per_block`` (never negative)."""
    bpb = bytes_per_block(groups)
    return max(available_bytes // bpb, 0) if bpb else 0


# ---------------------------------------------------------------------------------------- CUDA graphs
def cudagraph_estimate(spec: ModelSpec, tp: int, max_num_seqs: int, dtype: str) -> int:
    """CUDA-graph pool, estimated: the graphs share one memory pool, which holds the largest captured
    batch's intermediates — the forward live set at ``min(2·max_num_seqs, 512)`` tokens.

    vLLM 0.33 measures it (``GPUModelRunner.profile_cudagraph_memory``) and subtracts it from the KV
    budget; the per-graph bookkeeping (a few MiB per captured size) is not counted here.
    """
    capture = min(2 * max_num_seqs, MAX_CUDAGRAPH_CAPTURE)
    return activation_peak(spec, tp, capture, 0, dtype).forward_bytes


# ------------------------------------------------------------------------------------------------- plan
def plan_vllm(spec: ModelSpec, gpu: Gpu, *, tp: int = 1, max_model_len: int | None = None,
              gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
              max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, max_num_batched_tokens: int | None = None,
              kv_cache_dtype: str = "auto", quant: str = "none", dtype: str = "auto",
              block_size: int = DEFAULT_BLOCK_SIZE, non_torch_bytes: int = NON_TORCH_BYTES,
              cudagraph_bytes: int | None = None, enforce_eager: bool = False,
              activation_bytes: int | None = None) -> VllmPlan:
    """vLLM's KV-cache budget, blocks and concurrency for ``spec`` on ``tp`` ranks of ``gpu``.

    Args:
        max_model_len: defaults to the model's ``max_position_embeddings`` (vllm ``ModelConfig``).
        max_num_batched_tokens: tokens of the profiling forward pass (chunked prefill's per-step budget);
            defaults to 8192.
        cudagraph_bytes: the measured CUDA-graph memory; ``None`` estimates it
            (:func:`cudagraph_estimate`), ``enforce_eager`` makes it 0.
        activation_bytes: the measured ``PyTorch activation peak``; ``None`` estimates it.

    Raises:
        SetupError: a value out of range (quoted, with the rule).
    """
    check_tp(spec, tp)
    if not 0 < gpu_memory_utilization <= 1:
        raise SetupError(f"--gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization}")
    L = int(spec.max_position_embeddings or 0) if max_model_len is None else int(max_model_len)
    if L < 1:
        raise SetupError(f"--max-model-len must be >= 1, got {max_model_len}")
    if max_num_seqs < 1:
        raise SetupError(f"--max-num-seqs must be >= 1, got {max_num_seqs}")
    if block_size < 1:
        raise SetupError(f"--block-size must be >= 1, got {block_size}")
    B = DEFAULT_MAX_NUM_BATCHED_TOKENS if max_num_batched_tokens is None else int(max_num_batched_tokens)
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
        cg = cudagraph_estimate(spec, tp, max_num_seqs, model_dtype)
    if cg:
        how = "as measured (given)" if cudagraph_bytes is not None else (
            f"estimated: forward live set at the largest captured size min(2·{max_num_seqs}, 512) tokens")
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
        blocks_per_request=blocks_per_request(groups, L, block_size, B))
