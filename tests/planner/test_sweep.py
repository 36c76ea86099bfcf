"""``vramplan sweep``: the product of option lists, rows equal to ``plan``, formats, atomic --out."""

from __future__ import annotations

import io
import json
import random

import pandas as pd
import pytest
from option_names import SETUP_OPTION_NAMES
from planner_helpers import vp, vp_json

import vramplan.planner as planner
from vramplan.cli import sweep as sweep_cli
from vramplan.planner import sweeps

ARGS = ["--model", "llama-3.2-1b,qwen3-0.6b", "--method", "lora,qlora,full", "--rank", "8,64", "--batch", "1,4",
        "--seq", "512,2048", "--grad-ckpt", "true,false", "--gpu", "rtx-4090,a100-80gb,mi300x", "--margin", "5%"]
#: lora/qlora: 2 ranks; full ignores LoRA options (2 ranks collapse to 1) -> (2*2 + 1) * 2 * 2 * 2 per model
N_ROWS = 2 * (2 * 2 + 1) * 2 * 2 * 2


def _jsonl(*args: str) -> list[dict]:
    r = vp("sweep", *args, "--format", "jsonl")
    assert r.exit_code == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return _jsonl(*ARGS)


def _plan_args(row: dict) -> list[str]:
    args = [row["model"], "--method", row["method"], "--batch", str(row["batch"]), "--seq", str(row["seq"]),
            "--grad-ckpt" if row["grad_ckpt"] else "--no-grad-ckpt", "--quant", row["quant"],
            "--optim", row["optim"], "--attn", row["attn"], "--precision", row["precision"], "--loss", row["loss"]]
    if row["rank"] is not None:
        args += ["--rank", str(row["rank"])]
    return args


def test_product_size_and_columns(rows):
    assert len(rows) == N_ROWS
    cols = list(rows[0])
    for c in ("model", *SETUP_OPTION_NAMES, "params_trainable", "peak_allocated_bytes",
              "peak_reserved_bytes", "device_used_bytes", "peak_phase", "peak_allocated (GiB)",
              "peak_reserved (GiB)", "device_used (GiB)", "rtx-4090_fits", "rtx-4090_headroom_bytes",
              "rtx-4090_headroom (GiB)", "mi300x_fits", "a100-80gb_headroom (GiB)"):
        assert c in cols, c
    assert all(isinstance(r["device_used_bytes"], int) for r in rows)
    assert all(r["device_used (GiB)"] == r["device_used_bytes"] / 2**30 for r in rows)
    assert {r["method"] for r in rows} == {"lora", "qlora", "full"}
    assert all(r["rank"] is None and r["quant"] == "none" for r in rows if r["method"] == "full")
    assert all(r["quant"] == "nf4" for r in rows if r["method"] == "qlora")
    keys = {(r["model"], r["method"], r["rank"], r["batch"], r["seq"], r["grad_ckpt"]) for r in rows}
    assert len(keys) == len(rows), "no duplicate rows"


def test_sample_rows_equal_plan(rows):
    rng = random.Random(5)
    for row in rng.sample(rows, 6):
        for gpu in ("rtx-4090", "mi300x"):
            p = vp_json("plan", *_plan_args(row), "--gpu", gpu, "--margin", "5%")
            assert p["fits"]["headroom_bytes"] == row[f"{gpu}_headroom_bytes"], (row, gpu)
            assert p["fits"]["fits"] == row[f"{gpu}_fits"]
        p = vp_json("plan", *_plan_args(row))
        for k in ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes", "peak_phase"):
            assert p[k] == row[k], k
        assert p["params"]["trainable"] == row["params_trainable"]


def test_csv_md_html_formats_hold_the_same_rows(tmp_path, rows):
    small = ["--model", "qwen3-0.6b", "--rank", "8,16", "--batch", "1,2", "--gpu", "t4"]
    r = vp("sweep", *small)
    assert r.exit_code == 0
    df = pd.read_csv(io.StringIO(r.stdout))
    assert len(df) == 4 and df["rank"].tolist() == [8, 16, 8, 16] and df["batch"].tolist() == [1, 1, 2, 2]
    assert df["device_used_bytes"].dtype.kind == "i" and "t4_headroom (GiB)" in df.columns
    md = vp("sweep", *small, "--format", "md")
    lines = md.stdout.splitlines()
    assert lines[0].startswith("| model | method |") and lines[1].startswith("|---|") and len(lines) == 6
    out = tmp_path / "s.html"
    h = vp("sweep", *small, "--format", "html", "--out", str(out), "--title", "my sweep")
    assert h.exit_code == 0 and h.stdout == "" and "wrote 4 rows" in h.stderr
    page = out.read_text()
    assert "<title>my sweep</title>" in page and "qwen3-0.6b" in page


def test_invalid_combinations_are_skipped_with_a_warning():
    r = vp("sweep", "--model", "qwen3-0.6b", "--method", "full,qlora", "--quant", "nf4,none", "--format", "jsonl")
    assert r.exit_code == 0
    got = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["method"], x["quant"]) for x in got] == [("full", "none"), ("qlora", "nf4")]
    assert "skipped 2 invalid combinations" in r.stderr


def test_targets_alternatives_repeat_the_option():
    got = _jsonl("--model", "qwen3-0.6b", "--targets", "q_proj,v_proj", "--targets", "all-linear")
    assert [x["targets"] for x in got] == ["q_proj,v_proj", "all-linear"]
    assert got[1]["params_trainable"] > got[0]["params_trainable"]


@pytest.mark.parametrize("args,needle", [
    (["--model", "qwen3-0.6b", "--grad-ckpt", "maybe"], "--grad-ckpt"),
    (["--model", "qwen3-0.6b", "--batch", "1,two"], "--batch"),
    (["--model", "qwen3-0.6b", "--method", "lora,lorra"], "--method"),
    (["--model", "qwen3-0.6b", "--gpu", "t4,rtx-40900"], "rtx-40900"),
    (["--model", "qwen3-0.6b", "--method", "full", "--quant", "nf4"], "no valid combination"),
])
def test_bad_values_exit_2(args, needle):
    r = vp("sweep", *args)
    assert r.exit_code == 2 and r.stdout == "" and needle in r.stderr, r.stderr


def test_failure_mid_sweep_leaves_out_untouched(tmp_path, monkeypatch):
    out = tmp_path / "sweep.csv"
    real = planner.sweep_row
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed mid-sweep")
        return real(*a, **kw)

    monkeypatch.setattr(sweeps, "sweep_row", flaky)
    args = ["sweep", "--model", "qwen3-0.6b", "--batch", "1,2,3,4,5,6", "--out", str(out)]
    with pytest.raises(RuntimeError, match="killed mid-sweep"):
        vp(*args)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    out.write_text("previous complete file\n")
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        vp(*args)
    assert out.read_text() == "previous complete file\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.csv"], "no temporary file left beside --out"
    monkeypatch.setattr(sweeps, "sweep_row", real)
    assert vp(*args).exit_code == 0
    assert len(pd.read_csv(out)) == 6


def test_progress_bar_goes_to_stderr_for_long_sweeps(monkeypatch):
    monkeypatch.setattr(sweep_cli, "PROGRESS_MIN_ROWS", 3)
    r = vp("sweep", "--model", "qwen3-0.6b", "--batch", "1,2,3,4", "--format", "jsonl")
    assert r.exit_code == 0 and "sweep: 4 rows" in r.stderr
    assert len(r.stdout.splitlines()) == 4 and "sweep:" not in r.stdout


def test_html_without_the_report_extra_is_a_one_line_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == "plotly" else real(n, *a, **k))
    r = vp("sweep", "--model", "qwen3-0.6b", "--format", "html")
    assert r.exit_code == 2 and 'sweep --format html needs the report extra' in r.stderr
    assert 'pip install "vramplan[report]"' in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_row_the_estimator_refuses_is_skipped_not_fatal():
    # gpt2 has no q_proj: that model's rows are skipped with a warning, the other model's rows remain
    r = vp("sweep", "--model", "gpt2,qwen3-0.6b", "--targets", "q_proj", "--format", "jsonl")
    assert r.exit_code == 0
    assert [json.loads(x)["model"] for x in r.stdout.splitlines()] == ["qwen3-0.6b"]
    assert "skipped 1 row" in r.stderr and "gpt2" in r.stderr
