"""--lengths histogram files and trace files go through the bounded reader (issue 18): a FIFO is refused without
blocking, a non-UTF-8 file is one line naming it, a trace nested past the depth limit is refused."""

from __future__ import annotations

import os

import pytest

from vramplan.allocator.lengths import LengthsError, parse_lengths
from vramplan.allocator.trace import TraceError, read_trace


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_fifo_as_histogram_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "lengths.csv"
    os.mkfifo(fifo)
    with pytest.raises(LengthsError, match="FIFO"):
        parse_lengths(str(fifo))


def test_a_utf16_histogram_is_named(tmp_path):
    f = tmp_path / "lengths.csv"
    f.write_bytes("512,3\n1024,1\n".encode("utf-16"))
    with pytest.raises(LengthsError, match="UTF-16"):
        parse_lengths(str(f))


def test_a_histogram_still_reads(tmp_path):
    f = tmp_path / "lengths.csv"
    f.write_text("512,3\n1024,1\n")
    assert parse_lengths(str(f)) is not None


def test_a_deep_trace_is_refused(tmp_path):
    f = tmp_path / "trace.json"
    f.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(TraceError, match="deeper"):
        read_trace(f)
