"""Calls from a lower layer up into a higher one, registered from above (dependency inversion).

The analytic estimator sits below the simulator, yet for a layer layout its replay does not know it falls back
on coefficients measured by simulating the real model (``vramplan/simulate/calibrate.py``). Importing the
simulator from the estimator would close an import cycle (the simulator reads the estimator), so the estimator
asks this leaf for a calibrator and the package root registers the simulator's (``vramplan/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: (spec, setup) -> a calibration with ``const_bytes``, ``per_token_bytes``, ``per_bss_bytes`` and ``key``
LayerCalibrator = Callable[[Any, Any], Any]

_layer_calibrator: LayerCalibrator | None = None


def set_layer_calibrator(fn: LayerCalibrator | None) -> LayerCalibrator | None:
    """Register the function that measures an unknown layer layout; returns the one it replaces."""
    global _layer_calibrator
    previous, _layer_calibrator = _layer_calibrator, fn
    return previous


def layer_calibrator() -> LayerCalibrator | None:
    """The registered calibrator, or ``None`` when none is (the estimator then says it cannot calibrate)."""
    return _layer_calibrator
