"""An estimate on a card: the CUDA context swap, the verdict per card of the catalogue, and rental prices.

:func:`device_used_on` moves an estimate made without a GPU onto a card by swapping the architecture-dependent
CUDA context (``estimate/overhead.py::cuda_context_bytes``), the only thing the estimator reads from a card
besides its capacity. ``tests/planner`` checks it against ``estimate(spec, setup, gpu)`` on every catalogue
card, so a new GPU dependence in the estimator shows up there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import VramplanError, close_matches
from ..estimate import Estimate, Fit, estimate, overhead
from ..io import brief
from ..setup import Setup
from ..shapes.spec import ModelSpec


def device_used_on(est: Estimate, gpu: Any) -> int:
    """``device_used_bytes`` of ``est`` (estimated with ``gpu=None``) on ``gpu``: the same setup with that
    card's CUDA context (``estimate/overhead.py::cuda_context_bytes`` by architecture)."""
    arch = getattr(gpu, "architecture", "") or ""
    return (est.device_used_bytes - overhead.cuda_context_bytes("", False)
            + overhead.cuda_context_bytes(arch, False))


def fit_on(est: Estimate, gpu: Any, margin: float = 0.0) -> Fit:
    """The verdict ``estimate(spec, setup, gpu, margin).fit`` would give, from an estimate made without a GPU."""
    return overhead.fit_verdict(gpu, device_used_on(est, gpu), margin)


@dataclass(frozen=True)
class CardVerdict:
    """One card of ``vramplan gpus --fits``."""

    gpu: str
    capacity_bytes: int
    device_used_bytes: int
    headroom_bytes: int
    fits: bool
    usd_per_hour: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "capacity_bytes": self.capacity_bytes, "device_used_bytes": self.device_used_bytes,
                "headroom_bytes": self.headroom_bytes, "fits": self.fits, "usd_per_hour": self.usd_per_hour}


def card_verdicts(spec: ModelSpec, setup: Setup, margin: float = 0.0, cards: Sequence[Any] | None = None,
                  prices: Mapping[str, float] | None = None) -> list[CardVerdict]:
    """Every card (default: the catalogue) with verdict and headroom.

    Order: cards that fit first; among them the smallest memory first, or, with ``prices``, the cheapest
    first (cards without a price after the priced ones); then the cards that do not fit, smallest first
    (a price does not rank a card that cannot run the setup).
    """
    from ..profiles import gpu_catalogue

    cards = list(cards) if cards is not None else list(gpu_catalogue())
    est = estimate(spec, setup)
    out = []
    for g in cards:
        f = fit_on(est, g, margin)
        price = None if prices is None else prices.get(g.name)
        out.append(CardVerdict(g.name, g.memory_bytes, device_used_on(est, g), f.headroom_bytes, f.fits, price))
    if prices is None:
        out.sort(key=lambda v: (not v.fits, v.capacity_bytes, v.gpu))
    else:
        out.sort(key=lambda v: (False, v.usd_per_hour is None, v.usd_per_hour or 0.0, v.capacity_bytes, v.gpu)
                 if v.fits else (True, False, 0.0, v.capacity_bytes, v.gpu))
    return out


class PriceFileError(VramplanError):
    """A ``--prices`` file that cannot be read: not YAML, an unknown card, a price that is not a number."""


def _finite(x: float) -> bool:
    try:
        return math.isfinite(float(x))
    except OverflowError:         # an integer beyond float range
        return False


def load_prices(path: str | Path) -> dict[str, float]:
    """``{card name: usd_per_hour}`` from a YAML mapping ``{gpu: price}`` or a list of
    ``{gpu: name, usd_per_hour: price}`` (``name``/``price`` also accepted); card names resolve through
    the catalogue's aliases.

    Raises:
        PriceFileError: naming the file and the entry.
    """
    from ..io import CONFIG_MAX_BYTES, read_yaml
    from ..profiles import gpu_catalogue, resolve_gpu

    p = Path(path)
    data = read_yaml(p, CONFIG_MAX_BYTES, error=PriceFileError, what="price file")
    pairs: list[tuple[str, Any, Any]] = []
    if isinstance(data, dict):
        pairs = [(f"key {k!r}", k, v) for k, v in data.items()]
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise PriceFileError(f"{p}: entry {i + 1}: expected a mapping with gpu and usd_per_hour, "
                                     f"got {type(item).__name__}")
            name = item.get("gpu", item.get("name"))
            price = item.get("usd_per_hour", item.get("price"))
            pairs.append((f"entry {i + 1}", name, price))
    else:
        raise PriceFileError(f"{p}: expected a mapping {{gpu-name: usd_per_hour}} or a list of "
                             f"{{gpu, usd_per_hour}}, got {type(data).__name__}")
    names = [g.name for g in gpu_catalogue()]
    out: dict[str, float] = {}
    for where, name, price in pairs:
        if not isinstance(name, str):
            raise PriceFileError(f"{p}: {where}: the card name must be a string, got {brief(name)}")
        try:
            g = resolve_gpu(name)
        except VramplanError:
            g = None
        if g is None or g.from_size:
            raise PriceFileError(f"{p}: {where}: unknown GPU {brief(name)}{close_matches(name[:100], names)}; "
                                 "use a name from `vramplan gpus`")
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not _finite(price) or price < 0:
            raise PriceFileError(f"{p}: {where}: usd_per_hour must be a number >= 0 (and finite), got {brief(price)}")
        out[g.name] = float(price)
    return out
