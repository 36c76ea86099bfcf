"""``vramplan ARGS`` through the console entry point, for tests: user errors become one line on stderr and exit 2,
as a user sees them (``vramplan.cli.main.main``), and stdout and stderr stay apart (``Result.stdout``/``.stderr``)."""

from __future__ import annotations

import click
from click.testing import CliRunner, Result


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _entry(args: tuple[str, ...]) -> None:
    from vramplan.cli.main import main

    main(list(args))


def vp(*args: str) -> Result:
    """``vramplan ARGS`` through the real entry point (user errors -> one line on stderr, exit 2)."""
    return CliRunner().invoke(_entry, list(args), catch_exceptions=False)
