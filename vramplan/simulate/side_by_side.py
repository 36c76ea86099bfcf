"""An analytic and a simulated :class:`~vramplan.estimate.result.Estimate` side by side, component by component.

``vramplan plan --mode both`` prints these rows (:mod:`vramplan.cli.simulate_cmd`) and
``vramplan.plan(..., mode="both")`` returns them in ``extra["comparison"]``.
"""

from __future__ import annotations

from typing import Any

from ..estimate.result import Estimate


def compare_components(analytic: Estimate, simulated: Estimate) -> list[dict[str, Any]]:
    """Per component: analytic bytes, simulated bytes, difference (simulated - analytic), then the counters.

    A component only one side reports has 0 on the other (e.g. ``activations/recomputed_layer`` vs the
    analytic ``backward (layers)`` split); group subtotals follow the components.
    """
    a, s = analytic.breakdown_bytes, simulated.breakdown_bytes
    rows: list[dict[str, Any]] = []
    for name in sorted(dict.fromkeys([*a, *s]), key=lambda n: (n.split("/", 1)[0], n)):
        rows.append({"component": name, "analytic_bytes": a.get(name, 0), "simulated_bytes": s.get(name, 0),
                     "diff_bytes": s.get(name, 0) - a.get(name, 0)})
    groups: dict[str, list[int]] = {}
    for r in rows:
        g = groups.setdefault(r["component"].split("/", 1)[0] + "/*", [0, 0])
        g[0] += r["analytic_bytes"]
        g[1] += r["simulated_bytes"]
    for g, (x, y) in groups.items():
        rows.append({"component": g, "analytic_bytes": x, "simulated_bytes": y, "diff_bytes": y - x})
    for key, label in (("peak_allocated_bytes", "peak allocated"), ("peak_reserved_bytes", "peak reserved"),
                       ("device_used_bytes", "device used")):
        x, y = getattr(analytic, key), getattr(simulated, key)
        rows.append({"component": label, "analytic_bytes": x, "simulated_bytes": y, "diff_bytes": y - x})
    return rows
