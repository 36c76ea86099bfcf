"""The analytic estimator (no torch import): :func:`estimate` returns an :class:`Estimate`."""

from .model import estimate
from .result import Component, Estimate, Fit

__all__ = ["estimate", "Estimate", "Component", "Fit"]
