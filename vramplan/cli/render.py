"""All terminal output of the CLI. Renderers read results; they compute nothing."""

from __future__ import annotations

import json
from typing import Any

import click

from ..units import GiB, MiB


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A plain monospace table; ``align`` is one char per column, ``l`` or ``r``."""
    align = align or "l" * len(headers)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            c = str(c)
            out.append(c.rjust(widths[i]) if align[i] == "r" else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def gib(n: int, digits: int = 2) -> str:
    return f"{n / GiB:,.{digits}f}"


def mib(n: int) -> str:
    return f"{n / MiB:,.0f}"


def warn(message: str) -> None:
    click.echo(f"vramplan: warning: {message}", err=True)
