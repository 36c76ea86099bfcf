"""``vramplan serve`` through --json, --html and --sweep (issue 17 item 5).

The page is built from the JSON alone (``serve --json`` then :func:`serve_page` gives the bytes of
``serve --html``); the budget segments cover the card exactly (first principles: every byte of ``total`` is in
one segment); a sweep row equals ``vramplan serve ... --json`` run on its own with the same settings, and its
``fits`` agrees with that command's exit code.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from cli_entry import vp

from vramplan.report import serve_page

MODEL = "Qwen/Qwen2.5-7B-Instruct"
VLLM = ("serve", MODEL, "--gpu", "24GB", "--max-model-len", "8192")
SGLANG = ("serve", MODEL, "--engine", "sglang", "--mem-fraction-static", "0.88", "--gpu", "H100")


def _json(*args: str) -> tuple[dict, int]:
    r = vp(*args, "--json")
    assert r.exit_code in (0, 1), r.stderr
    return json.loads(r.stdout), r.exit_code


@pytest.mark.parametrize("args", [VLLM, SGLANG, (*VLLM[:-1], "131072")], ids=["vllm", "sglang", "vllm-too-long"])
def test_budget_segments_cover_the_card(args):
    d, code = _json(*args)
    seg = {s["name"]: s["bytes"] for s in d["budget_bytes"]["segments"]}
    over = d["budget_bytes"]["over_bytes"]
    assert sum(seg.values()) == d["total_bytes"] + over
    assert all(v >= 0 for v in seg.values())
    for c in d["components"]:
        assert seg[c["name"]] == c["bytes"]
    if d["engine"] == "vllm":
        assert seg["kv_cache/blocks"] == d["num_gpu_blocks"] * d["bytes_per_block"]
        assert seg["outside/gpu_memory_utilization"] == d["total_bytes"] - d["requested_bytes"]
        assert 0 <= seg["kv_cache/remainder"] < d["bytes_per_block"]
    else:
        assert seg["kv_cache/pool"] == d["max_total_num_tokens"] * d["cell_bytes"]
        assert seg["outside/before_weights_load"] == 512 * 2**20          # --cuda-context's default
        assert 0 <= seg["kv_cache/remainder"] < d["cell_bytes"] * d["page_size"]
    assert code == (0 if d["fits"] else 1)


@pytest.mark.parametrize("args", [VLLM, SGLANG, (*VLLM[:-1], "131072")], ids=["vllm", "sglang", "vllm-too-long"])
def test_html_is_the_page_of_the_json_alone(tmp_path, args):
    out = tmp_path / "serve.html"
    r = vp(*args, "--html", str(out))
    d, code = _json(*args)
    assert r.exit_code == code
    page = out.read_text()
    assert page == serve_page(json.loads(json.dumps(d)))
    assert 'id="serve-budget"' in page and 'id="serve-components"' in page
    for s in d["budget_bytes"]["segments"]:
        assert s["name"] in page
    for c in d["components"]:
        assert f'data-sort="{c["bytes"]}"' in page
    if d["engine"] == "vllm":
        assert f"{d['num_gpu_blocks']:,}" in page and 'id="serve-kv-groups"' in page
    assert ("The engine refuses to start" in page) is (not d["fits"])


def test_target_concurrency_page_lists_the_setups(tmp_path):
    args = ("serve", MODEL, "--gpu", "H100", "--max-model-len", "32768", "--target-concurrency", "40")
    out = tmp_path / "t.html"
    r = vp(*args, "--html", str(out))
    d, code = _json(*args)
    assert r.exit_code == code == 0
    page = out.read_text()
    assert page == serve_page(d)
    assert 'id="serve-options"' in page
    for o in d["options"]:
        assert f'data-sort="{o["total_memory_bytes"]}"' in page


def test_partial_json_gets_notices_not_a_traceback():
    d, _ = _json(*VLLM)
    del d["budget_bytes"], d["fits"]
    page = serve_page(d)
    assert "budget_bytes: missing, no budget chart" in page and "fits: missing" in page
    assert "not a serve plan: expected a JSON object, found array" in serve_page([1])


def test_html_refuses_to_overwrite_its_input(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "vocab_size": 256, "max_position_embeddings": 512, "torch_dtype": "bfloat16"}))
    before = cfg.read_text()
    for flag in ("--html", "--out"):
        extra = ("--sweep", "tp=1,2") if flag == "--out" else ()
        r = vp("serve", str(cfg), "--gpu", "24GB", *extra, flag, str(cfg))
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and flag in r.stderr, r.stderr
    assert cfg.read_text() == before
    r = vp("serve", str(cfg), "--gpu", "24GB", "--html", str(tmp_path))
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1


def test_sweep_rows_equal_serve_and_its_exit_code():
    r = vp("serve", MODEL, "--gpu", "24GB", "--sweep", "tp=1,2,8", "--sweep", "max-model-len=4096,131072",
           "--sweep", "kv-cache-dtype=auto,fp8", "--sweep", "gpu=24GB,H100", "--format", "jsonl")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    # TP 8 does not divide Qwen2.5-7B's 28 heads: those 8 combinations are skipped, with one warning
    assert len(rows) == 2 * 2 * 2 * 2 and {row["tp"] for row in rows} == {1, 2}
    assert "skipped 8 combinations" in r.stderr and "--tp 8 does not divide" in r.stderr
    assert {row["fits"] for row in rows} == {True, False}
    for row in rows:
        d, code = _json("serve", MODEL, "--gpu", row["gpu"], "--tp",
                        str(row["tp"]), "--max-model-len", str(row["max_model_len"]), "--kv-cache-dtype",
                        row["kv_cache_dtype"])
        assert row == {k: d[k] for k in row}
        assert code == (0 if row["fits"] else 1)
    # the per-card defaults follow the swept card (vllm serve's tiers): 256 sequences on 24 GB, 1024 on H100
    assert {row["gpu"]: row["max_num_seqs"] for row in rows} == {"24GB": 256, "h100-80gb": 1024}


def test_sglang_sweep_and_formats(tmp_path):
    args = ("serve", MODEL, "--engine", "sglang", "--gpu", "H100", "--sweep", "mem-fraction-static=0.8,0.9",
            "--sweep", "tp=1,2")
    text = vp(*args).stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(t["mem_fraction_static"], t["tp"]) for t in table] == [("0.8", "1"), ("0.8", "2"), ("0.9", "1"),
                                                                    ("0.9", "2")]
    for t in table:
        d, _ = _json("serve", MODEL, "--engine", "sglang", "--gpu", "H100", "--mem-fraction-static",
                     t["mem_fraction_static"], "--tp", t["tp"])
        assert int(t["max_total_num_tokens"]) == d["max_total_num_tokens"] and "num_gpu_blocks" not in t
    out = tmp_path / "sweep.html"
    r = vp(*args, "--format", "html", "--out", str(out))
    assert r.exit_code == 0 and "wrote 4 rows" in r.stderr
    assert out.read_text().count("<tr>") == 1 + 4 and "max total num tokens" in out.read_text()
    assert vp(*args, "--format", "md").stdout.count("\n") == 2 + 4


@pytest.mark.parametrize("extra, message", [
    (("--sweep", "tpp=1,2"), "--sweep 'tpp=1,2': expected KEY=V1,V2"),
    (("--sweep", "tp"), "--sweep 'tp': expected KEY=V1,V2"),
    (("--sweep", "tp="), "no values after '='"),
    (("--sweep", "tp=1,x"), "--sweep tp='x'"),
    (("--sweep", "kv-cache-dtype=fp4"), "--sweep kv-cache-dtype='fp4'"),
    (("--sweep", "tp=1", "--sweep", "tp=2"), "tp is swept twice"),
    (("--sweep", "gpu=no-such-card"), "no-such-card"),
    (("--sweep", "tp=1,2", "--json"), "--json does not go with --sweep"),
    (("--sweep", "tp=1,2", "--target-concurrency", "4"), "--target-concurrency does not go with --sweep"),
    (("--format", "md"), "--format and --out are the table of --sweep"),
    (("--sweep", "tp=3,5"), "--sweep: no combination could be planned"),
    (("--sweep", "tp=" + ",".join(str(i) for i in range(1, 102)), "--sweep", "max-model-len="
      + ",".join(str(i) for i in range(1, 101))), "more than 10,000"),
])
def test_sweep_errors_are_one_line_exit_2(extra, message):
    r = vp("serve", MODEL, "--gpu", "24GB", *extra)
    assert r.exit_code == 2, r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("vramplan: error:") and message in last, r.stderr
    assert r.stdout == ""


def test_sweep_over_engines_reads_both_engines_options():
    args = ("serve", MODEL, "--gpu", "H100", "--mem-fraction-static", "0.9", "--format", "jsonl")
    both = vp(*args, "--sweep", "engine=vllm,sglang")
    rows = [json.loads(line) for line in both.stdout.splitlines()]
    assert [r["engine"] for r in rows] == ["vllm", "sglang"] and "ignored" not in both.stderr
    assert rows[1]["mem_fraction_static"] == 0.9 and rows[0]["mem_fraction_static"] is None
    # vLLM alone does not read it: named, as serve without --sweep names it
    assert "--mem-fraction-static ignored" in vp(*args, "--sweep", "tp=1,2").stderr


def test_pages_render_in_a_browser(browser, tmp_path):
    """Headless Chromium opens the plan and the search pages offline: no error, no request, charts drawn."""
    from vramplan.report.browser import distinct_colors

    plan, search = tmp_path / "plan.html", tmp_path / "search.html"
    assert vp(*VLLM, "--html", str(plan)).exit_code == 0
    assert vp("serve", MODEL, "--gpu", "H100", "--target-concurrency", "8", "--html", str(search)).exit_code == 0
    for path, charts in ((plan, 1), (search, 0)):
        result = browser.open(path)
        assert result.errors == [] and result.requests == [], path.name
        assert result.dom["plotly_divs"] == result.dom["drawn_divs"] == charts
    browser.open(plan)
    assert distinct_colors(browser.screenshot("#serve-budget")) >= 8
