"""``vramplan plan``: estimate one setup."""

from __future__ import annotations

import sys

import click

from .options import json_option, margin_option, plan_options, setup_from_options
from .render import echo_json, plan_text, warn


@click.command(short_help="Estimate peak GPU memory of a fine-tuning or inference setup.")
@click.argument("model")
@plan_options
@margin_option
@json_option
@click.option("--explain", is_flag=True, help="Print every formula with its numbers and source.")
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the plan as a self-contained HTML page.")
@click.option("--mode", type=click.Choice(["analytic", "simulate", "both"], case_sensitive=False),
              default="analytic", show_default=True,
              help="analytic: the formulas; simulate: run the step on meta tensors with the installed "
                   "transformers/peft/bitsandbytes and track every allocation (needs torch); both: side by "
                   "side with the difference per component (falls back to analytic with a warning).")
@click.option("--sim-layers", default="auto", show_default=True,
              help="Layers the simulation runs: auto (two depths, extrapolated per layer), all, or N "
                   "(N and N + the layer period).")
def plan(model: str, *, as_json: bool, explain: bool, html_path: str | None, gpu: str | None, margin: str,
         trust_remote_code: bool, mode: str = "analytic", sim_layers: str = "auto", **opts) -> None:
    """Estimate peak GPU memory for MODEL and say whether it fits on --gpu.

    MODEL is a bundled name (vramplan models), a Hugging Face id, or a path to a config.json or model
    folder. Exit code 0, or 1 when --gpu is given and the setup does not fit; 2 on bad input.
    """
    from ..estimate import estimate
    from ..io import check_output_path, refuse_overwriting_input
    from ..profiles import resolve_gpu, resolve_model

    if html_path:
        check_output_path(html_path, "--html")
    setup = setup_from_options(opts)
    g = resolve_gpu(gpu) if gpu is not None else None
    m = parse_margin(margin)
    resolved = resolve_model(model, trust_remote_code=trust_remote_code)
    refuse_overwriting_input(html_path, resolved.input_files, "--html")
    ignored = ignored_warnings(opts, setup)
    for w in ignored:
        warn(w)
    if mode.lower() != "analytic":     # issue 4: simulated step (vramplan/cli/simulate_cmd.py)
        from ..extras import require

        require("simulate", f"--mode {mode.lower()}")
        from .simulate_cmd import plan_mode

        code = plan_mode(mode.lower(), resolved, setup, g, m, sim_layers=sim_layers, as_json=as_json,
                         explain=explain, html_path=html_path)
        if code:
            sys.exit(code)
        return
    est = estimate(resolved.spec, setup, g, m)
    data = est.to_dict()
    data["model"] = resolved.name
    if ignored:
        data["warnings"] = [*ignored, *data.get("warnings", [])]
    for w in est.warnings:
        warn(w)
    if html_path:
        from ..extras import require

        require("report", "--html")
        from ..io import atomic_write_text
        from ..planner import plan_page_data
        from ..report import plan_page

        atomic_write_text(html_path, plan_page(plan_page_data(resolved.spec, setup, data, g)))
    if as_json:
        echo_json(data)
    else:
        click.echo(plan_text(data, explain=explain))
    if est.fit is not None and not est.fit.fits:
        sys.exit(1)


def parse_margin(text: str) -> float:
    """``"10%"`` or ``"0.1"`` -> 0.1 (:func:`vramplan.options.read_margin`, the reader of plan files too)."""
    from ..errors import SetupError
    from ..options import read_margin

    try:
        return read_margin(text)
    except ValueError as exc:
        raise SetupError(f"--margin {exc}") from None


def given_options(opts: dict) -> dict:
    """The options of the running command that the user wrote (command line or environment), by name."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {k: v for k, v in opts.items()
            if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


def ignored_warnings(opts: dict, setup) -> list[str]:
    """Warnings for options given that ``setup`` does not use (:func:`vramplan.setup.ignored_options`)."""
    from ..setup import ignored_options

    return ignored_options(given_options(opts), setup)
