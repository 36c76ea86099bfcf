"""Ctrl-C while the ``vramplan`` command starts: one line and exit 130, never a ``KeyboardInterrupt`` traceback.

Imported first by ``vramplan/__init__.py``, before anything else of the package, so the handler is in place
from the package's first instruction (the console script and ``python -m vramplan`` both import the package
before any of its code runs). It imports nothing but the interpreter's built-in ``_signal`` (``signal`` itself
would import ``enum`` and ``functools``, about 10 ms, the window this module closes).

While the command starts (the package, click, the command's own module and the estimator it pulls in),
Ctrl-C ends the process at once: nothing has been written yet. Once the command's module is imported
(``vramplan.cli.main.LazyGroup.get_command``) Python's own handler is given back, so that a Ctrl-C while the
command runs raises ``KeyboardInterrupt`` and every atomic write cleans up after itself
(``vramplan.cli.main.main`` turns it into the same line and exit 130).

What this cannot reach: the interpreter's own start-up before the package is imported (``site`` and its
``.pth`` files, and the ``import re`` at the top of the console script pip writes). A Ctrl-C there is
CPython's, which prints its own traceback; no code of a package runs that early.
"""

# no ``from __future__ import annotations``: importing ``__future__`` would be the one import here; the
# annotations below are valid at run time on Python >= 3.10
import _signal  # the built-in module behind ``signal``: no import cost
import os
import sys

#: what the interrupted command writes on stderr before exiting with code 130
ABORTED = b"vramplan: aborted\n"


def interrupted_early(signum: int, frame: object) -> None:
    """SIGINT before the command runs: one line and exit 130 at once (nothing has been written yet)."""
    os.write(2, ABORTED)
    os._exit(130)


def run_as_program(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process is the ``vramplan`` command (the console script, or ``python -m vramplan`` — while
    ``-m`` imports the package, ``sys.argv[0]`` is still ``"-m"``, then the path of ``__main__.py``), not a
    program or test importing vramplan, whose Ctrl-C must stay its own."""
    argv = sys.argv if argv is None else argv
    orig = list(getattr(sys, "orig_argv", ()) if orig_argv is None else orig_argv)
    arg0 = argv[0] if argv and argv[0] else ""
    name = os.path.basename(arg0)
    if name in ("vramplan", "vramplan.exe", "vramplan-script.py"):
        return True
    if name == "__main__.py" and os.path.basename(os.path.dirname(arg0)) == "vramplan":
        return True
    if arg0 == "-m" and "-m" in orig:
        i = orig.index("-m")
        return i + 1 < len(orig) and orig[i + 1] == "vramplan"
    return False


def install() -> bool:
    """Install :func:`interrupted_early` for SIGINT when this process is the command and SIGINT still has
    Python's default handler (an embedding program's own handler is left alone). Returns whether it did."""
    if run_as_program() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, interrupted_early)
        return True
    return False


def installed() -> bool:
    """Whether SIGINT is still handled by :func:`interrupted_early`."""
    return _signal.getsignal(_signal.SIGINT) is interrupted_early


def restore() -> None:
    """Give SIGINT back to Python's handler (``KeyboardInterrupt``) if :func:`interrupted_early` holds it."""
    if installed():
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
