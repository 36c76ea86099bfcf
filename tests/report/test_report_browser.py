"""Generated pages in a real browser: headless Chromium opens each file offline (``file://``) and we check
that no script error or console error occurs, that no request leaves the page, that every plotly chart drew
its SVG layers, that the notices are visible, that the table sorts, and that screenshots are not blank.

Chromium is driven over the DevTools pipe (:mod:`vramplan.report.browser`, stdlib only). Skipped, with the
reason, when ``chromium`` is not on PATH.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_synthetic import malformed_records, plan_json

from vramplan.report import collect, plan_page, runs_page, table_page
from vramplan.report.browser import distinct_colors


@pytest.fixture(scope="module")
def pages(records_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("pages")
    texts = {
        # good records, then the partial ones: one page (loading plotly.js is what takes time)
        "report": runs_page(collect([str(records_dir), str(records_dir / "malformed")]), title="report"),
        "plan": plan_page(plan_json()),
        "plan_partial": plan_page(plan_json(ladder=False, grid=False, gpu=None)),
        "table": table_page([{"name": "b", "peak_allocated_bytes": 3 * 2**30},
                             {"name": "a", "peak_allocated_bytes": None},
                             {"name": "c", "peak_allocated_bytes": 10 * 2**30}], "table"),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = out / f"{name}.html"
        paths[name].write_text(text)
    return paths


CHARTS = {"report": 8 + 14, "plan": 3, "plan_partial": 1, "table": 0}
SECTION_NOTICES = ("Array.from(document.querySelectorAll('section.run')).map(s => Array.from("
                   "s.querySelectorAll('.notice')).filter(e => e.getClientRects().length > 0).length)")


@pytest.fixture(scope="module")
def rendered(browser, pages) -> dict[str, dict]:
    """Each page opened once (loading plotly.js is the slow part): its result, screenshots, notice counts."""
    out = {}
    for name, path in pages.items():
        result = browser.open(path)
        out[name] = {"result": result, "page_png": browser.screenshot(),
                     "chart_png": browser.screenshot(".plotly-graph-div") if CHARTS[name] else None,
                     "section_notices": browser.evaluate(SECTION_NOTICES)}
    return out


@pytest.mark.parametrize("name", list(CHARTS))
def test_page_renders_offline_without_errors(rendered, name):
    result = rendered[name]["result"]
    assert result.errors == [], f"{name}: errors in the browser: {result.errors}"
    assert result.requests == [], f"{name}: the page requested {result.requests} (must be self-contained)"
    dom = result.dom
    assert dom["plotly_divs"] == CHARTS[name]
    assert dom["drawn_divs"] == dom["plotly_divs"], f"{name}: {dom['plotly_divs'] - dom['drawn_divs']} charts not drawn"
    assert dom["main_svg"] >= dom["plotly_divs"]
    assert dom["external_scripts"] == 0
    assert distinct_colors(rendered[name]["page_png"]) > 1, f"{name}: the screenshot is blank"
    if CHARTS[name]:
        assert distinct_colors(rendered[name]["chart_png"]) >= 8, f"{name}: the first chart rendered blank"


def test_every_partial_record_shows_a_visible_notice(rendered):
    per_section = rendered["report"]["section_notices"]
    assert len(per_section) == 4 + len(malformed_records()) + 1
    assert per_section[:4] == [1, 1, 0, 0], "cpu.json (estimate null), notjson.json, ok.json, oom.json"
    partial = per_section[4:]
    assert all(n >= 1 for n in partial), f"a partial record without a visible notice: {per_section}"
    assert sum(n.startswith("not JSON: ") for n in rendered["report"]["result"].dom["notices"]) == 2


def test_plan_partial_page_names_missing_parts(rendered):
    notices = rendered["plan_partial"]["result"].dom["notices"]
    assert any(n.startswith("ladder: missing") for n in notices)
    assert any(n.startswith("grid: missing") for n in notices)


def test_table_sorts_on_click(browser, pages):
    browser.open(pages["table"])
    order = ("Array.from(document.querySelectorAll('#table tbody tr'))"
             ".map(r => r.cells[0].textContent).join('')")
    click = "document.querySelectorAll('#table th')[{}].querySelector('button').click()"
    assert browser.evaluate(order) == "bac"
    browser.evaluate(click.format(1))
    assert browser.evaluate(order) == "bca", "ascending by the saved bytes, missing last"
    browser.evaluate(click.format(1))
    assert browser.evaluate(order) == "cba", "descending, missing still last"
    browser.evaluate(click.format(0))
    assert browser.evaluate(order) == "abc"
    sort_state = browser.evaluate("JSON.stringify(Array.from(document.querySelectorAll('#table th'))"
                                  ".map(h => h.getAttribute('aria-sort')))")
    assert json.loads(sort_state) == ["ascending", "none"]
