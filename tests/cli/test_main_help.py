"""`vramplan --help`: each command is listed with its own short help, read from the command (one source)."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from vramplan.cli.main import COMMANDS, cli


def _command(name: str) -> click.Command:
    module, attr = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def _own_short_help(cmd: click.Command) -> str:
    """What the command says about itself: ``short_help``, else the first line of its docstring."""
    if cmd.short_help:
        return inspect.cleandoc(cmd.short_help)
    return inspect.cleandoc(cmd.help or "").splitlines()[0]


def _group_help() -> str:
    # A wide terminal, so that no row wraps and each can be compared whole.
    res = CliRunner().invoke(cli, ["--help"], catch_exceptions=False, terminal_width=300)
    assert res.exit_code == 0, res.output
    return res.output


def test_help_lists_exactly_the_registered_commands():
    section = _group_help().split("Commands:\n", 1)[1]
    listed = [m.group(1) for m in re.finditer(r"^  (\S+)  ", section, re.MULTILINE)]
    assert listed == sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_row_is_the_commands_own_short_help(name):
    cmd = _command(name)
    own = _own_short_help(cmd)
    assert own and own == own.strip() and "\n" not in own, f"{name}: short help must be one non-empty line"
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^  (\S+) +(.+)$", _group_help(), re.MULTILINE)}
    assert rows[name] == own, f"`vramplan --help` shows {rows[name]!r} for {name}, the command says {own!r}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_help_opens_with_its_docstring(name):
    cmd = _command(name)
    res = CliRunner().invoke(cli, [name, "--help"], catch_exceptions=False, terminal_width=300)
    assert res.exit_code == 0, res.output
    first = inspect.cleandoc(cmd.help or "").splitlines()[0]
    assert first and f"\n  {first}" in res.output, f"{name} --help does not open with its docstring"


def test_group_help_imports_no_torch():
    code = ("import sys\nfrom vramplan.cli.main import main\n"
            "try:\n main(['--help'])\nexcept SystemExit: pass\n"
            "bad = [m for m in ('torch','transformers','peft','bitsandbytes','pandas','plotly') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Commands:" in proc.stdout
