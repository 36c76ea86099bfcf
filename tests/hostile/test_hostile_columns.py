"""Fuzzing ``sweep --columns`` (hypothesis, derandomized): any text is a table with exactly the named columns
(exit 0) or one error line (exit 2), never a traceback; a written table never holds an unknown column."""

from __future__ import annotations

import csv
import io

from hostile_helpers import vp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vramplan.cli.sweep import COLUMN_GROUPS, columns

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

KNOWN = columns(["t4"])
names = st.one_of(st.sampled_from([*KNOWN, *COLUMN_GROUPS, "--grad-ckpt", "lora-dropout", "rnak", "t5_fits",
                                   "run_peak_reserved_bytes", "", " ", "model,", "é", "\x00", "a" * 300]),
                  st.text(max_size=12))


@FUZZ
@given(items=st.lists(names, min_size=1, max_size=4))
def test_fuzz_columns(items):
    text = ",".join(items)
    r = vp("sweep", "--model", "qwen3-0.6b", "--rank", "8,16", "--gpu", "t4", "--columns", text, codes=(0, 2))
    if r.exit_code == 0:
        header = next(csv.reader(io.StringIO(r.stdout)))
        assert header and set(header) <= set(KNOWN), header
        assert len(header) == len(set(header)), "no column twice"
