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
@click_option(option_named("seq"), default=None, show_default=False,
              help="Tokens per sequence for files that leave it open (no truncation: torchtune max_seq_len null, "
                   "TRL max_length None, ms-swift without --max_length).")
@click_option(option_named("gpus"), default=None, show_default=False,
              help="Number of GPUs for sharded files that leave it to the launcher (torchrun, accelerate).")
@click_option(option_named("batch"), default=None, show_default=False,
              help="Sequences per step for files that name none (a PEFT adapter_config.json).")
@json_option
def check(files: tuple[str, ...], *, gpu: str | None, margin: str | None, model: str | None, seq: int | None,
          gpus: int | None, as_json: bool, batch: int | None = None) -> None:
    """Check that every plan in FILES fits its GPU; print one line per plan and a summary.

    A plan file is YAML or JSON: one mapping whose keys are the long options of `vramplan plan` (dashes or
    underscores: model, method, rank, targets, batch, seq, grad_ckpt, attn, optim, precision, quant, gpu,
    margin, ...), or `plans:` with a list of such mappings (other top-level keys are defaults for each).
    Training configs are recognised and read as their framework means them: LLaMA-Factory (flat and v1),
    axolotl, ms-swift (swift sft command lines in .sh files and its YAML/JSON), torchtune recipes, TRL
    SFTConfig, transformers TrainingArguments JSON, and launch scripts (llamafactory-cli, axolotl train,
    tune run, accelerate launch, torchrun) with the DeepSpeed/accelerate files they name.

    Each file is checked on its own: a plan is ok, FAIL, "cannot check: reason" (a stage, setting or model
    vramplan cannot model) or "bad file: reason"; keys that change memory but are not modelled are listed as
    ignored. Exit code 2 if any file is bad or cannot be checked, else 1 if any plan does not fit, else 0.
    """
    from ..errors import VramplanError
    from ..planner.check import CheckOverrides, check_files, exit_code, summary
    from .plan import parse_margin
    from .render import warn

    m = parse_margin(margin) if margin is not None else None
    outcomes = check_files(files, setup_from_options, CheckOverrides(gpu, m, model, seq, gpus, batch))
    for o in outcomes:
        for w in o.warnings:
            warn(f"{o.where}: {w}")
    if as_json:
        echo_json([o.to_dict() for o in outcomes])
    else:
        for o in outcomes:
            click.echo(outcome_line(o))
            if o.ignored:
                click.echo(f"     ignored: {'; '.join(o.ignored)}")
        c = summary(outcomes)
        click.echo(f"summary: {c['fits']} fits, {c['does_not_fit']} does not fit, {c['cannot_check']} cannot check, "
                   f"{c['bad_file']} bad file ({len(outcomes)} plans in {len(files)} files)")
    code = exit_code(outcomes)
    if code == 2:
        problems = [o for o in outcomes if o.status in ("cannot-check", "bad-file")]
        first = problems[0]
        what = "cannot check" if first.status == "cannot-check" else "bad file"
        msg = first.reason or ""
        if first.status == "cannot-check" or not msg.startswith(first.file):
            msg = f"{first.where}: {what}: {msg}"
        if len(msg) > 400:
            msg = msg[:397] + "..."
        if len(problems) > 1:
            msg = f"{len(problems)} plans cannot be checked or are in bad files; first: {msg}"
        raise VramplanError(msg)
    if code == 1:
        sys.exit(1)


def outcome_line(o) -> str:
    """One line per plan: ``ok``/``FAIL`` with the setup and the numbers, or ``cannot check: reason`` /
    ``bad file: reason`` with where."""
    if o.estimate is not None:
        r = o.to_dict()
        return check_line(r, o.estimate.to_dict() | {"model": o.model})
    where = o.file + (f" plan {o.plan}" if o.plan is not None and o.count > 1 else "")
    if o.status == "cannot-check":
        return f"cannot check: {o.reason} · {where}"
    reason = o.reason or ""
    return f"bad file: {reason}" if reason.startswith(o.file) else f"bad file: {reason} · {where}"


def check_line(d: dict, plan_json: dict) -> str:
    """``ok   <setup> · 14.20 / 23.99 GiB on rtx-4090 (headroom 9.79 GiB) · file plan 1`` (FAIL when it does not fit)."""
    margin = f", {d['margin']:.0%} margin" if d["margin"] else ""
    where = f"{d['file']}" + (f" plan {d['plan']}" if d["plan"] else "") + (f" ({d['name']})" if d["name"] else "")
    return (f"{'ok  ' if d['fits'] else 'FAIL'} {setup_line(plan_json)} · {gib(d['device_used_bytes'])} / "
            f"{gib(d['capacity_bytes'])} GiB on {d['gpu']} (headroom {gib(d['headroom_bytes'])} GiB{margin}) · {where}")
