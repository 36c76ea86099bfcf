"""Fake-tensor execution of one training or inference step, and the allocation tracker.

``simulate(spec, setup)`` builds the model on the ``meta`` device with the installed transformers, applies
the method as a user script does (bitsandbytes quantization through its registered fake kernels,
``prepare_model_for_kbit_training``, ``get_peft_model``, gradient checkpointing), runs forward + loss +
backward + optimizer step (or a prefill and a decode step) on meta tensors, and measures every storage the
CUDA caching allocator would hold. It returns an :class:`~vramplan.estimate.Estimate` with the analytic
estimator's component names (mapping: :mod:`vramplan.simulate.components`, ``docs/simulation.md``).

torch, transformers and peft are imported only when a function here runs: ``import vramplan.simulate``
stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import SimulationError

if TYPE_CHECKING:
    from ..estimate.result import Estimate
    from ..setup import Setup
    from ..shapes.spec import ModelSpec

__all__ = ["simulate", "calibrated_layer_bytes", "SimulationError"]


def simulate(spec: ModelSpec, setup: Setup, gpu: Any = None, margin: float = 0.0,
             sim_layers: str | int = "auto", progress: Callable[[str], None] | None = None) -> Estimate:
    """Simulate one step of ``setup`` on ``spec`` and return its Estimate.

    Args:
        spec: the model.
        setup: the step (method, precision, batch, sequence, ...).
        gpu: a :class:`vramplan.profiles.Gpu` for the fit verdict; ``margin`` keeps that fraction free.
        sim_layers: ``"auto"`` (simulate two periods of layers and three, extrapolate), ``"all"``, or a layer
            count ``N`` (simulate ``N`` and ``N + period``).
        progress: called with one line before each simulated run (the command line prints it on stderr).

    Raises:
        SimulationError: the architecture or setup cannot run on meta tensors; the message names the op.
    """
    from .components import check_supported, to_estimate
    from .extrapolate import simulate_combined

    check_supported(setup)
    return to_estimate(spec, setup, simulate_combined(spec, setup, sim_layers, progress), gpu, margin)


def calibrated_layer_bytes(spec: ModelSpec, setup: Setup) -> tuple[int, int] | None:
    """Per-layer activation coefficients measured by simulation, cached per config: see
    :func:`vramplan.simulate.calibrate.calibrated_layer_bytes`."""
    from .calibrate import calibrated_layer_bytes as impl

    return impl(spec, setup)
