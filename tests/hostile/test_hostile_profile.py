"""``profile`` never loses a measurement to its output location (issue 18 class 5): an --out that cannot be
written is refused before anything is measured, and a record whose path fails after the run (the folder removed
or made unwritable meanwhile) is written to a fallback file that a warning names."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from hostile_helpers import vp

from vramplan.profiler.record import fallback_record_path, write_record


def _record() -> dict:
    return {"schema": "vramplan.run/1", "status": "ok", "model": "m", "samples": {"t": [0.0, 0.1]}}


@pytest.mark.parametrize("where", ["under-a-file", "a-folder", "under-a-file.json"])
def test_profile_refuses_an_unwritable_out_before_measuring(tmp_path, where):
    (tmp_path / "f").write_text("x")
    out = {"under-a-file": tmp_path / "f" / "runs", "a-folder": tmp_path / "f" / "x",
           "under-a-file.json": tmp_path / "f" / "run.json"}[where]
    r = vp("profile", "qwen3-0.6b", "--device", "cpu", "--steps", "1", "--out", str(out), codes=(2,))
    assert "--out" in r.stderr and "profiling" not in r.stderr          # refused before the run starts


@pytest.mark.parametrize("blocker", ["under-a-file", "read-only-folder"])
def test_a_record_that_cannot_be_written_goes_to_the_fallback_file(tmp_path, blocker):
    if blocker == "read-only-folder":
        if sys.platform == "win32" or os.geteuid() == 0:
            pytest.skip("root (or Windows) writes into a read-only folder")
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        path = tmp_path / "ro" / f"run-{os.getpid()}-{blocker}.json"
    else:
        (tmp_path / "f").write_text("x")
        path = tmp_path / "f" / f"run-{os.getpid()}-{blocker}.json"
    said: list[str] = []
    written = write_record(_record(), path, said.append)
    try:
        assert written == fallback_record_path(path) and written != path and not path.exists()
        assert json.loads(written.read_text())["samples"] == {"t": [0.0, 0.1]}
        assert len(said) == 1 and str(written) in said[0] and "could not be written" in said[0]
        assert "\n" not in said[0]
    finally:
        written.unlink(missing_ok=True)


def test_a_record_that_can_be_written_stays_where_asked(tmp_path):
    said: list[str] = []
    path = tmp_path / "runs" / "run.json"
    assert write_record(_record(), path, said.append) == path and said == []
    assert json.loads(Path(path).read_text())["status"] == "ok"


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--steps", str(10**400), "--steps must be at most 100,000, got a 401-digit number"),
    ("--steps", "100001", "--steps must be at most 100,000, got 100001"),
    ("--warmup", str(10**30), "--warmup must be at most 100,000"),
])
def test_profile_step_counts_are_bounded(flag, value, words):
    """--steps 10**30 was accepted and ran until killed (issue 18 class 2)."""
    r = vp("profile", "qwen3-0.6b", "--device", "cpu", flag, value, codes=(2,))
    assert words in r.stderr and "profiling" not in r.stderr
