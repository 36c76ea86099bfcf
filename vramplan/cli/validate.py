"""``vramplan validate``: the profiler over a matrix of setups, measured against estimated."""

from __future__ import annotations

import click


@click.command(short_help="Run the profiler over a matrix of setups and compare with the estimator.")
@click.argument("matrix", type=click.Path(dir_okay=False))
@click.option("--out", default="reports/validation/", show_default=True,
              help="Folder for the run records, summary.json and the generated README.md.")
@click.option("--budget-minutes", type=click.FloatRange(min=0, min_open=True, max=1e9), default=None,
              help="Stop starting runs when this much time is spent (default: the matrix's budget_minutes).")
@click.option("--min-run-seconds", type=click.FloatRange(min=0, max=1e9), default=90.0, show_default=True,
              help="Time a run is assumed to need before any has been measured.")
@click.option("--dry-run", is_flag=True, help="Print the profile commands without running them.")
def validate(matrix: str, *, out: str, budget_minutes: float | None, min_run_seconds: float, dry_run: bool) -> None:
    """Run every setup of MATRIX (YAML) with `vramplan profile` in a fresh process each, smallest first,
    within a time budget; resume without redoing finished runs; write summary.json and README.md (every run,
    measured vs estimated per counter, median / p90 / max error)."""
    import math

    from ..profiler.campaign import validate as run_all

    for flag, value in (("--budget-minutes", budget_minutes), ("--min-run-seconds", min_run_seconds)):
        if value is not None and math.isnan(value):      # FloatRange lets nan through
            raise click.BadParameter(f"must be a number of {flag.split('-')[-1]}, got nan", param_hint=flag)

    summary = run_all(matrix, out, budget_s=None if budget_minutes is None else budget_minutes * 60,
                      min_run_s=min_run_seconds, dry_run=dry_run, echo=lambda m: click.echo(m, err=True))
    for counter, s in summary["stats"].items():
        if s:
            click.echo(f"{counter}: {s['n']} runs, median |error| {s['median_abs_error_pct']} %, "
                       f"p90 {s['p90_abs_error_pct']} %, max {s['max_abs_error_pct']} %")
        else:
            click.echo(f"{counter}: no measurement")
