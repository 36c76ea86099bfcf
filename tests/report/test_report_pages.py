"""Pages are self-contained, deterministic, and say what a record lacks."""

from __future__ import annotations

import re
import sys

from plotly.offline import get_plotlyjs
from report_synthetic import malformed_records, plan_json

from vramplan.report import collect, plan_page, runs_page, table_page


def _scripts(page: str) -> list[str]:
    return re.findall(r"<script\b[^>]*>(.*?)</script>", page, flags=re.S)


def test_runs_page_embeds_plotly_once_and_loads_nothing(records_dir):
    page = runs_page(collect([str(records_dir)]), title="t")
    plotly_js = get_plotlyjs()
    assert page.count(plotly_js) == 1, "plotly.js must be embedded exactly once"
    assert sum(plotly_js in s for s in _scripts(page)) == 1
    ours = page.replace(plotly_js, "")
    assert "<script src" not in ours and "cdn.plot.ly" not in ours
    assert not re.search(r"""(src|href)=["']https?:""", ours), "a self-contained page links nothing external"
    # one chart div per figure, deterministic ids; files in name order: cpu, notjson (no charts), ok, oom
    assert re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page) == [
        "run-1-timeline", "run-1-counters", "run-3-timeline", "run-3-counters", "run-3-components",
        "run-4-timeline", "run-4-counters", "run-4-components"]


def test_same_json_same_bytes(records_dir, plan):
    a = runs_page(collect([str(records_dir)]), title="t")
    b = runs_page(collect([str(records_dir)]), title="t")
    assert a == b
    assert plan_page(plan) == plan_page(plan_json())
    rows = [{"batch": 1, "peak_allocated_bytes": 2**30}]
    assert table_page(rows, "x") == table_page([dict(r) for r in rows], "x")


def test_not_json_is_reported_on_the_page(records_dir):
    page = runs_page(collect([str(records_dir / "notjson.json"), str(records_dir / "ok.json")]), title="t")
    assert "Inputs that are not run records" in page
    assert "notjson.json: not JSON: Expecting property name enclosed in double quotes at line 1 column 2" in page
    assert 'id="run-2-timeline"' in page


def test_every_malformed_record_gets_a_visible_notice(records_dir):
    page = runs_page(collect([str(records_dir / "malformed")]), title="t")
    sections = re.findall(r'<section class="run" id="(run-\d+)">(.*?)</section>', page, flags=re.S)
    assert len(sections) == len(malformed_records()) + 1
    for anchor, body in sections:
        assert '<p class="notice">' in body, f"{anchor} has no notice"
    assert "samples: missing, no memory timeline" in page
    assert "estimate: null, no estimate-vs-measured comparison" in page
    assert "measured.peak_allocated_bytes: null" in page
    assert "schema: &#x27;someone.else/3&#x27; is not &#x27;vramplan.run/1&#x27;" in page


def test_plan_page_draws_three_charts_and_names_the_gpu(plan):
    page = plan_page(plan)
    assert re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', page) == [
        "plan-breakdown", "plan-ladder", "plan-grid"]
    assert "<title>plan: meta-llama/Llama-3.1-8B</title>" in page
    assert "over RTX 4090 capacity (23.99 GiB)" in page
    assert "GiB (2^30 bytes)" in page


def test_plan_page_without_ladder_and_grid_says_so():
    page = plan_page(plan_json(ladder=False, grid=False, gpu=None), title="p")
    assert "ladder: missing" in page and "grid: missing" in page
    assert 'id="plan-breakdown"' in page and 'id="plan-ladder"' not in page
    nothing = plan_page({}, title="empty")
    assert "breakdown_bytes: missing" in nothing and get_plotlyjs() not in nothing


def test_table_page_needs_no_plotly_and_sorts_on_saved_values():
    rows = [{"batch": 2, "seq": 2048, "peak_allocated_bytes": 13 * 2**30 + 1, "fits": True},
            {"batch": 4, "seq": 2048, "peak_allocated_bytes": None, "fits": False}]
    page = table_page(rows, "sweep: Llama-3.1-8B")
    assert get_plotlyjs() not in page
    assert '<th data-type="num" aria-sort="none"><button type="button">peak allocated (GiB)</button></th>' in page
    assert f'data-sort="{13 * 2**30 + 1}">13.00</td>' in page
    assert 'data-sort="">—</td>' in page
    assert "table.sortable" in page  # the sorting script


def test_report_code_never_imports_torch(tmp_path):
    import subprocess

    code = ("import sys, vramplan.report, vramplan.cli.report; from vramplan.report import browser; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_same_bytes_across_processes_and_hash_seeds(records_dir):
    """No set order, id or clock leaks into the page: two interpreters with different hash seeds agree."""
    import hashlib
    import os
    import subprocess

    code = ("import sys, hashlib; sys.path.insert(0, sys.argv[2]); from report_synthetic import plan_json; "
            "from vramplan.report import collect, runs_page, plan_page; "
            "page = runs_page(collect([sys.argv[1]])) + plan_page(plan_json()); "
            "print(hashlib.sha256(page.encode()).hexdigest())")
    here = os.path.dirname(__file__)
    digests = {subprocess.run([sys.executable, "-c", code, str(records_dir), here], check=True, text=True,
                              capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("1", "2")}
    local = runs_page(collect([str(records_dir)])) + plan_page(plan_json())
    assert digests == {hashlib.sha256(local.encode()).hexdigest()}
