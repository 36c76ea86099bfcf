"""``vramplan check``: do the setups of plan files (or real training configs) fit their GPU? For CI."""

from __future__ import annotations

import sys

import click

from ..setup import option_named
from .options import click_option, json_option, setup_from_options
from .render import echo_json, gib, setup_line


@click.command(short_help="Check that plan files or training configs fit their GPU (for CI).")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click_option(option_named("gpu"), help="Check on this card instead of the one each plan names.")
@click_option(option_named("margin"), default=None, show_default=False,
              help="Headroom kept free instead of each plan's margin, e.g. 10%.")
@click.option("--model", default=None, help="Model for files that do not name one (TrainingArguments JSON).")
@json_option
def check(files: tuple[str, ...], *, gpu: str | None, margin: str | None, model: str | None, as_json: bool) -> None:
    """Check that every plan in FILES fits its GPU; print one line per plan.

    A plan file is YAML or JSON: one mapping whose keys are the long options of `vramplan plan` (dashes or
    underscores: model, method, rank, targets, batch, seq, grad_ckpt, attn, optim, precision, quant, gpu,
    margin, ...), or `plans:` with a list of such mappings (other top-level keys are defaults for each).
    LLaMA-Factory and axolotl training YAMLs and transformers TrainingArguments JSON are recognised by their
    keys and read as the setup they train.

    Exit code 0 when every plan fits, 1 when any does not, 2 on a bad file (naming file, plan and key).
    """
    from ..planner import check_plans, read_plan_file
    from .plan import parse_margin

    m = parse_margin(margin) if margin is not None else None
    entries = [e for f in files for e in read_plan_file(f, gpu=gpu, margin=m, model=model)]
    results = check_plans(entries, setup_from_options)
    from ..setup import ignored_options
    from .render import warn

    for r in results:
        for w in ignored_options(r.entry.options, r.estimate.setup):
            warn(f"{r.entry.where}: {w}")
    if as_json:
        echo_json([r.to_dict() for r in results])
    else:
        for r in results:
            click.echo(check_line(r.to_dict(), r.estimate.to_dict() | {"model": r.model}))
    if not all(r.fit.fits for r in results):
        sys.exit(1)


def check_line(d: dict, plan_json: dict) -> str:
    """``ok   <setup> · 14.20 / 23.99 GiB on rtx-4090 (headroom 9.79 GiB) · file plan 1`` (FAIL when it does not fit)."""
    margin = f", {d['margin']:.0%} margin" if d["margin"] else ""
    where = f"{d['file']}" + (f" plan {d['plan']}" if d["plan"] else "") + (f" ({d['name']})" if d["name"] else "")
    return (f"{'ok  ' if d['fits'] else 'FAIL'} {setup_line(plan_json)} · {gib(d['device_used_bytes'])} / "
            f"{gib(d['capacity_bytes'])} GiB on {d['gpu']} (headroom {gib(d['headroom_bytes'])} GiB{margin}) · {where}")
