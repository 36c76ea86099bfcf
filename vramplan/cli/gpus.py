"""``vramplan gpus``: the GPU catalogue, or (``--fits MODEL``) which cards fit a setup."""

from __future__ import annotations

import sys

import click

from .options import apply, json_option, setup_from_options, setup_option_list, trust_option
from .render import echo_json, gib, setup_line, table


def _setup_options(fn):
    return apply([*setup_option_list(), trust_option])(fn)


@click.command(short_help="List the GPU catalogue, or which cards fit a setup.")
@click.option("--fits", "fits_model", default=None, metavar="MODEL",
              help="Judge every card for MODEL with the plan options below: smallest card that fits first.")
@_setup_options
@click.option("--margin", default="0%", show_default=True, help="With --fits: headroom kept free, e.g. 10%.")
@click.option("--prices", "prices_path", default=None, type=click.Path(dir_okay=False),
              help="With --fits: a YAML file {gpu-name: usd_per_hour} (or a list of {gpu, usd_per_hour}); "
                   "cards are then ranked by price, cards without a price last.")
@json_option
def gpus(*, as_json: bool, fits_model: str | None, margin: str, prices_path: str | None, trust_remote_code: bool,
         **opts) -> None:
    """List the GPU catalogue: memory as the driver reports it (MiB = 2**20 bytes), bf16 support, architecture.

    With --fits MODEL and the options of `vramplan plan`, list every card with the setup's device memory on
    it, the headroom and the verdict, the smallest card that fits first (with --prices, the cheapest).
    Exit code 1 when no card fits.
    """
    from ..profiles import gpu_catalogue

    ctx = click.get_current_context()
    if fits_model is None:
        given = [p.opts[0] for p in ctx.command.params
                 if p.name not in ("as_json", "fits_model")
                 and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)}: needs --fits MODEL (plain `vramplan gpus` lists the catalogue)")
        cards = gpu_catalogue()
        if as_json:
            echo_json([{"name": g.name, "memory_mib": g.memory_mib, "memory_bytes": g.memory_bytes,
                        "marketing_gb": g.marketing_gb, "architecture": g.architecture, "bf16": g.bf16,
                        "vendor": g.vendor, "aliases": list(g.aliases)} for g in cards])
            return
        click.echo(table(["name", "memory MiB", "memory GiB", "arch", "bf16"],
                         [[g.name, f"{g.memory_mib:,}", f"{g.memory_bytes / 2**30:.1f}", g.architecture,
                           "yes" if g.bf16 else "no"] for g in cards], "lrrll"))
        return

    from ..estimate import estimate
    from ..planner import card_verdicts, load_prices
    from ..profiles import resolve_model
    from .plan import ignored_warnings, parse_margin
    from .render import warn

    setup = setup_from_options(opts)
    for w in ignored_warnings(opts, setup):
        warn(w)
    m = parse_margin(margin)
    prices = load_prices(prices_path) if prices_path else None
    resolved = resolve_model(fits_model, trust_remote_code=trust_remote_code)
    verdicts = card_verdicts(resolved.spec, setup, m, prices=prices)
    plan_json = estimate(resolved.spec, setup).to_dict()
    plan_json["model"] = resolved.name
    if as_json:
        echo_json({"model": resolved.name, "setup": plan_json["setup"], "margin": m,
                   "ranked_by": "price" if prices is not None else "memory",
                   "cards": [v.to_dict() for v in verdicts]})
    else:
        headers = ["gpu", "memory GiB", "device used GiB", "headroom GiB", "verdict"]
        align = "lrrrl"
        if prices is not None:
            headers.append("USD/hour")
            align += "r"
        rows = []
        for v in verdicts:
            row = [v.gpu, gib(v.capacity_bytes), gib(v.device_used_bytes), gib(v.headroom_bytes),
                   "fits" if v.fits else "does not fit"]
            if prices is not None:
                row.append(f"{v.usd_per_hour:.2f}" if v.usd_per_hour is not None else "")
            rows.append(row)
        margin_note = f" · {m:.0%} margin" if m else ""
        click.echo(setup_line(plan_json) + margin_note)
        click.echo(table(headers, rows, align))
        click.echo("GiB = 2**30 bytes; device used includes the card's CUDA context")
    if not any(v.fits for v in verdicts):
        sys.exit(1)
