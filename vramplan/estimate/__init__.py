"""The analytic estimator (no torch import): :func:`estimate` returns an :class:`Estimate`."""

from . import overhead
from .allocations import LayerAllocations, StepAllocations, step_allocations
from .estimator import estimate
from .grid import Counters, estimate_counters
from .result import Component, Estimate, Fit
from .search import smallest_gpus

__all__ = ["estimate", "Estimate", "Component", "Fit", "overhead", "estimate_counters", "Counters", "smallest_gpus",
           "step_allocations", "StepAllocations", "LayerAllocations"]
