"""SGLang memory accounting, read from SGLang 0.5.23 (the PyPI wheel ``sglang-0.5.23``, Oct 2026).

The KV pool (``sglang/srt/mem_cache/kv_cache_configurator.py::_profile_available_bytes`` and
``sglang/srt/model_executor/pool_configurator.py``; the older single function was
``ModelRunner.profile_max_num_token``)::

    pre_model_load = free memory before the weights load (after the CUDA context and NCCL exist)
    available      = free_after_weights − pre_model_load × (1 − mem_fraction_static)
    cell_size      = kv_heads/tp × head_dim × layers × 2 (K, V) × element_size   (MLA: (kv_lora_rank +
                     qk_rope_head_dim) × layers × element_size)                   (_compute_cell_size)
    max_total_num_tokens = available // cell_size // page_size × page_size         (calculate_pool_sizes)

logged as ``KV Cache is allocated. #tokens: N, K size: X GB, V size: X GB`` where X is
``N × kv_heads/tp × head_dim × layers × element_size / 2**30`` (SGLang's "GB" are GiB).

``mem_fraction_static`` has no fixed default: SGLang picks it from the card's memory, TP size and
chunked-prefill size (``sglang/srt/arg_groups/memory_hook.py``), so it is asked for. The activations,
CUDA graphs and sampler live in the ``1 − mem_fraction_static`` share, outside this budget.
Approximated here: the CUDA context (``cuda_context_bytes``) and that the sliding-window pools of
Gemma/Mistral (``SWAKVPool``) are sized as full-attention layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SetupError
from ..profiles import Gpu
from ..shapes.spec import ModelSpec
from ..units import MiB
from .ranks import Component, check_tp, kv_dtype_bytes, kv_layers, parse_dtype, weights_per_rank

RELEASE = "sglang 0.5.23"

#: CUDA context + NCCL before the weights load: the gap between nvidia-smi's total and SGLang's first
#: ``Load weight begin. avail mem=`` line (about 0.5-1 GiB on H100s); pass the measured one.
CUDA_CONTEXT_BYTES = 512 * MiB
DEFAULT_PAGE_SIZE = 1


@dataclass(frozen=True)
class SglangPlan:
    """SGLang's KV-pool accounting for one configuration on one rank; sizes ``int`` bytes."""

    model: str
    gpu: str
    tp: int
    max_model_len: int
    mem_fraction_static: float
    kv_cache_dtype: str
    dtype: str
    quant: str
    page_size: int
    total_bytes: int
    pre_model_load_bytes: int
    components: tuple[Component, ...]
    cell_bytes: int                       # KV bytes per token, all layers, this rank
    max_total_num_tokens: int
    release: str = field(default=RELEASE)

    @property
    def weights_bytes(self) -> int:
        return sum(c.bytes for c in self.components if c.name.startswith("weights/"))

    @property
    def reserved_bytes(self) -> int:
        """``pre_model_load × (1 − mem_fraction_static)``: left for activations, graphs and the sampler."""
        return int(self.pre_model_load_bytes * (1 - self.mem_fraction_static))

    @property
    def available_kv_bytes(self) -> int:
        return self.pre_model_load_bytes - self.weights_bytes - self.reserved_bytes

    @property
    def k_size_bytes(self) -> int:
        """The ``K size`` of the log line (V is the same size)."""
        return self.max_total_num_tokens * self.cell_bytes // 2

    @property
    def max_concurrency(self) -> float:
        return self.max_total_num_tokens / self.max_model_len if self.max_model_len else 0.0

    @property
    def fits(self) -> bool:
        return self.max_total_num_tokens >= self.max_model_len


def cell_size(spec: ModelSpec, tp: int, kv_bytes: int) -> int:
    """``_compute_cell_size``: KV bytes of one token over every layer on one rank."""
    return sum(lyr.bytes_per_token for lyr in kv_layers(spec, tp, kv_bytes))


def plan_sglang(spec: ModelSpec, gpu: Gpu, *, mem_fraction_static: float, tp: int = 1,
                max_model_len: int | None = None, kv_cache_dtype: str = "auto", quant: str = "none",
                dtype: str = "auto", page_size: int = DEFAULT_PAGE_SIZE,
                cuda_context_bytes: int = CUDA_CONTEXT_BYTES) -> SglangPlan:
    """SGLang's ``max_total_num_tokens`` for ``spec`` on ``tp`` ranks of ``gpu``.

    Raises:
        SetupError: a value out of range (quoted, with the rule).
    """
    check_tp(spec, tp)
    if not 0 < mem_fraction_static < 1:
        raise SetupError(f"--mem-fraction-static must be in (0, 1), got {mem_fraction_static}")
    if page_size < 1:
        raise SetupError(f"--page-size must be >= 1, got {page_size}")
    L = int(spec.max_position_embeddings or 0) if max_model_len is None else int(max_model_len)
    if L < 1:
        raise SetupError(f"--max-model-len must be >= 1, got {max_model_len}")
    model_dtype = parse_dtype(dtype, spec)
    kvb = kv_dtype_bytes(kv_cache_dtype, model_dtype)
    pre = gpu.memory_bytes - cuda_context_bytes
    comps = list(weights_per_rank(spec, tp, model_dtype, quant))
    comps.append(Component("overhead/reserved", int(pre * (1 - mem_fraction_static)),
                           f"pre_model_load × (1 − mem_fraction_static={mem_fraction_static}): activations, "
                           "CUDA graphs and the sampler (kv_cache_configurator.py _profile_available_bytes)"))
    cell = cell_size(spec, tp, kvb)
    available = pre - sum(c.bytes for c in comps)
    tokens = max(available, 0) // cell // page_size * page_size if cell else 0
    return SglangPlan(model=spec.name, gpu=gpu.name, tp=tp, max_model_len=L,
                      mem_fraction_static=mem_fraction_static, kv_cache_dtype=kv_cache_dtype, dtype=model_dtype,
                      quant=quant, page_size=page_size, total_bytes=gpu.memory_bytes, pre_model_load_bytes=pre,
                      components=tuple(comps), cell_bytes=cell, max_total_num_tokens=tokens)
