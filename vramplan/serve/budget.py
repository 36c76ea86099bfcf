"""One GPU of a serving plan, whole: every byte of the card in one segment, for the ``--html`` page and tables.

The engines' own accounting (:mod:`.vllm`, :mod:`.sglang`) stops at the KV budget; the page draws the card
from 0 to its total, so the parts the engine leaves out are named here, each from the plan's own fields:

* vLLM: what ``gpu_memory_utilization`` keeps out of reach (``total − requested``), the non-KV components, the
  KV blocks (``num_blocks × bytes_per_block``) and what is left of the budget below one block.
* SGLang: what is in use before the weights load (``total − pre_model_load``: the CUDA context, NCCL), the
  weights and the ``1 − mem_fraction_static`` share, the KV pool (``max_total_num_tokens × cell``) and what is
  left below one page.

When the components exceed the budget (the engine refuses to start) the KV segments are 0 and the segments sum
to more than the card by the deficit, which :func:`budget_segments` does not hide: ``over_bytes``.
"""

from __future__ import annotations

from typing import Any

from .sglang import SglangPlan
from .vllm import VllmPlan


def budget_segments(plan: VllmPlan | SglangPlan) -> dict[str, Any]:
    """``{"segments": [{"name", "bytes"}, ...], "over_bytes": int}``: the card from 0 up, in the engine's order."""
    if isinstance(plan, VllmPlan):
        outside = ("outside/gpu_memory_utilization", plan.total_bytes - plan.requested_bytes)
        kv = ("kv_cache/blocks", plan.kv_cache_bytes)
    else:
        outside = ("outside/before_weights_load", plan.total_bytes - plan.pre_model_load_bytes)
        kv = ("kv_cache/pool", plan.max_total_num_tokens * plan.cell_bytes)
    available = plan.available_kv_bytes
    segments = [{"name": c.name, "bytes": c.bytes} for c in plan.components]
    segments.append({"name": kv[0], "bytes": kv[1]})
    segments.append({"name": "kv_cache/remainder", "bytes": max(available - kv[1], 0)})
    segments.append({"name": outside[0], "bytes": outside[1]})
    return {"segments": segments, "over_bytes": max(-available, 0)}
