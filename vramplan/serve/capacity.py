"""The smallest tensor-parallel size, and the smallest card, that serve a target concurrency.

For each card of the catalogue (``vramplan.profiles.gpu_catalogue``) and each TP size 1, 2, 4, 8 that the
model's heads allow, the engine's own accounting (:func:`~vramplan.serve.vllm.plan_vllm` or
:func:`~vramplan.serve.sglang.plan_sglang`) gives the concurrency at ``max_model_len``; the answer is the
smallest TP size that reaches the target on each card, and the cheapest setup: ``tp × usd_per_hour`` when
a price file gives the card's price (``vramplan.planner.load_prices``, as ``vramplan gpus --prices``), else
the least GPU memory in total (``tp × card memory``: the catalogue carries no prices); priced setups rank
before unpriced ones, ties go to fewer GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SetupError
from ..profiles import Gpu, gpu_catalogue
from ..shapes.spec import ModelSpec

TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Option:
    """One card at its smallest sufficient TP size."""

    gpu: Gpu
    tp: int
    plan: Any                      # VllmPlan or SglangPlan
    usd_per_hour: float | None = None   # tp × the card's price, when a price file gives one

    @property
    def total_memory_bytes(self) -> int:
        return self.tp * self.gpu.memory_bytes


def tp_sizes(spec: ModelSpec, sizes: Iterable[int] = TP_SIZES) -> list[int]:
    """TP sizes vLLM accepts for ``spec``: they divide the attention heads, and divide or are divided by
    the KV heads (``vramplan.serve.ranks.check_tp``)."""
    kv = spec.num_kv_heads
    return [t for t in sizes if spec.num_heads % t == 0 and (kv % t == 0 or t % kv == 0)]


def smallest_setup(spec: ModelSpec, target: int, plan: Callable[[Gpu, int], Any],
                   gpus: Iterable[Gpu] | None = None, *, require_bf16: bool = True,
                   prices: Mapping[str, float] | None = None) -> tuple[Option | None, list[Option]]:
    """The cheapest option that serves ``target`` sequences, and every card at its smallest TP size, cheapest
    first (:func:`cost`).

    ``plan(gpu, tp)`` returns an engine plan with ``max_concurrency`` and ``fits``. Cards without bf16
    support (unless ``require_bf16`` is false) and cards no TP size can serve are left out.

    Raises:
        SetupError: ``target`` < 1.
    """
    if target < 1:
        raise SetupError(f"--target-concurrency must be >= 1, got {target}")
    options: list[Option] = []
    for gpu in (gpu_catalogue() if gpus is None else gpus):
        if require_bf16 and not gpu.bf16:
            continue
        for tp in tp_sizes(spec):
            p = plan(gpu, tp)
            if p.fits and p.max_concurrency >= target:
                price = (prices or {}).get(gpu.name)
                options.append(Option(gpu, tp, p, None if price is None else tp * price))
                break
    options.sort(key=cost)
    return (options[0] if options else None), options


def cost(o: Option) -> tuple:
    """The ranking key: priced setups by ``tp × usd_per_hour``, then the rest by total memory; fewer GPUs
    break ties."""
    if o.usd_per_hour is not None:
        return (0, o.usd_per_hour, o.tp, o.gpu.name)
    return (1, o.total_memory_bytes, o.tp, o.gpu.name)
