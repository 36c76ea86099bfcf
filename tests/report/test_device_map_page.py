"""``--device-map`` plans through JSON, --explain, --html and sweep (issue 17 item 5).

The page is built from the plan's JSON alone (``plan --json`` then :func:`plan_page` gives the bytes of
``plan --html``); a sweep's device-map columns equal ``vramplan plan --device-map ... --json`` run on its own for
each row, and its ``<gpu>_fits`` column agrees with that command's exit code.
"""

from __future__ import annotations

import json
import re

from cli_entry import vp

from vramplan.report import plan_page

MODEL = "Qwen/Qwen2.5-7B-Instruct"          # bundled profile qwen2.5-7b: 28 layers, untied head
BASE = ("plan", MODEL, "--method", "inference", "--device-map", "auto", "--gpus", "2", "--gpu", "24GB")


def _plan_json(*extra: str) -> tuple[dict, int]:
    r = vp(*BASE, *extra, "--json")
    assert r.exit_code in (0, 1), r.stderr
    return json.loads(r.stdout), r.exit_code


def test_json_has_the_split_and_each_gpus_verdict():
    d, code = _plan_json("--max-memory", "18GiB")
    dm = d["device_map"]
    assert [r["device"] for r in dm["devices"]] == [0, 1]
    # first principles: every parameter lands on one GPU, 2 bytes each in bf16, the untied head counted once
    assert sum(r["weights_bytes"] for r in dm["devices"]) == 2 * d["params"]["total"]
    assert dm["gpu"] == "24GB" and dm["capacity_bytes"] == 24 * 10**9     # no --margin: the whole card
    assert dm["fits"] is all(r["fits"] for r in dm["devices"]) is True and code == 0
    for r in dm["devices"]:
        assert r["device_used_bytes"] - r["peak_reserved_bytes"] == dm["cuda_context_bytes"]


def test_html_is_the_page_of_the_json_alone(tmp_path):
    out = tmp_path / "dm.html"
    r = vp(*BASE, "--max-memory", "18GiB", "--html", str(out))
    assert r.exit_code == 0, r.stderr
    d, _ = _plan_json("--max-memory", "18GiB")
    page = out.read_text()
    assert page == plan_page(json.loads(json.dumps(d)))          # a JSON round trip gives the same bytes
    assert 'id="plan-device-map"' in page and 'id="device-map"' in page
    # the per-GPU table carries the saved bytes of every GPU, sortable on them
    for row in d["device_map"]["devices"]:
        for key in ("weights_bytes", "kv_cache_bytes", "peak_allocated_bytes", "device_used_bytes"):
            assert f'data-sort="{row[key]}"' in page
    assert "device_map auto over 2 GPUs" in page and "adamw" not in page.split("<main>")[1].split("<h2>")[0]
    assert "ladder and grid: not drawn for a --device-map plan" in page
    assert "fits: null (no --gpu chosen)" not in page


def test_page_says_what_a_partial_device_map_lacks():
    d, _ = _plan_json()
    del d["device_map"]["capacity_bytes"]
    d["device_map"]["devices"][1].pop("weights_bytes")
    page = plan_page(d)
    assert "device_map.capacity_bytes: missing" in page
    assert "device_map.devices: 1 of 2 entries lack device or a size" in page
    assert plan_page({"model": "m", "device_map": "x"}).count("device_map: expected an object, found string") == 1


def test_html_refuses_to_overwrite_its_input(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "vocab_size": 256, "max_position_embeddings": 512}))
    before = cfg.read_text()
    r = vp("plan", str(cfg), "--method", "inference", "--device-map", "auto", "--gpus", "2", "--gpu", "24GB",
           "--html", str(cfg))
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "--html" in r.stderr
    assert cfg.read_text() == before


def test_explain_shows_the_budgets_and_each_gpus_sum():
    d, _ = _plan_json("--max-memory", "18GiB")
    r = vp(*BASE, "--max-memory", "18GiB", "--explain")
    assert r.exit_code == 0
    budgets = ", ".join(f"{k}: {v:,} B" for k, v in d["device_map"]["max_memory_bytes"].items())
    assert budgets in r.stdout
    for row in d["device_map"]["devices"]:
        assert f"GPU {row['device']}: {row['weights_bytes']:,} + {row['kv_cache_bytes']:,}" in r.stdout
        assert f"{row['device_used_bytes']:,} B nvidia-smi" in r.stdout


def test_sweep_rows_equal_plan_and_its_exit_code():
    r = vp("sweep", "--model", MODEL, "--method", "inference", "--device-map", "auto,sequential",
           "--gpus", "2,3", "--seq", "2048,131072", "--batch", "4", "--gpu", "24GB",
           "--max-memory", "16GiB", "--max-memory", "0=10GiB,1=20GiB", "--format", "jsonl")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2 * 2 * 2 * 2
    assert {row["24GB_fits"] for row in rows} == {True, False}            # both verdicts are exercised
    for row in rows:
        args = ("plan", MODEL, "--method", "inference", "--device-map", row["device_map"], "--gpus",
                str(row["gpus"]), "--seq", str(row["seq"]), "--batch", "4", "--max-memory", row["max_memory"])
        one = vp(*args, "--gpu", "24GB", "--json")
        d = json.loads(one.stdout)["device_map"]
        assert row["24GB_fits"] is d["fits"] and one.exit_code == (0 if d["fits"] else 1)
        used = [x["device_used_bytes"] for x in d["devices"]]
        assert row["24GB_split_max_device_used_bytes"] == max(used)
        assert row["24GB_headroom_bytes"] == d["capacity_bytes"] - max(used)
        layers = " ".join(f"{x['device']}:{x['layers']}" + ("+lm_head" if x["holds_lm_head"] else "")
                          for x in d["devices"])
        assert row["24GB_split_layers"].startswith(layers)
        # without --gpu: the split --max-memory gives, judged on no card
        free = json.loads(vp(*args, "--json").stdout)["device_map"]
        assert free["fits"] is None
        assert row["split_max_device_used_bytes"] == max(x["device_used_bytes"] for x in free["devices"])
        assert row["split_max_peak_allocated_bytes"] == max(x["peak_allocated_bytes"] for x in free["devices"])


def test_sweep_device_map_needs_a_card_or_a_budget():
    r = vp("sweep", "--model", MODEL, "--method", "inference", "--device-map", "auto", "--gpus", "2")
    assert r.exit_code == 2
    assert re.search(r"--device-map needs the GPUs' memory", r.stderr)
    assert len(r.stderr.strip().splitlines()) == 2      # the skipped-row warning, then the one-line error


def test_sweep_without_device_map_keeps_its_columns():
    r = vp("sweep", "--model", MODEL, "--method", "inference", "--gpu", "24GB", "--columns", "all")
    assert r.exit_code == 0
    assert "split_layers" not in r.stdout.splitlines()[0]


def test_page_renders_in_a_browser(browser, tmp_path):
    """Headless Chromium opens the page offline: no script error, no request, both charts drawn."""
    from vramplan.report.browser import distinct_colors

    path = tmp_path / "dm.html"
    assert vp(*BASE, "--max-memory", "18GiB", "--html", str(path)).exit_code == 0
    result = browser.open(path)
    assert result.errors == [] and result.requests == []
    assert result.dom["plotly_divs"] == result.dom["drawn_divs"] == 2      # breakdown, per-GPU split
    assert distinct_colors(browser.screenshot("#plan-device-map")) >= 8


def test_simulate_mode_with_device_map_is_refused_not_silently_unsplit():
    for mode in ("simulate", "both"):
        r = vp(*BASE, "--mode", mode)
        assert r.exit_code == 2 and r.stdout == ""
        assert r.stderr.strip() == (f"vramplan: error: --device-map auto is planned analytically only: --mode {mode} "
                                    "simulates one GPU holding the whole model, so the split per GPU would be lost; "
                                    "drop --mode")
