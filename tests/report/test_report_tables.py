"""Markdown and CSV exports: one unit per column, named in its header; numbers from the saved bytes."""

from __future__ import annotations

import csv
import io

from report_synthetic import run_record

from vramplan.report import bench_rows, collect, run_views, to_csv, to_markdown
from vramplan.report.tables import column_for

GiB = 2**30

HEADERS = ["run", "model", "method", "setup", "GPU", "status",
           "measured peak allocated (GiB)", "estimated peak allocated (GiB)", "error peak allocated (%)",
           "measured device used (GiB)", "estimated device used (GiB)", "error device used (%)",
           "measured peak RSS (GiB)"]


def _rows(records_dir):
    return bench_rows(run_views(collect([str(records_dir / n) for n in ("ok.json", "oom.json", "cpu.json")])))


def test_column_units_come_from_key_suffix():
    assert column_for("peak_allocated_bytes", []).header == "peak allocated (GiB)"
    assert column_for("error_pct", []).header == "error (%)"
    assert column_for("wall_s", []).header == "wall (s)"
    assert column_for("batch", [1, 2]).kind == "num"
    assert column_for("gpu", ["A100"]).header == "GPU"


def test_csv_header_units_and_values(records_dir):
    rec = run_record()
    table = list(csv.reader(io.StringIO(to_csv(_rows(records_dir)))))
    assert table[0] == HEADERS
    assert all(h.count("(") <= 1 for h in table[0]), "one unit per column"
    ok = dict(zip(table[0], table[1], strict=True))
    assert ok["measured peak allocated (GiB)"] == f"{rec['measured']['peak_allocated_bytes'] / GiB:.3f}"
    assert ok["error peak allocated (%)"] == f"{rec['error']['peak_allocated_bytes']['error_pct']:.2f}"
    assert ok["measured peak RSS (GiB)"] == ""      # GPU run: no host RSS column value
    oom = dict(zip(table[0], table[2], strict=True))
    assert oom["status"] == "oom" and oom["error peak allocated (%)"] == ""
    cpu = dict(zip(table[0], table[3], strict=True))
    assert cpu["GPU"] == "cpu" and cpu["measured peak allocated (GiB)"] == ""


def test_markdown_table(records_dir):
    md = to_markdown(_rows(records_dir)).splitlines()
    assert md[0] == "| " + " | ".join(HEADERS) + " |"
    assert md[1] == "|" + "|".join(["---"] * 6 + ["---:"] * 7) + "|"
    assert len(md) == 2 + 3
    cells = [c.strip() for c in md[2].strip("|").split(" | ")]
    assert len(cells) == len(HEADERS)
    assert cells[8] == f"{run_record()['error']['peak_allocated_bytes']['error_pct']:+.1f}"


def test_markdown_escapes_pipes():
    md = to_markdown([{"setup": "a|b", "x_bytes": GiB}])
    assert "a\\|b" in md and "| 1.00 |" in md
