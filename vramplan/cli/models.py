"""``vramplan models``: the bundled model profiles."""

from __future__ import annotations

import click

from .options import json_option
from .render import echo_json, table


@click.command(short_help="List the bundled model profiles.")
@json_option
def models(*, as_json: bool) -> None:
    """List the bundled model profiles with their Hub id, family, size and exact parameter count."""
    from ..profiles import model_profiles

    rows = []
    for p in model_profiles().values():
        c = p.config
        rows.append({"name": p.name, "hf_id": p.hf_id, "model_type": c.get("model_type", ""),
                     "params_total": p.params_total, "aliases": list(p.aliases), "source": p.source})
    if as_json:
        echo_json(rows)
        return
    click.echo(table(["name", "hf id", "family", "params"],
                     [[r["name"], r["hf_id"], r["model_type"], f"{r['params_total']:,}"] for r in rows],
                     "lllr"))
