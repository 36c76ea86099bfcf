"""Helpers for the planner tests: run the real ``vramplan`` entry point (exit codes 0/1/2) through CliRunner."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner, Result

from vramplan.cli.main import main


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _entry(args: tuple[str, ...]) -> None:
    main(list(args))


def vp(*args: str) -> Result:
    """``vramplan ARGS`` through :func:`vramplan.cli.main.main` (user errors -> one line, exit 2)."""
    return CliRunner().invoke(_entry, list(args), catch_exceptions=False)


def vp_json(*args: str, codes: tuple[int, ...] = (0, 1)):
    r = vp(*args, "--json")
    assert r.exit_code in codes, (r.exit_code, r.stderr)
    return json.loads(r.stdout)

