"""``vramplan gpus``: the GPU catalogue."""

from __future__ import annotations

import click

from .options import json_option
from .render import echo_json, table


@click.command(short_help="List the GPU catalogue.")
@json_option
def gpus(*, as_json: bool) -> None:
    """List the GPU catalogue: memory as the driver reports it (MiB = 2**20 bytes), bf16 support, architecture."""
    from ..profiles import gpu_catalogue

    cards = gpu_catalogue()
    if as_json:
        echo_json([{"name": g.name, "memory_mib": g.memory_mib, "memory_bytes": g.memory_bytes,
                    "marketing_gb": g.marketing_gb, "architecture": g.architecture, "bf16": g.bf16,
                    "vendor": g.vendor, "aliases": list(g.aliases)} for g in cards])
        return
    click.echo(table(["name", "memory MiB", "memory GiB", "arch", "bf16"],
                     [[g.name, f"{g.memory_mib:,}", f"{g.memory_bytes / 2**30:.1f}", g.architecture,
                       "yes" if g.bf16 else "no"] for g in cards], "lrrll"))
