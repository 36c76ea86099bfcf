"""The allocator section of a plan: the run-level reserved peak for ``--lengths`` / ``--alloc-conf``, the
reason it differs from allocated, and the ranked fixes (what ``vramplan plan`` prints under "allocator").

Computes only; the CLI renders :meth:`AllocatorPlan.to_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .conf import parse_alloc_conf
from .lengths import (
    BATCHINGS,
    LONG_SAMPLES,
    Fix,
    LengthDist,
    LengthsError,
    RunReserved,
    parse_lengths,
    reserved_fixes,
)

#: steps replayed for a plan unless ``--lengths ...@steps=N`` says otherwise. Without a card the reserved peak
#: keeps rising while ever longer batches arrive (qwen3-0.6b, alpaca, batch 4, seed 0: 1.53x allocated at 25
#: steps, 1.62x at 100, 2.00x at 200, 2.27x at 400); on a card it is bounded by the card and the question is
#: whether the run OOMs first.
PLAN_STEPS = 200
GiB = 1 << 30


def parse_lengths_option(text: str | None) -> tuple[LengthDist | None, str, str]:
    """``--lengths SOURCE[@RULE,...]``: the distribution and the batching rules. RULEs: one of
    :data:`~.lengths.BATCHINGS` (default ``longest``) and one of :data:`~.lengths.LONG_SAMPLES` (default
    ``truncate``), e.g. ``alpaca@pack`` or ``lengths.csv@longest,drop``; ``steps=N`` and ``seed=N`` are read
    by :func:`run_options`."""
    if text is None:
        return None, "longest", "truncate"
    source, _, rules = text.partition("@")
    batching, long_samples = "longest", "truncate"
    for r in filter(None, (x.strip() for x in rules.split(","))):
        if r in BATCHINGS:
            batching = r
        elif r in LONG_SAMPLES:
            long_samples = r
        elif r.partition("=")[0] not in ("steps", "seed"):
            raise LengthsError(f"--lengths {text!r}: rule {r!r} is not one of "
                               f"{', '.join(BATCHINGS + LONG_SAMPLES)}, steps=N or seed=N "
                               f"(write SOURCE@RULE,RULE, e.g. alpaca@pack,steps=500)")
    return parse_lengths(source), batching, long_samples


def run_options(text: str | None) -> tuple[int, int]:
    """``steps=N`` (default :data:`PLAN_STEPS`, at most 100,000) and ``seed=N`` (default 0) of ``--lengths``."""
    steps, seed = PLAN_STEPS, 0
    rules = (text or "").partition("@")[2]
    for r in filter(None, (x.strip() for x in rules.split(","))):
        key, eq, val = r.partition("=")
        if key in ("steps", "seed") and eq:
            if not val.isdigit() or (key == "steps" and not 1 <= int(val) <= 100_000):
                raise LengthsError(f"--lengths {text!r}: {key} must be an integer"
                                   + (" from 1 to 100,000" if key == "steps" else " >= 0") + f", got {val!r}")
            if key == "steps":
                steps = int(val)
            else:
                seed = int(val)
    return steps, seed


def capacity_from(gpu_memory_bytes: int, device_used_bytes: int, reserved_bytes: int) -> int:
    """What the allocator may reserve on a card: its memory less what the estimate places outside the caching
    allocator (``device_used - peak_reserved``: the CUDA context, paged optimizer states)."""
    return gpu_memory_bytes - (device_used_bytes - reserved_bytes)


@dataclass(frozen=True)
class AllocatorPlan:
    """The run-level allocator result of a plan."""

    lengths: str
    run: RunReserved
    fixes: tuple[Fix, ...]
    capacity_bytes: int | None
    reason: str
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"lengths": self.lengths, **self.run.to_dict(), "capacity_bytes": self.capacity_bytes,
                "reason": self.reason, "fixes": [f.to_dict() for f in self.fixes], "notes": list(self.notes)}


def conf_notes(conf: Any) -> tuple[str, ...]:
    """What the source says about settings that do less than users expect."""
    notes = []
    if conf.garbage_collection_threshold and conf.memory_fraction is None:
        notes.append("garbage_collection_threshold has no effect without a memory fraction: malloc calls "
                     "garbage_collect_cached_blocks only when set_per_process_memory_fraction (or "
                     "per_process_memory_fraction) is set (c10/cuda/CUDACachingAllocator.cpp)")
    if conf.expandable_segments and conf.max_split_size is not None:
        notes.append("with expandable_segments:True every block may be split (should_split), so "
                     "max_split_size_mb only keeps oversize blocks from serving smaller requests")
    return tuple(notes)


def _reason(run: RunReserved, dist: LengthDist | None) -> str:
    ratio = run.peak_reserved_bytes / run.peak_allocated_bytes if run.peak_allocated_bytes else 0.0
    b, s = run.longest
    what = (f"sample lengths vary ({dist.name}; longest step {b} x {s:,} tokens), so each longer batch needs "
            "blocks larger than the cached ones, and the freed smaller blocks stay reserved"
            if dist is not None and run.batching != "fixed" else
            "at one shape, blocks freed before larger ones are requested (the bf16 logits before the fp32 "
            "gradients) stay cached but cannot serve them")
    text = (f"peak reserved {run.peak_reserved_bytes / GiB:.2f} GiB is {ratio:.2f}x peak allocated "
            f"{run.peak_allocated_bytes / GiB:.2f} GiB (fragmentation share {run.fragmentation_share:.0%}): {what}")
    if run.oom_step is not None:
        text += f"; the allocator runs out of memory at step {run.oom_step}"
    return text


def allocator_plan(spec: Any, setup: Any, lengths: str | None, alloc_conf: str | None,
                   capacity_bytes: int | None = None, *, steps: int | None = None,
                   seed: int | None = None) -> AllocatorPlan:
    """Replay the run of ``setup`` with ``--lengths`` and ``--alloc-conf`` and rank the fixes (``steps`` and
    ``seed``: those of ``--lengths`` when ``None``, see :func:`run_options`).

    Raises:
        LengthsError, AllocConfError: a bad ``--lengths`` or ``--alloc-conf`` (one line each).
    """
    dist, batching, long_samples = parse_lengths_option(lengths)
    opt_steps, opt_seed = run_options(lengths)
    steps = opt_steps if steps is None else steps
    seed = opt_seed if seed is None else seed
    conf = parse_alloc_conf(alloc_conf)
    run, fixes = reserved_fixes(spec, setup, dist, steps, conf, capacity_bytes, batching=batching,
                                long_samples=long_samples, seed=seed)
    return AllocatorPlan(lengths or f"fixed {setup.seq}", run, tuple(fixes), capacity_bytes, _reason(run, dist),
                         conf_notes(conf))
