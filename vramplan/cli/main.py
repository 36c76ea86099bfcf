"""The ``vramplan`` command: a click group whose commands live one per module in this package.

Errors the user can fix (:class:`~vramplan.errors.VramplanError`, click usage errors) become one line on
stderr and exit code 2, never a traceback. Exit code 1 is reserved for "does not fit".
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import startup
from ..errors import VramplanError
from ..version import __version__

#: command name -> "module:attribute"; imported only when the command runs, so ``plan`` loads no other
#: command. ``vramplan --help`` imports them all, to show each command's own short help (no second copy).
COMMANDS = {
    "plan": "vramplan.cli.plan:plan",
    "params": "vramplan.cli.params:params",
    "models": "vramplan.cli.models:models",
    "gpus": "vramplan.cli.gpus:gpus",
    "profile": "vramplan.cli.profile:profile",
    "report": "vramplan.cli.report:report",
    "validate": "vramplan.cli.validate:validate",
    "fit": "vramplan.cli.fit:fit",
    "sweep": "vramplan.cli.sweep:sweep",
    "check": "vramplan.cli.check:check",
    "serve": "vramplan.cli.serve:serve",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is looked up.

    The command list in ``--help`` is click's own :meth:`click.Group.format_commands`: each row is the
    command's ``short_help`` (or the first sentence of its docstring), read from the command itself.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        # the command's imports are done: from here a Ctrl-C raises KeyboardInterrupt, so that an atomic write
        # under way cleans up, and main() turns it into one line and exit 130 (vramplan/startup.py)
        startup.restore()
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(version=__version__, prog_name="vramplan")
@click.option("--no-cache", is_flag=True,
              help="Neither read nor write the on-disk cache of model shapes built on the meta device (the same as "
                   "VRAMPLAN_NO_CACHE=1; vramplan/shapes/cache.py).")
def cli(no_cache: bool = False) -> None:
    """vramplan: exact GPU-memory planning for LoRA, QLoRA, full fine-tuning and inference of LLMs."""
    if no_cache:
        import os

        os.environ["VRAMPLAN_NO_CACHE"] = "1"


#: the longest error message printed: a longer one (click quoting a 5,000-character value, a message that
#: quotes what it was given whole) keeps its first and last characters around "...", as one line
MAX_ERROR_CHARS = 480


def one_line(message: str) -> str:
    """``message`` as one line of at most :data:`MAX_ERROR_CHARS` characters (the contract's "one line")."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    if len(text) <= MAX_ERROR_CHARS:
        return text
    half = (MAX_ERROR_CHARS - 40) // 2
    return f"{text[:half]}...[{len(text) - 2 * half:,} characters cut]...{text[-half:]}"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group, turning user errors into one line and exit code 2."""
    try:
        rv = cli.main(args=argv, prog_name="vramplan", standalone_mode=False)
    except VramplanError as exc:
        click.echo(f"vramplan: error: {one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"vramplan: error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("vramplan: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
