"""The data of the plan page (``plan --html``): the estimate and its neighbourhood in batch and sequence."""

from __future__ import annotations

from typing import Any

from ..estimate import estimate
from ..setup import Setup
from ..shapes.spec import ModelSpec
from .cards import device_used_on, fit_on


def _around(value: int, floor: int) -> list[int]:
    """Powers of two from value/8 to value*8 (at least ``floor``), with ``value`` itself."""
    p = 1 << max(0, value.bit_length() - 1)
    vals = {v for v in (p >> 3, p >> 2, p >> 1, p, p << 1, p << 2, p << 3) if v >= floor}
    vals.add(value)
    return sorted(vals)


def plan_page_data(spec: ModelSpec, setup: Setup, plan_json: dict[str, Any], gpu: Any = None) -> dict[str, Any]:
    """``plan_json`` plus the two views of ``vramplan plan --html``.

    ``ladder``: every catalogue card, smallest first, with the setup's device use on it, headroom (keeping
    the plan's margin) and verdict. ``grid``: ``device_used_bytes`` for batch × seq, rows = batch, columns =
    seq, over powers of two from an eighth to eight times the setup's own values (which are always included),
    on ``gpu``'s architecture.
    """
    from ..profiles import gpu_catalogue

    fits = plan_json.get("fits") or {}
    margin = float(fits.get("margin") or 0.0)
    base = estimate(spec, setup)
    ladder = []
    for g in gpu_catalogue():
        f = fit_on(base, g, margin)
        ladder.append({"gpu": g.name, "capacity_bytes": g.memory_bytes, "device_used_bytes": device_used_on(base, g),
                       "headroom_bytes": f.headroom_bytes, "fits": f.fits})
    batches = _around(setup.batch, 1)
    seqs = [s for s in _around(setup.seq, 128) if s > setup.new_tokens]
    z = [[estimate(spec, setup.with_(batch=b, seq=s), gpu, detail=False).device_used_bytes for s in seqs]
         for b in batches]
    out = dict(plan_json)
    out["ladder"] = ladder
    out["grid"] = {"batch": batches, "seq": seqs, "device_used_bytes": z}
    return out
