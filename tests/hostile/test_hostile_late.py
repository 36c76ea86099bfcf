"""Hostile inputs of the report and validate commands and Ctrl-C at start-up (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_helpers import billion_laughs, digest, vp

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs and /dev/zero")


def _record(path: Path) -> Path:
    path.write_text(json.dumps({"schema": "vramplan.run/1", "status": "ok"}))
    return path


# ------------------------------------------------------------------------------------------------ report
@pytest.mark.parametrize("how", ["same", "symlink", "hardlink", "listed-in-summary", "in-folder"])
def test_report_out_onto_an_input_is_refused(tmp_path, how):
    pytest.importorskip("plotly")
    run = _record(tmp_path / "run.json")
    before = digest(run)
    args, out = [str(run)], str(run)
    if how == "symlink":
        (tmp_path / "l.html").symlink_to(run)
        out = str(tmp_path / "l.html")
    elif how == "hardlink":
        os.link(run, tmp_path / "h.html")
        out = str(tmp_path / "h.html")
    elif how == "listed-in-summary":
        (tmp_path / "summary.json").write_text(json.dumps({"runs": ["run.json"]}))
        args = [str(tmp_path / "summary.json")]
    elif how == "in-folder":
        args = [str(tmp_path)]
    for fmt in ("html", "csv"):
        r = vp("report", *args, "-o", out, "--format", fmt, codes=(2,))
        assert "is an input of this command" in r.stderr
    assert digest(run) == before


@linux_only
def test_report_fifo_and_devices_listed_in_a_summary(tmp_path):
    pytest.importorskip("plotly")
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "summary.json").write_text(json.dumps({"runs": ["pipe.json", "/dev/zero", "missing.json"]}))
    t = time.monotonic()
    r = vp("report", str(tmp_path / "summary.json"), "-o", str(tmp_path / "out.html"), codes=(0, 2))
    assert time.monotonic() - t < 10
    assert "FIFO" in r.stderr and "device" in r.stderr


def test_report_bad_bytes(tmp_path):
    pytest.importorskip("plotly")
    (tmp_path / "a.json").write_bytes(json.dumps({"x": 1}).encode("utf-16"))
    (tmp_path / "b.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    (tmp_path / "c.json").write_bytes(b'{"a": ' + b"1" * 5000 + b"}")
    vp("report", str(tmp_path), "-o", str(tmp_path / "out.html"), codes=(0, 2))


def test_report_output_location_checked_first(tmp_path):
    run = _record(tmp_path / "run.json")
    (tmp_path / "f").write_text("x")
    vp("report", str(run), "-o", str(tmp_path / "f" / "out.html"), codes=(2,))


# ------------------------------------------------------------------------------------------------ validate
@pytest.mark.parametrize("text", [
    "1: 2\nruns: []\n", "runs: [{model: gpt2, 5: 1}]\n", "runs: [{model: gpt2, batch: abc}]\n",
    "runs: [{model: {a: 1}}]\n", "budget_minutes: .nan\nruns: [{model: gpt2}]\n",
    "budget_minutes: .inf\nruns: [{model: gpt2}]\n", "budget_minutes: true\nruns: [{model: gpt2}]\n",
    "runs: [{model: gpt2, rank: .inf}]\n", "runs: [{model: gpt2, grad_ckpt: maybe}]\n",
    billion_laughs(9), "runs: " + "[" * 100_000 + "]" * 100_000 + "\n",
])
def test_validate_matrices(tmp_path, text):
    m = tmp_path / "matrix.yaml"
    m.write_text(text)
    vp("validate", str(m), "--dry-run", "--out", str(tmp_path / "v"), codes=(2,))


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf"])
def test_validate_budget_flag(tmp_path, value):
    m = tmp_path / "matrix.yaml"
    m.write_text("runs: [{model: gpt2}]\n")
    vp("validate", str(m), "--dry-run", "--out", str(tmp_path / "v"), "--budget-minutes", value, codes=(2,))


@linux_only
def test_validate_fifo_matrix(tmp_path):
    os.mkfifo(tmp_path / "m.yaml")
    vp("validate", str(tmp_path / "m.yaml"), "--dry-run", "--out", str(tmp_path / "v"), codes=(2,))


# ------------------------------------------------------------------------------------------------ Ctrl-C
_EARLY = """
import os, signal, sys, time
sys.argv[0] = sys.argv[1]                  # as the console script / python -m vramplan name themselves
import vramplan.cli.main                    # the command's imports: the early handler is installed here
os.kill(os.getpid(), signal.SIGINT)         # Ctrl-C before main() runs
time.sleep(5)
print("not interrupted")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("arg0", ["/usr/local/bin/vramplan", "/site-packages/vramplan/__main__.py"])
def test_ctrl_c_before_the_command_runs_is_one_line(arg0):
    r = subprocess.run([sys.executable, "-c", _EARLY, arg0], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr, r.stdout) == (130, "vramplan: aborted\n", "")


def test_importing_the_cli_leaves_ctrl_c_to_the_importer():
    """A program or test importing the CLI keeps Python's KeyboardInterrupt."""
    r = subprocess.run([sys.executable, "-c", "import signal, vramplan.cli.main; "
                        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "True", r.stderr


def test_report_warns_for_a_wrong_schema_record(tmp_path):
    pytest.importorskip("plotly")
    rec = tmp_path / "other.json"
    rec.write_text(json.dumps({"schema": "someone-else/1", "status": "ok"}))
    r = vp("report", str(rec), "-o", str(tmp_path / "out.html"), codes=(0,))
    assert f"vramplan: warning: {rec}: schema: 'someone-else/1' is not 'vramplan.run/1'" in r.stderr


@pytest.mark.parametrize("dry_run", [True, False])
def test_validate_refuses_an_unwritable_out_before_any_run(tmp_path, dry_run):
    """A folder under a file was a NotADirectoryError traceback at the first run's mkdir (issue 18)."""
    m = tmp_path / "matrix.yaml"
    m.write_text("runs: [{model: gpt2}]\n")
    (tmp_path / "f").write_text("x")
    r = vp("validate", str(m), "--out", str(tmp_path / "f" / "v"), *(["--dry-run"] if dry_run else []), codes=(2,))
    assert "--out" in r.stderr and "would run" not in r.stderr and "run   " not in r.stderr
