"""vramplan.io: bounded reads, atomic writes that keep permissions and leave nothing behind, outputs that never
replace an input. Expected values come from the operating system (stat, os.umask) and the JSON/YAML specs."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vramplan import io
from vramplan.errors import VramplanError

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="O_TMPFILE and /proc are Linux")


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


# ------------------------------------------------------------------------------------------------ writing
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o755])
def test_replaced_file_keeps_its_mode(tmp_path, mode):
    p = tmp_path / "out.html"
    p.write_text("old")
    os.chmod(p, mode)
    io.atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert _mode(p) == mode


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_gets_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        io.atomic_write_text(tmp_path / "new.csv", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new.csv") == 0o666 & ~umask


def test_named_fallback_keeps_mode_and_umask(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_write_tmpfile", lambda *a: False)
    p = tmp_path / "a.json"
    p.write_text("old")
    os.chmod(p, 0o600)
    io.atomic_write_text(p, "new")
    assert (p.read_text(), _mode(p)) == ("new", 0o600)
    io.atomic_write_text(tmp_path / "b.json", "x")
    assert _mode(tmp_path / "b.json") == 0o666 & ~_umask()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_symlink_target_is_replaced_and_link_kept(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    os.chmod(real, 0o600)
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    io.atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new" and _mode(real) == 0o600


def test_write_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(io.OutputPathError, match="cannot write it") as e:
        io.atomic_write_text(tmp_path / "file" / "out.csv", "x")
    assert "\n" not in str(e.value) and isinstance(e.value, OSError)
    with pytest.raises(io.OutputPathError, match="is a folder"):
        io.atomic_write_text(tmp_path, "x")


_KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    from vramplan import io
    if sys.argv[2] == "named":
        io._write_tmpfile = lambda *a: False
    real = io._write_all
    def slow(fd, data):
        os.write(fd, data[:10])
        print("writing", flush=True)
        time.sleep(60)
    io._write_all = slow
    io.atomic_write_text(sys.argv[1], "x" * 1000)
""")


def _kill_mid_write(target: Path, how: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target), how], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


@linux_only
def test_sigkill_mid_write_leaves_nothing(tmp_path):
    target = tmp_path / "sweep.csv"
    target.write_text("old")
    _kill_mid_write(target, "tmpfile")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["sweep.csv"]
    assert target.read_text() == "old"


def test_sigkill_with_named_temp_is_cleaned_on_next_write(tmp_path):
    target = tmp_path / "sweep.csv"
    target.write_text("old")
    _kill_mid_write(target, "named")
    left = sorted(x.name for x in tmp_path.iterdir())
    assert len(left) == 2 and left[0].startswith(".sweep.csv.") and left[0].endswith(".vramplan.tmp")
    assert target.read_text() == "old"
    io.atomic_write_text(target, "new")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["sweep.csv"]


def test_stale_cleanup_spares_running_writers_and_other_files(tmp_path):
    target = tmp_path / "r.json"
    mine = tmp_path / f".r.json.{os.getpid()}.abcd1234.vramplan.tmp"     # this process: a writer still running
    foreign = tmp_path / ".r.json.notours.tmp"
    other_target = tmp_path / ".q.json.1.abcd.vramplan.tmp"
    for p in (mine, foreign, other_target):
        p.write_text("x")
    io.atomic_write_text(target, "y")
    assert mine.exists() and foreign.exists() and other_target.exists()
    old = time.time() - io.STALE_TEMP_SECONDS - 10
    os.utime(mine, (old, old))
    io.atomic_write_text(target, "z")
    assert not mine.exists() and foreign.exists()


# ------------------------------------------------------------------------------------------------ reading
def test_refuses_non_regular_files_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t = time.monotonic()
    with pytest.raises(io.InputFileError, match="FIFO"):
        io.read_text(fifo)
    assert time.monotonic() - t < 1, "must not block in open()"
    with pytest.raises(io.InputFileError, match="a device"):
        io.read_text("/dev/zero")
    with pytest.raises(io.InputFileError, match="a folder"):
        io.read_text(tmp_path)
    with pytest.raises(io.InputFileError, match="no such file"):
        io.read_text(tmp_path / "missing")


def test_size_cap(tmp_path):
    p = tmp_path / "big.json"
    p.write_bytes(b" " * 1001)
    with pytest.raises(io.InputFileError, match="1,001 bytes, more than the 1,000 bytes"):
        io.read_text(p, 1000)
    assert io.read_text(p, 1001) == " " * 1001


@pytest.mark.parametrize(("data", "words"), [
    ("{}".encode("utf-16"), "UTF-16"),
    ("{}".encode("utf-16-le"), "zero byte at offset 1"),
    (b"\x00\xff\xfe", "zero bytes"),
    (b"\x7fELF\x02\x01\x01\x00\x00", "zero byte at offset 7"),
    (b'{"a": "caf\xe9"}', "byte 0xe9 at offset 10"),
])
def test_encoding_errors_name_the_problem(tmp_path, data, words):
    p = tmp_path / "config.json"
    p.write_bytes(data)
    with pytest.raises(io.InputFileError) as e:
        io.read_json(p)
    assert words in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_utf8_bom_is_skipped(tmp_path):
    p = tmp_path / "c.json"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert io.read_json(p) == {"a": 1}


@pytest.mark.parametrize("depth", [io.MAX_DEPTH + 1, 100_000])
def test_depth_limit(depth):
    with pytest.raises(io.InputFileError, match="deeper"):
        io.parse_json("[" * depth + "]" * depth, "x.json")
    with pytest.raises(io.InputFileError, match="deeper"):
        io.parse_yaml("[" * depth + "]" * depth, "x.yaml")
    ok = io.MAX_DEPTH
    assert io.parse_json("[" * ok + "]" * ok, "x.json") is not None


def test_yaml_billion_laughs_refused_fast_and_short():
    names = "abcdefghij"
    doc = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip(names[:-1], names[1:], strict=True))
    t = time.monotonic()
    with pytest.raises(io.InputFileError, match="alias") as e:
        io.parse_yaml(doc, "lol.yaml")
    assert time.monotonic() - t < 2 and len(str(e.value)) < 300 and "lol, lol" not in str(e.value)


def test_yaml_recursive_alias_and_plain_aliases():
    with pytest.raises(io.InputFileError, match="recursive"):
        io.parse_yaml("a: &a [1, *a]\n", "r.yaml")
    assert io.parse_yaml("a: &x {r: 8}\nb: *x\n", "ok.yaml") == {"a": {"r": 8}, "b": {"r": 8}}


def test_yaml_and_json_syntax_errors_are_one_line():
    with pytest.raises(io.InputFileError, match=r"not YAML: .* at line 2, column \d+"):
        io.parse_yaml("a: 1\n b: [\n", "bad.yaml")
    with pytest.raises(io.InputFileError, match="not JSON: Expecting value at line 1, column 7"):
        io.parse_json('{"a": }', "bad.json")
    with pytest.raises(io.InputFileError, match="Exceeds the limit"):
        io.parse_json("1" * 5000, "big.json")


def test_error_class_is_the_callers():
    class MyError(VramplanError):
        pass

    with pytest.raises(MyError):
        io.read_text("/dev/null/x", error=MyError)


# ------------------------------------------------------------------------------------------------ outputs
def test_output_that_is_an_input_is_refused(tmp_path):
    cfg = tmp_path / "cfg" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(cfg)
    hard = tmp_path / "hard.json"
    os.link(cfg, hard)
    for out in (cfg, link, hard, tmp_path / "cfg" / ".." / "cfg" / "config.json"):
        with pytest.raises(io.OutputPathError, match="is an input of this command"):
            io.refuse_overwriting_input(out, [cfg], "--html")
    with pytest.raises(io.OutputPathError):          # the input given through the link
        io.refuse_overwriting_input(cfg, [link])
    io.refuse_overwriting_input(tmp_path / "other.html", [cfg, None])
    io.refuse_overwriting_input(None, [cfg])


def test_check_output_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(io.OutputPathError, match="is a file, not a folder"):
        io.check_output_path(tmp_path / "file" / "out.csv")
    with pytest.raises(io.OutputPathError, match="is a folder"):
        io.check_output_path(tmp_path)
    io.check_output_path(tmp_path / "new" / "deeper" / "out.csv")      # created on write
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        try:
            with pytest.raises(io.OutputPathError, match="not writable"):
                io.check_output_path(ro / "out.csv")
        finally:
            os.chmod(ro, 0o700)


def test_streams_are_written_in_place(tmp_path):
    r = subprocess.run([sys.executable, "-c", "from vramplan import io; io.atomic_write_text('/dev/stdout', 'hi')"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "hi"), r.stderr
