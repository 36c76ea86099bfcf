"""Per-layer activation coefficients measured by simulation, for architectures the analytic tables lack.

A decoder layer saves ``const + per_token * tokens + per_bss * batch * seq**2`` bytes for backward (the last
term: eager attention's scores). :func:`calibrate` measures the three coefficients of a *representative*
layer — one whose input requires grad, as every layer but the first does — by simulating one and two layers
(the second layer's saved bytes are the difference of the two totals) at three sequence lengths, on unrounded
byte counts so that the fit is exact, and caches the result per config and structural setup under
``vramplan.profiles.cache_dir() / "calibration"``.

How the analytic estimator consumes it (``vramplan/estimate/structure.py::static_structure``): where the family is unknown,
take ``per_token, per_bss = calibrated_layer_bytes(spec, setup)`` and use, for every layer, ``per_layer =
alloc_rounding(per_token * T + per_bss * bss)`` instead of ``trace.saved_at(T, bss)`` (``T = batch * seq``,
``bss = batch * seq**2``) — under checkpointing the same value is the recomputed layer. The 512-B rounding of
each saved tensor is not in the coefficients (a few KiB per layer); ``Calibration.const_bytes`` holds the
size-independent part (autocast copies of LoRA weights).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from fractions import Fraction

from ..errors import SimulationError
from ..setup import Setup
from ..shapes.spec import ModelSpec

#: bump when what is measured changes (invalidates the cache)
CALIBRATION_VERSION = 1
#: sequence lengths of the three simulated points (batch 1); small, so that a calibration takes seconds
SEQS = (64, 128, 256)


@dataclass(frozen=True)
class Calibration:
    """Saved bytes of one representative decoder layer: ``const + per_token * T + per_bss * bss``."""

    per_token_bytes: int
    per_bss_bytes: int
    const_bytes: int
    first_layer_delta_bytes: int        # layer 0 minus the representative layer, at seq SEQS[1] (batch 1)
    key: str
    versions: dict[str, str]


def structural_setup(setup: Setup) -> Setup:
    """What the coefficients depend on: batch/sequence normalized, checkpointing off (the full layer)."""
    return setup.with_(batch=1, seq=max(SEQS), new_tokens=0, grad_ckpt=False, gpus=1, strategy="ddp",
                       offload="none")


def cache_key(spec: ModelSpec, setup: Setup) -> str:
    from .components import versions

    s = structural_setup(setup).to_dict()
    for k in ("batch", "seq", "new_tokens", "gpus", "strategy", "offload", "optim"):
        s.pop(k, None)
    payload = {"config": dict(spec.config), "setup": s, "versions": versions(), "v": CALIBRATION_VERSION}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _path(key: str):
    from ..profiles import cache_dir

    return cache_dir() / "calibration" / f"{key}.json"


#: the largest calibration cache entry read (an entry is a few hundred bytes)
MAX_ENTRY_BYTES = 64 << 10


def read_cached(path) -> Calibration | None:
    """The calibration stored at ``path``, or ``None`` when there is none or it cannot be used: read through
    :func:`vramplan.io.read_json` (a FIFO, a device, a file over :data:`MAX_ENTRY_BYTES`, binary or deeply
    nested content is refused without blocking or reading it whole), so a damaged entry is measured again."""
    from ..errors import VramplanError
    from ..io import read_json

    try:
        d = read_json(path, MAX_ENTRY_BYTES, what="calibration cache entry")
        cal = Calibration(**d) if isinstance(d, dict) else None
    except (VramplanError, TypeError, ValueError):
        return None                               # missing or damaged: measured again
    ints = (cal.per_token_bytes, cal.per_bss_bytes, cal.const_bytes, cal.first_layer_delta_bytes) if cal else ()
    if cal is None or not all(type(v) is int for v in ints) or not isinstance(cal.key, str) \
            or not isinstance(cal.versions, dict):
        return None
    return cal


def calibrate(spec: ModelSpec, setup: Setup, *, use_cache: bool = True) -> Calibration:
    """Measure (or read from the cache) the per-layer coefficients of ``spec`` under ``setup``.

    Raises:
        SimulationError: the model cannot be simulated.
    """
    from ..io import atomic_write_text
    from .components import versions
    from .step import run

    if not setup.training:
        raise SimulationError("calibration measures training activations; --method inference saves none")
    key = cache_key(spec, setup)
    path = _path(key)
    cached = read_cached(path) if use_cache else None
    if cached is not None:
        return cached
    base = structural_setup(setup)
    layer_bytes: list[int] = []
    first_delta = 0
    for seq in SEQS:
        s = base.with_(seq=seq)
        one, two = run(spec, s, 1), run(spec, s, 2)
        layer_bytes.append(two.saved_raw_total - one.saved_raw_total)
        if seq == SEQS[1]:
            first_delta = two.saved_per_layer_raw.get(0, 0) - two.saved_per_layer_raw.get(1, 0)
    c, a, q = _fit(SEQS, layer_bytes)
    cal = Calibration(a, q, c, first_delta, key, versions())
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(asdict(cal), indent=2))
    return cal


def _fit(xs: tuple[int, ...], ys: list[int]) -> tuple[int, int, int]:
    """Exact ``y = c + a*x + q*x**2`` through three points (Lagrange, in fractions), rounded to bytes."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    d01, d02, d12 = Fraction(x0 - x1), Fraction(x0 - x2), Fraction(x1 - x2)
    q = y0 / (d01 * d02) - y1 / (d01 * d12) + y2 / (d02 * d12)
    a = (Fraction(y1 - y0) / (x1 - x0)) - q * (x0 + x1)
    c = y0 - a * x0 - q * x0 * x0
    return round(c), round(a), round(q)


def calibrated_layer_bytes(spec: ModelSpec, setup: Setup) -> tuple[int, int] | None:
    """``(per_token_bytes, per_bss_bytes)`` of one decoder layer's saved activations, or ``None``.

    ``per_layer_bytes ≈ per_token_bytes * batch * seq + per_bss_bytes * batch * seq**2`` for a layer whose
    input requires grad (see the module docstring for how the analytic estimator uses it). ``None`` when the
    model cannot be simulated (no torch/transformers, or a :class:`SimulationError`) or the setup is
    inference. Cached per config hash under ``vramplan.profiles.cache_dir()/calibration``.
    """
    try:
        cal = calibrate(spec, setup)
    except (SimulationError, ImportError):
        return None
    return cal.per_token_bytes, cal.per_bss_bytes
