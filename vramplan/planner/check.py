"""``check``: every plan of plan files validated first, then estimated on its card (the CI gate)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PlanFileError, VramplanError
from ..estimate import Estimate, Fit, estimate
from ..setup import Setup
from .planfile import PlanEntry


def _plan_error(entry: PlanEntry, exc: Exception, key: str | None = None) -> PlanFileError:
    """Prefix an error with the plan's place and the key it is about (read from ``--option`` in the message)."""
    msg = str(exc)
    if key is None:
        m = re.search(r"--([a-z][a-z0-9-]*)", msg)
        key = m.group(1).replace("-", "_") if m else None
    return PlanFileError(f"{entry.where}: key {key!r}: {msg}" if key else f"{entry.where}: {msg}")


@dataclass(frozen=True)
class CheckResult:
    entry: PlanEntry
    model: str
    estimate: Estimate

    @property
    def fit(self) -> Fit:
        assert self.estimate.fit is not None
        return self.estimate.fit

    def to_dict(self) -> dict[str, Any]:
        f = self.fit
        return {"file": self.entry.file, "plan": self.entry.index, "name": self.entry.name,
                "format": self.entry.format, "model": self.model, "fits": f.fits, "gpu": f.gpu,
                "capacity_bytes": f.capacity_bytes, "device_used_bytes": self.estimate.device_used_bytes,
                "headroom_bytes": f.headroom_bytes, "margin": f.margin, "setup": self.estimate.setup.to_dict()}


def check_plans(entries: Sequence[PlanEntry], make_setup: Callable[[dict[str, Any]], Setup]) -> list[CheckResult]:
    """Validate every entry (setup via ``make_setup(options)``, model, card) first, then estimate each: bad
    input anywhere raises :class:`PlanFileError` (file, plan, key) before anything is estimated."""
    from ..profiles import resolve_gpu, resolve_model

    prepared = []
    models: dict[tuple[str, bool], Any] = {}
    for e in entries:
        try:
            setup = make_setup(dict(e.options))
        except VramplanError as exc:
            raise _plan_error(e, exc) from None
        trust = bool(e.options.get("trust_remote_code"))
        key = (str(e.model), trust)
        try:
            if key not in models:
                models[key] = resolve_model(str(e.model), trust_remote_code=trust)
        except VramplanError as exc:
            raise _plan_error(e, exc, "model") from None
        try:
            gpu = resolve_gpu(str(e.gpu))
        except VramplanError as exc:
            raise _plan_error(e, exc, "gpu") from None
        prepared.append((e, models[key], setup, gpu))
    out = []
    for e, rm, setup, gpu in prepared:
        try:
            est = estimate(rm.spec, setup, gpu, e.margin)
        except VramplanError as exc:
            raise _plan_error(e, exc) from None
        out.append(CheckResult(e, rm.name, est))
    return out
