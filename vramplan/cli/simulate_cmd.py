"""``vramplan plan --mode simulate|both``: the simulated estimate, or both side by side.

Numbers come from :func:`vramplan.simulate.simulate` and
:func:`vramplan.simulate.compare.compare_components`; the functions here only shape them for printing
(:mod:`vramplan.cli.render` does the output).
"""

from __future__ import annotations

from typing import Any

from ..errors import SimulationError
from ..setup import Setup
from ..simulate.compare import compare_components
from ..units import GiB
from .render import echo_json, plan_text, setup_line, table, warn


def both_text(analytic: dict, simulated: dict, rows: list[dict[str, Any]]) -> str:
    """The side-by-side view of ``--mode both`` (GiB, difference in GiB and % of the analytic value)."""
    def g(n: int) -> str:
        return f"{n / GiB:,.3f}"

    body = []
    for r in rows:
        a, s, d = r["analytic_bytes"], r["simulated_bytes"], r["diff_bytes"]
        pct = f"{100 * d / a:+.1f}" if a else ("" if not s else "new")
        body.append([r["component"], g(a), g(s), f"{d / GiB:+,.3f}", pct])
    sim = simulated.get("simulation", {})
    lines = [setup_line(simulated), "",
             table(["component", "analytic GiB", "simulated GiB", "diff GiB", "diff %"], body, "lrrrr"), "",
             f"peak phase: analytic {analytic['peak_phase']}, simulated {simulated['peak_phase']}",
             f"simulation: {sim.get('how', '')} in {sim.get('seconds', 0):.1f} s "
             f"({sim.get('ops', 0):,} ops); attention kernels {sim.get('attention_kernels', {})}"]
    f = simulated.get("fits")
    if f:
        verdict = "FITS" if f["fits"] else "DOES NOT FIT"
        lines.append(f"{f['gpu']} ({f['capacity_bytes'] / GiB:,.2f} GiB): {verdict} (simulated), headroom "
                     f"{f['headroom_bytes'] / GiB:,.2f} GiB")
    lines += ["", "GiB = 2**30 bytes"]
    return "\n".join(lines)


def _progress(message: str) -> None:
    """A simulated run takes seconds (issue 18: ``--mode both`` ran 10+ s with nothing shown): say so on a terminal's
    stderr (scripts reading stderr keep their one-line errors)."""
    import sys

    import click

    if sys.stderr.isatty():
        click.echo(f"vramplan: {message}", err=True)


def plan_mode(mode: str, resolved: Any, setup: Setup, gpu: Any, margin: float, *, sim_layers: str,
              as_json: bool, explain: bool, html_path: str | None) -> int:
    """Run ``vramplan plan`` in ``simulate`` or ``both`` mode; return the exit code (1: does not fit).

    ``simulate`` raises :class:`SimulationError` (exit 2) when the model cannot run on meta tensors;
    ``both`` then falls back to the analytic estimate with a warning.
    """
    import click

    from ..estimate import estimate
    from ..quantized import checkpoint_setup
    from ..simulate import simulate

    spec = resolved.spec
    # a pre-quantized checkpoint runs as stored: the simulation must see its quantization, not refuse too late
    sim_setup = checkpoint_setup(spec.config, setup, spec.name)[0]
    if mode == "simulate":
        from ..simulate.components import check_supported

        check_supported(sim_setup)
        est = simulate(spec, setup, gpu, margin, sim_layers=sim_layers, progress=_progress)
        data = est.to_dict()
        data["model"] = resolved.name
        for w in est.warnings:
            warn(w)
        _html(html_path, spec, setup, data, gpu)
        if as_json:
            echo_json(data)
        else:
            click.echo(plan_text(data, explain=explain))
        return 1 if est.fit is not None and not est.fit.fits else 0

    analytic = estimate(spec, setup, gpu, margin)
    a = analytic.to_dict()
    a["model"] = resolved.name
    try:
        from ..simulate.components import check_supported

        check_supported(sim_setup)
        sim = simulate(spec, setup, gpu, margin, sim_layers=sim_layers, progress=_progress)
    except SimulationError as exc:
        warn(f"{exc} — showing the analytic estimate only")
        _html(html_path, spec, setup, a, gpu)
        if as_json:
            echo_json({"model": resolved.name, "analytic": a, "simulated": None, "simulation_error": str(exc)})
        else:
            click.echo(plan_text(a, explain=explain))
        return 1 if analytic.fit is not None and not analytic.fit.fits else 0
    s = sim.to_dict()
    s["model"] = resolved.name
    rows = compare_components(analytic, sim)
    for w in dict.fromkeys([*analytic.warnings, *sim.warnings]):
        warn(w)
    _html(html_path, spec, setup, s, gpu)
    if as_json:
        echo_json({"model": resolved.name, "analytic": a, "simulated": s, "comparison": rows})
    else:
        click.echo(both_text(a, s, rows))
        if explain:
            click.echo("")
            click.echo(plan_text(s, explain=True))
    return 1 if sim.fit is not None and not sim.fit.fits else 0


def _html(path: str | None, spec: Any, setup: Setup, data: dict, gpu: Any) -> None:
    if not path:
        return
    from ..io import atomic_write_text
    from ..planner import plan_page_data
    from ..report import plan_page

    atomic_write_text(path, plan_page(plan_page_data(spec, setup, data, gpu)))
