"""Hostile files given to the readers outside the CLI's own inputs (issue 18): a profile's run records
(``load_record``), the worker spec a launcher hands each rank, and the simulator's calibration cache entries.

Each is read through :mod:`vramplan.io`: a FIFO or a device is refused before it is opened (a child process
with a deadline proves that nothing blocks or reads without end), binary and UTF-16 bytes, files over the cap
and JSON nested past :data:`vramplan.io.MAX_DEPTH` are one line naming the file, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vramplan.errors import VramplanError
from vramplan.io import MAX_DEPTH
from vramplan.profiler.record import RecordError, RecordFileError, load_record
from vramplan.simulate import calibrate

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs and /dev/zero")

#: (file bytes, words the one-line error must hold)
BAD_BYTES = [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not text"),
    ("{}".encode("utf-16"), "UTF-16"),
    (b'{"schema": "vramplan.run/1", "status": "\xff"}', "not UTF-8"),
    (b"[" * (MAX_DEPTH + 5) + b"]" * (MAX_DEPTH + 5), "nests"),
    (b"[" * 200_000, "nests"),                                     # deeper than Python's recursion limit
    (b'{"schema": ', "not JSON"),
]


def _child(code: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` with a deadline: a reader that blocks on a FIFO fails the test, never hangs it."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _one_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text[-2000:]
    return lines[0]


# ------------------------------------------------------------------------------------------------ records
@pytest.mark.parametrize("data,words", BAD_BYTES)
def test_a_damaged_run_record_is_one_line(tmp_path, data, words):
    p = tmp_path / "rank0.json"
    p.write_bytes(data)
    with pytest.raises(RecordFileError) as exc:
        load_record(p)
    msg = str(exc.value)
    assert words in msg and str(p) in msg and "\n" not in msg and len(msg) < 400, msg
    assert isinstance(exc.value, VramplanError) and isinstance(exc.value, RecordError)   # callers catch both


def test_a_record_that_is_not_an_object_is_a_record_error(tmp_path):
    p = tmp_path / "rank0.json"
    p.write_text("[1, 2, 3]")
    with pytest.raises(RecordError, match="JSON object, got list"):
        load_record(p)


def test_a_record_over_the_size_cap_is_refused_by_its_size(tmp_path, monkeypatch):
    from vramplan.profiler import record

    monkeypatch.setattr(record, "RECORD_MAX_BYTES", 1000)
    p = tmp_path / "rank0.json"
    p.write_text(json.dumps({"samples": "x" * 5000}))
    with pytest.raises(RecordFileError, match="more than the 1,000 bytes vramplan reads"):
        load_record(p)


_LOAD = "import sys\nfrom vramplan.profiler.record import load_record\ntry:\n    load_record(sys.argv[1])\n" \
        "except Exception as e:\n    print(type(e).__name__, e)\n"


@linux_only
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/urandom"])
def test_a_record_that_is_a_fifo_or_a_device_is_refused_without_reading(tmp_path, kind):
    path = kind
    if kind == "fifo":
        path = str(tmp_path / "rank0.json")
        os.mkfifo(path)
    r = _child(_LOAD, path)
    line = _one_line(r.stdout)
    assert line.startswith("RecordFileError ") and ("FIFO" in line or "a device" in line), line


# ------------------------------------------------------------------------------------------------ worker spec
_WORKER = [sys.executable, "-m", "vramplan.profiler.worker"]


def _worker(path: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_WORKER, str(path)], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, env={**os.environ, "RANK": "0", "WORLD_SIZE": "1"})


@linux_only
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "binary", "deep", "not-an-object", "missing-keys"])
def test_the_worker_refuses_a_bad_spec_with_one_line_and_exit_2(tmp_path, kind):
    p: str | Path = kind
    if kind == "fifo":
        p = tmp_path / "worker.json"
        os.mkfifo(p)
    elif kind != "/dev/zero":
        p = tmp_path / "worker.json"
        p.write_bytes({"binary": b"\x00\x01\x02\xff" * 64, "deep": b"[" * 5000 + b"]" * 5000,
                       "not-an-object": b"[1]", "missing-keys": b'{"launcher": "torchrun"}'}[kind])
    r = _worker(p)
    line = _one_line(r.stderr)
    assert r.returncode == 2 and r.stdout == "" and line.startswith("vramplan: error: "), (r.returncode, r.stderr)
    words = {"fifo": "FIFO", "/dev/zero": "a device", "binary": "not text", "deep": "nests",
             "not-an-object": "lacks launcher", "missing-keys": "lacks setup, options, ranks_dir, model"}[kind]
    assert words in line, line


# ------------------------------------------------------------------------------------------------ calibration cache
def _entry() -> dict:
    return {"per_token_bytes": 1024, "per_bss_bytes": 0, "const_bytes": 512, "first_layer_delta_bytes": 0,
            "key": "k", "versions": {"torch": "2.13.0"}}


def test_a_good_calibration_entry_is_read(tmp_path):
    p = tmp_path / "k.json"
    p.write_text(json.dumps(_entry()))
    assert calibrate.read_cached(p) == calibrate.Calibration(**_entry())


@pytest.mark.parametrize("data,_words", BAD_BYTES)
def test_a_damaged_calibration_entry_is_measured_again(tmp_path, data, _words):
    p = tmp_path / "k.json"
    p.write_bytes(data)
    assert calibrate.read_cached(p) is None


@pytest.mark.parametrize("change", [{"per_token_bytes": "1024"}, {"const_bytes": 1.5}, {"key": 3},
                                    {"versions": []}, {"extra": 1}, {"per_bss_bytes": True}])
def test_a_calibration_entry_with_wrong_types_is_measured_again(tmp_path, change):
    p = tmp_path / "k.json"
    p.write_text(json.dumps({**_entry(), **change}))
    assert calibrate.read_cached(p) is None


def test_an_oversized_calibration_entry_is_not_read(tmp_path):
    p = tmp_path / "k.json"
    p.write_text(json.dumps({**_entry(), "key": "k" * (calibrate.MAX_ENTRY_BYTES + 1)}))
    assert calibrate.read_cached(p) is None


_CACHED = "import sys\nfrom vramplan.simulate.calibrate import read_cached\nprint(read_cached(sys.argv[1]))\n"


@linux_only
@pytest.mark.parametrize("kind", ["fifo", "symlink-to-/dev/zero"])
def test_a_calibration_entry_that_is_a_fifo_or_a_device_does_not_block(tmp_path, kind):
    p = tmp_path / "k.json"
    if kind == "fifo":
        os.mkfifo(p)
    else:
        p.symlink_to("/dev/zero")
    r = _child(_CACHED, str(p))
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr[-2000:]
