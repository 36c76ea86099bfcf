"""``vramplan sweep --columns`` and the default columns (issue 18: a 35-column table hides the answer).

CSV, Markdown and HTML show the model, the method, the options whose values differ between the rows and every
result unless ``--columns`` says otherwise; JSONL records hold every column; names are the option names and
the result names, one line with the closest names on a typo.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from option_names import SETUP_OPTION_NAMES
from planner_helpers import vp

from vramplan.cli.sweep import columns

RESULTS = ["params_trainable", "peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes", "peak_phase",
           "peak_allocated (GiB)", "peak_reserved (GiB)", "device_used (GiB)"]
T4 = ["t4_fits", "t4_headroom_bytes", "t4_headroom (GiB)"]


def _csv(*args: str) -> tuple[list[str], list[dict[str, str]]]:
    r = vp("sweep", *args)
    assert r.exit_code == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    return rows[0], [dict(zip(rows[0], x, strict=True)) for x in rows[1:]]


def test_default_csv_is_the_swept_axes_and_the_results():
    header, rows = _csv("--model", "qwen3-0.6b", "--rank", "8,16", "--batch", "1,2", "--seq", "1024", "--gpu", "t4")
    # --seq has one value: the same in every row, so left out; method is always there (what a row trains)
    assert header == ["model", "method", "batch", "rank", *RESULTS, *T4]
    assert [(r["rank"], r["batch"]) for r in rows] == [("8", "1"), ("16", "1"), ("8", "2"), ("16", "2")]


def test_options_that_vary_because_of_another_are_shown():
    """--method lora,qlora,full: qlora's nf4 base and full's missing rank make quant, rank, grad_ckpt vary."""
    header, rows = _csv("--model", "qwen3-0.6b", "--method", "lora,qlora,full")
    assert {"quant", "rank", "grad_ckpt"} <= set(header)
    assert [r["quant"] for r in rows] == ["none", "nf4", "none"]
    assert "optim" not in header and "attn" not in header


def test_jsonl_records_hold_every_column():
    r = vp("sweep", "--model", "qwen3-0.6b", "--rank", "8,16", "--gpu", "t4", "--format", "jsonl")
    rec = json.loads(r.stdout.splitlines()[0])
    assert list(rec) == columns(["t4"])
    assert set(SETUP_OPTION_NAMES) <= set(rec)


def test_columns_chosen_in_order_with_flag_spellings_and_groups():
    header, rows = _csv("--model", "qwen3-0.6b", "--rank", "8,16", "--gpu", "t4",
                        "--columns", "rank,--grad-ckpt,lora-dropout,t4_fits,rank,device_used (GiB)")
    assert header == ["rank", "grad_ckpt", "lora_dropout", "t4_fits", "device_used (GiB)"]
    assert rows[0]["grad_ckpt"] == "False" and rows[0]["t4_fits"] == "True"
    header, _ = _csv("--model", "qwen3-0.6b", "--rank", "8,16", "--columns", "auto,optim")
    assert header == ["model", "method", "rank", *RESULTS, "optim"]
    header, _ = _csv("--model", "qwen3-0.6b", "--rank", "8,16", "--gpu", "t4", "--columns", "all")
    assert header == columns(["t4"])
    header, _ = _csv("--model", "qwen3-0.6b", "--columns", "options")
    assert header == list(SETUP_OPTION_NAMES)
    header, _ = _csv("--model", "qwen3-0.6b", "--gpu", "t4", "--columns", "model,results")
    assert header == ["model", *RESULTS, *T4]


def test_markdown_and_html_take_the_same_columns(tmp_path):
    pytest.importorskip("plotly")
    args = ["--model", "qwen3-0.6b", "--rank", "8,16", "--gpu", "t4"]
    md = vp("sweep", *args, "--format", "md", "--columns", "rank,device_used (GiB),t4_fits")
    assert md.stdout.splitlines()[0] == "| rank | device_used (GiB) | t4_fits |"
    out = tmp_path / "s.html"
    assert vp("sweep", *args, "--format", "html", "--out", str(out)).exit_code == 0
    heads = [x.split("</button>")[0] for x in out.read_text().split('<button type="button">')[1:]]
    # the page names the columns in words and shows *_bytes in GiB (their GiB copies left out)
    assert heads == ["model", "method", "rank", "params trainable", "peak allocated (GiB)", "peak reserved (GiB)",
                     "device used (GiB)", "peak phase", "t4 fits", "t4 headroom (GiB)"], heads


@pytest.mark.parametrize("value,words", [
    ("model,rnak", ["'rnak' is not a sweep column", "did you mean: rank"]),
    ("devise_used_bytes", ["did you mean: device_used_bytes"]),
    ("a100_fits", ["'a100_fits'", "<gpu>_fits", "(t4)"]),
    (",", ["names no column"]),
    ("run_peak_reserved_bytes", ["come with --lengths or --alloc-conf"]),
])
def test_unknown_columns_are_one_line_before_any_estimate(value, words, monkeypatch):
    from vramplan.planner import sweeps

    monkeypatch.setattr(sweeps, "estimate_counters", lambda *a, **k: pytest.fail("estimated before the check"))
    r = vp("sweep", "--model", "qwen3-0.6b", "--gpu", "t4", "--columns", value)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and r.stdout == "" and len(lines) == 1, r.stderr
    assert all(w in lines[0] for w in words), lines[0]
