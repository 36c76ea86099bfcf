"""Ctrl-C at every moment of ``vramplan``'s start-up is one line and exit 130, no traceback (issue 18).

A signal sent after a sleep lands at a random point; these tests make it land exactly: a meta-path finder,
installed by a ``sitecustomize`` on ``PYTHONPATH`` before the package is imported, sends SIGINT to the process
the moment a given module is about to be imported: the package's imports after its first line (``from
.startup import install``, which installs the handler), click, the command's module and what it pulls in,
and, once the command's imports are done, the estimator's own lazy imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

_HOOK = textwrap.dedent("""
    import os, signal, sys

    TARGET = os.environ["VRAMPLAN_TEST_SIGINT_AT"]

    class _Finder:
        def find_spec(self, name, path=None, target=None):
            if name == TARGET:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)      # handled before the next bytecode: inside the import
            return None

    sys.meta_path.insert(0, _Finder())
""")

#: modules imported while ``vramplan plan qwen3-0.6b`` starts, in order (the first is the package's first line)
MODULES = ["vramplan.hooks", "vramplan.version", "vramplan.cli", "click", "click.core",
           "vramplan.errors", "vramplan.cli.plan", "vramplan.cli.options", "vramplan.setup", "vramplan.estimate",
           "vramplan.estimate.estimator", "vramplan.profiles"]


def _run(tmp_path: Path, at: str, how: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(_HOOK)
    env = {**os.environ, "VRAMPLAN_TEST_SIGINT_AT": at, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if how == "python -m":
        cmd = [sys.executable, "-m", "vramplan", "plan", "qwen3-0.6b"]
    else:      # the console script as pip writes it, with its name (its first lines import re and sys)
        script = tmp_path / "vramplan"
        script.write_text(f"#!{sys.executable}\nimport re\nimport sys\nfrom vramplan.cli.main import main\n"
                          "if __name__ == '__main__':\n    sys.exit(main())\n")
        cmd = [sys.executable, str(script), "plan", "qwen3-0.6b"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("at,how", [(m, "console script") for m in MODULES]
                         + [(m, "python -m") for m in ("vramplan.hooks", "click", "vramplan.cli.plan")])
def test_ctrl_c_while_the_command_starts_is_one_line_and_130(tmp_path, at, how):
    r = _run(tmp_path, at, how)
    # once the command runs, click echoes a newline first (after the terminal's ^C), then the same line
    assert (r.returncode, r.stderr.lstrip("\n"), r.stdout) == (130, "vramplan: aborted\n", ""), \
        (at, r.returncode, r.stderr[-3000:])


def test_ctrl_c_once_the_command_runs_is_still_one_line_and_130(tmp_path):
    """After the command's imports Python's handler is back (KeyboardInterrupt, so writes clean up): the
    estimate's own lazy imports are interrupted that way, and main() says the same line."""
    r = _run(tmp_path, "vramplan.shapes.from_config", "console script")
    assert (r.returncode, r.stdout) == (130, ""), r.stderr[-3000:]
    assert r.stderr.endswith("vramplan: aborted\n") and "Traceback" not in r.stderr, r.stderr[-3000:]


def test_the_hook_fires(tmp_path):
    """The test's own check: without the package's handler the same signal is a KeyboardInterrupt traceback."""
    (tmp_path / "sitecustomize.py").write_text(_HOOK)
    env = {**os.environ, "VRAMPLAN_TEST_SIGINT_AT": "json", "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", "import json"], capture_output=True, text=True, timeout=60, env=env)
    assert "KeyboardInterrupt" in r.stderr and r.returncode != 0, r.stderr


def test_a_program_importing_vramplan_keeps_its_ctrl_c():
    r = subprocess.run([sys.executable, "-c", "import signal, vramplan, vramplan.cli.main; "
                        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "True", r.stderr


@pytest.mark.parametrize("argv,orig,expected", [
    (["/usr/bin/vramplan", "plan"], None, True),
    (["/x/site-packages/vramplan/__main__.py"], None, True),
    (["-m", "plan"], ["/usr/bin/python3", "-m", "vramplan", "plan"], True),
    (["-m", "plan"], ["/usr/bin/python3", "-X", "importtime", "-m", "vramplan", "plan"], True),
    (["-m", "x.json"], ["/usr/bin/python3", "-m", "vramplan.profiler.worker", "x.json"], False),
    (["-c"], ["/usr/bin/python3", "-c", "import vramplan"], False),
    (["/usr/bin/pytest"], None, False),
    ([""], None, False),
])
def test_run_as_program(argv, orig, expected):
    from vramplan.startup import run_as_program

    assert run_as_program(argv, orig or [sys.executable, *argv]) is expected
