"""Result types of the estimator: components in bytes with their formulas, and the three counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..setup import Setup


class BreakdownError(RuntimeError):
    """The itemized components do not sum to the counter they itemize: a bug in the estimator, not bad input."""


@dataclass(frozen=True)
class Component:
    """One part of the memory live at the peak.

    Attributes:
        name: ``group/part`` — ``weights/quantized``, ``activations/attention``, ``overhead/cuda_context``.
        bytes: allocator-rounded bytes (what ``max_memory_allocated`` counts), except ``overhead/*``.
        formula: the formula with its numbers substituted and its source (shown by ``--explain``).
        counter: the first counter that includes it: ``allocated`` (torch allocator), ``reserved``
            (allocator cache beyond allocations) or ``device`` (outside PyTorch: context, paged memory).
    """

    name: str
    bytes: int
    formula: str
    counter: str = "allocated"

    @property
    def group(self) -> str:
        return self.name.split("/", 1)[0]


@dataclass(frozen=True)
class Fit:
    gpu: str
    capacity_bytes: int
    headroom_bytes: int
    fits: bool
    margin: float = 0.0


@dataclass(frozen=True)
class Estimate:
    """What a setup needs, component by component, and what each memory counter would show.

    ``components`` are what is live at the peak (``peak_phase``); ``phases`` holds the allocated peak of
    every phase of the step so the timeline can be drawn.
    """

    model: str
    setup: Setup
    params_total: int
    params_trainable: int
    components: tuple[Component, ...]
    peak_phase: str
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_used_bytes: int
    phases: dict[str, int]
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    fit: Fit | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def component(self, name: str) -> int:
        return sum(c.bytes for c in self.components if c.name == name)

    def group_bytes(self, group: str) -> int:
        return sum(c.bytes for c in self.components if c.group == group)

    @property
    def breakdown_bytes(self) -> dict[str, int]:
        return {c.name: c.bytes for c in self.components}

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON (README "JSON output")."""
        d: dict[str, Any] = {
            "model": self.model,
            "params": {"total": self.params_total, "trainable": self.params_trainable},
            "setup": self.setup.to_dict(),
            "breakdown_bytes": self.breakdown_bytes,
            "counters": {c.name: c.counter for c in self.components},
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "device_used_bytes": self.device_used_bytes,
            "peak_phase": self.peak_phase,
            "phases": dict(self.phases),
            "fits": None if self.fit is None else {
                "gpu": self.fit.gpu, "capacity_bytes": self.fit.capacity_bytes,
                "headroom_bytes": self.fit.headroom_bytes, "fits": self.fit.fits, "margin": self.fit.margin},
            "assumptions": list(self.assumptions),
            "warnings": list(self.warnings),
            "formulas": {c.name: c.formula for c in self.components},
            "versions": dict(self.versions),
        }
        d.update(self.extra)
        return d
