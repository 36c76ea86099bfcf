"""The smallest number of GPUs, and the strategy, on which a setup fits a card: a search over the estimator."""

from __future__ import annotations

from typing import Any

from ..setup import Setup
from ..shapes.spec import ModelSpec
from .estimator import estimate


def _fits(spec: ModelSpec, setup: Setup, gpu: Any, margin: float) -> bool:
    est = estimate(spec, setup, gpu, margin)
    return est.fit is not None and est.fit.fits


def smallest_gpus(spec: ModelSpec, setup: Setup, gpu: Any, margin: float = 0.0,
                  max_gpus: int = 64) -> tuple[int, str] | None:
    """The smallest number of GPUs, and the strategy, on which ``setup`` fits ``gpu`` per rank.

    Tries every strategy compatible with ``setup.offload`` (``--offload none``: all six); at equal GPU count
    prefers the one with the least communication (:data:`PREFERENCE`). ``--batch`` stays per GPU. Per-rank
    memory does not grow with N from N = 2 on (shards shrink, buffers are constant), so each strategy is
    binary-searched over 2..``max_gpus`` after N = 1 is tried.

    Args:
        spec: the model.
        setup: the setup; its ``gpus`` and ``strategy`` are ignored, its ``offload`` is kept.
        gpu: a :class:`vramplan.profiles.Gpu`.
        margin: fraction of the card kept free.
        max_gpus: the largest count considered.

    Returns:
        ``(n, strategy)``, or ``None`` when nothing up to ``max_gpus`` fits.
    """
    if not setup.training:
        one = setup.with_(gpus=1, strategy="ddp", offload="none")
        return (1, "ddp") if _fits(spec, one, gpu, margin) else None
    best: tuple[int, str] | None = None
    from .distributed import OFFLOADS_BY_STRATEGY, PREFERENCE

    for strategy in PREFERENCE:
        if setup.offload not in OFFLOADS_BY_STRATEGY[strategy]:
            continue
        s = setup.with_(strategy=strategy)
        limit = max_gpus if best is None else min(max_gpus, best[0] - 1)
        if limit < 1:
            break
        if _fits(spec, s.with_(gpus=1), gpu, margin):
            n: int | None = 1
        elif strategy == "ddp" or limit < 2 or not _fits(spec, s.with_(gpus=limit), gpu, margin):
            n = None                       # ddp: a replica per rank only grows with N
        else:
            lo, hi = 2, limit              # hi fits
            while lo < hi:
                mid = (lo + hi) // 2
                if _fits(spec, s.with_(gpus=mid), gpu, margin):
                    hi = mid
                else:
                    lo = mid + 1
            n = hi
        if n is not None and (best is None or n < best[0]):
            best = (n, strategy)
    return best
