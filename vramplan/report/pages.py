"""Self-contained HTML pages: the run report, the plan page and the table page.

A page works offline: plotly.js is embedded once, in one ``<script>`` in the head (only on pages with charts),
each chart is a ``div`` with a fixed id, and the table sorts with a few lines of inline script. The same JSON
gives the same bytes: no timestamps, no random ids, keys in sorted order.
"""

from __future__ import annotations

import html
from functools import lru_cache
from typing import Any

import plotly.graph_objects as go

from ..units import GiB
from . import figures, tables
from .inputs import Source
from .serve import serve_view
from .views import PlanView, RunView, plan_view, run_view, unreadable_view

e = html.escape

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 1400px; margin: 0 auto; padding: 1.5rem 1.5rem 3rem; background: white; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem;
  border-bottom: 1px solid #ddd; padding-bottom: .3rem; } h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
.sub { color: #555; margin: 0 0 1rem; }
.notices { border-left: 4px solid #e0a800; background: #fff8e1; padding: .5rem .9rem; margin: .8rem 0; }
.notices p { margin: .2rem 0; } .notices .head { font-weight: 600; }
.oom { border-left: 4px solid #d62728; background: #fdecea; padding: .5rem .9rem; margin: .8rem 0; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1.2rem; margin: .6rem 0; }
dl.facts dt { color: #555; } dl.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
table.sortable, table.plain { border-collapse: collapse; font-size: .82rem; margin: .6rem 0; }
table.sortable th, table.sortable td, table.plain th, table.plain td { border-bottom: 1px solid #e5e5e5;
  padding: .3rem .45rem; text-align: left; vertical-align: top; }
table.sortable td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.sortable th { background: #f3f3f3; position: sticky; top: 0; }
table.sortable th button { all: inherit; cursor: pointer; padding: 0; }
table.sortable th[aria-sort="ascending"] button::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"] button::after { content: " \\25BC"; }
.table-wrap { overflow-x: auto; }
table.sortable td.col-setup { min-width: 12em; } table.sortable td.col-run, table.sortable td.col-model { overflow-wrap: anywhere; min-width: 7em; }
.chart { margin: .4rem 0 1rem; }
footer { color: #777; font-size: .85rem; margin-top: 2.5rem; }
"""


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _shell(title: str, body: list[str], *, with_plotly: bool, with_tables: bool) -> str:
    head = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{e(title)}</title>", f"<style>{CSS}</style>"]
    if with_plotly:
        head.append('<script type="text/javascript">' + _plotly_js() + "</script>")
    head += ["</head>", "<body>", "<main>"]
    tail = ["<footer>Sizes in GiB = 2<sup>30</sup> bytes. Made by vramplan from saved JSON; works offline.</footer>",
            "</main>"]
    if with_tables:
        tail.append("<script>" + tables.SORT_JS + "</script>")
    tail += ["</body>", "</html>", ""]
    return "\n".join(head + body + tail)


def _chart(fig: go.Figure, div_id: str) -> str:
    height = fig.layout.height or 400
    return '<div class="chart">' + fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config=figures.CONFIG,
        default_width="100%", default_height=f"{height}px") + "</div>"


def _notices(notes: list[str], head: str) -> str:
    if not notes:
        return ""
    return ('<div class="notices"><p class="head">' + e(head) + "</p>"
            + "".join(f'<p class="notice">{e(n)}</p>' for n in notes) + "</div>")


def _fact_value(value: Any, kind: str) -> str:
    if kind == "bytes":
        return f"{value / GiB:,.2f} GiB"
    if kind == "int":
        return f"{value:,}"
    if kind == "s":
        return f"{value:,.1f} s"
    return str(value)


def _facts(facts: list[tuple[str, Any, str]]) -> str:
    if not facts:
        return ""
    return ('<dl class="facts">' + "".join(f"<dt>{e(label)}</dt><dd>{e(_fact_value(value, kind))}</dd>"
                                          for label, value, kind in facts) + "</dl>")


def _table(rows: list[dict[str, Any]], table_id: str) -> str:
    return '<div class="table-wrap">' + tables.to_html(rows, table_id) + "</div>"


# ------------------------------------------------------------------------------------------------ runs
def run_views(sources: list[Source]) -> list[RunView]:
    """One view per source, anchors ``run-1``, ``run-2``, ... in order."""
    return [unreadable_view(s.label, f"run-{i}", s.problem) if s.problem is not None
            else run_view(s.data, s.label, f"run-{i}")
            for i, s in enumerate(sources, 1)]


def bench_rows(views: list[RunView]) -> list[dict[str, Any]]:
    """The benchmark table's rows: one per readable run record."""
    return [v.bench_row() for v in views if v.readable]


def _run_section(v: RunView) -> list[str]:
    heading = " · ".join(x for x in (v.model, v.method, v.gpu, v.status) if x)
    out = [f'<section class="run" id="{e(v.anchor)}">',
           f"<h2>{e(v.source)}</h2>", f'<p class="sub">{e(heading)}</p>' if heading else ""]
    out.append(_notices(v.notices, "Missing or unusable in this record:"))
    if v.oom is not None:
        text = f"Out of memory in {v.oom.phase or 'an unknown phase'}"
        text += f", step {v.oom.step}" if v.oom.step is not None else ""
        if v.oom.requested_bytes is not None:
            text += f"; requested {v.oom.requested_bytes / GiB:,.2f} GiB"
        if v.oom.message:
            text += f"; {v.oom.message}"
        out.append(f'<p class="oom">{e(text)}</p>')
    if not v.readable:
        out.append("</section>")
        return out
    out.append(_facts(v.facts))
    if v.series or v.phases:
        out.append(_chart(figures.timeline(v), f"{v.anchor}-timeline"))
    if v.counters:
        out.append(_chart(figures.counters_chart(v), f"{v.anchor}-counters"))
    if v.components:
        out.append(_chart(figures.components_chart(v), f"{v.anchor}-components"))
    out.append("</section>")
    return out


def runs_page(sources: list[Source], title: str = "vramplan report") -> str:
    """The report page: the benchmark table over all runs, then per run its timeline and comparisons."""
    views = run_views(sources)
    rows = bench_rows(views)
    unreadable = [v for v in views if not v.readable]
    body = [f"<h1>{e(title)}</h1>",
            f'<p class="sub">{len(views)} input file{"s" if len(views) != 1 else ""}, '
            f"{len(rows)} run record{'s' if len(rows) != 1 else ''}.</p>"]
    body.append(_notices([f"{v.source}: {v.notices[0]}" for v in unreadable], "Inputs that are not run records:"))
    body.append("<h2>Benchmark</h2>")
    if rows:
        body.append('<p class="sub">Click a column header to sort. Error % as recorded by the profiler.</p>')
        body.append(_table(rows, "benchmark"))
    else:
        body.append(_notices(["no readable run record"], "Nothing to tabulate:"))
    for v in views:
        body += _run_section(v)
    charts = any(v.readable and (v.series or v.phases or v.counters or v.components) for v in views)
    return _shell(title, [b for b in body if b], with_plotly=charts, with_tables=bool(rows))


# ------------------------------------------------------------------------------------------------ plan
def plan_page(plan_json: dict[str, Any], title: str | None = None) -> str:
    """The plan as a page: breakdown chart, GPU ladder and batch × seq heatmap with the capacity boundary.

    Args:
        plan_json: the output of ``vramplan plan --json`` (with ``ladder`` and ``grid`` for the last two charts).
        title: page title; defaults to ``plan: <model>``.

    Returns:
        The page, self-contained HTML. Missing parts are named in a notice on the page.
    """
    view: PlanView = plan_view(plan_json)
    title = title or view.title
    body = [f"<h1>{e(title)}</h1>", _notices(view.notices, "Missing from this plan:"), _facts(view.facts)]
    charts = False
    if view.components:
        body.append(_chart(figures.breakdown_chart(view), "plan-breakdown"))
        charts = True
    if view.ladder:
        body.append(_chart(figures.ladder_chart(view), "plan-ladder"))
        charts = True
    if view.grid is not None:
        body.append(_chart(figures.grid_chart(view.grid, view.capacity, view.chosen), "plan-grid"))
        charts = True
    dm = view.device_map
    if dm is not None:
        body.append("<h2>Device map</h2>")
        verdict = {True: "every GPU fits", False: "a GPU does not fit", None: "no --gpu: no verdict"}[dm.fits]
        body.append(f'<p class="sub">{e(dm.strategy or "?")} over {e(str(dm.gpus or "?"))} GPUs · '
                    f"{e(verdict)}</p>")
        body.append(_notices(dm.warnings, "Warnings:"))
        if dm.rows:
            body.append(_chart(figures.device_map_chart(dm), "plan-device-map"))
            charts = True
            body.append(_table(dm.table_rows(), "device-map"))
        if dm.budgets:
            body.append("<h3>max_memory given to infer_auto_device_map</h3>"
                        + _facts([(f"device {k}", v, "bytes") for k, v in dm.budgets]))
        if dm.source:
            body.append(f'<p class="sub">{e(dm.source)}</p>')
    if view.assumptions:
        body.append("<h3>Assumptions</h3><ul>" + "".join(f"<li>{e(a)}</li>" for a in view.assumptions) + "</ul>")
    if view.versions:
        body.append('<h3>Versions</h3><table class="plain">' + "".join(
            f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in view.versions) + "</table>")
    return _shell(title, [b for b in body if b], with_plotly=charts,
                  with_tables=dm is not None and bool(dm.rows))


# ----------------------------------------------------------------------------------------------- serve
def serve_page(d: Any, title: str | None = None) -> str:
    """The page of one ``vramplan serve --json`` answer: facts, the budget chart, components, KV groups; or, for
    a ``--target-concurrency`` search, its setups as a sortable table."""
    view = serve_view(d)
    title = title or view.title
    body = [f"<h1>{e(title)}</h1>", _notices(view.notices, "Missing from this plan:"), _facts(view.facts)]
    if view.fits is False:
        body.append('<p class="oom">The engine refuses to start: one request of max_model_len does not fit the KV '
                    "cache left.</p>")
    if view.over_bytes is not None:
        body.append(f'<p class="oom">The components exceed the budget by {view.over_bytes / GiB:,.2f} GiB.</p>')
    charts = tables = False
    if view.segments:
        body.append(_chart(figures.budget_chart(view), "serve-budget"))
        body.append(_table([{"segment": n, "size_bytes": b} for n, b in view.segments], "serve-segments"))
        charts = tables = True
    if view.components:
        body.append("<h2>Components</h2>" + _table(view.components, "serve-components"))
        tables = True
    if view.kv_groups:
        body.append("<h2>KV cache groups</h2>" + _table(view.kv_groups, "serve-kv-groups"))
        tables = True
    if view.options:
        body.append("<h2>Setups that serve it</h2>"
                    '<p class="sub">Per card the smallest TP size; best first. Click a column header to sort.</p>'
                    + _table(view.options, "serve-options"))
        tables = True
    return _shell(title, [b for b in body if b], with_plotly=charts, with_tables=tables)


# ----------------------------------------------------------------------------------------------- table
def table_page(rows: list[dict[str, Any]], title: str) -> str:
    """A page holding one sortable table (``sweep --format html``).

    Args:
        rows: plain dicts, one per row; ``*_bytes`` keys are shown in GiB, ``*_pct`` in %, ``*_s`` in s,
            each column's unit named in its header; keys starting with ``_`` are hidden.
        title: page title and heading.
    """
    body = [f"<h1>{e(title)}</h1>"]
    if rows:
        body.append('<p class="sub">Click a column header to sort.</p>')
        body.append(_table(rows, "table"))
    else:
        body.append(_notices(["no rows"], "Nothing to tabulate:"))
    return _shell(title, body, with_plotly=False, with_tables=bool(rows))
