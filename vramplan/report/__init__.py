"""HTML reports and publishable tables from saved JSON (run records, plan JSON, sweep rows).

Renderers compute nothing: :mod:`.views` picks values out of the JSON and notes what is missing,
:mod:`.figures` draws them with plotly, :mod:`.pages` assembles self-contained pages and :mod:`.tables`
renders the benchmark table as sortable HTML, Markdown or CSV. torch is never imported here.
"""

from __future__ import annotations

from .inputs import Source, collect
from .pages import bench_rows, plan_page, run_views, runs_page, serve_page, table_page
from .tables import to_csv, to_markdown

__all__ = ["Source", "bench_rows", "collect", "plan_page", "run_views", "runs_page", "serve_page", "table_page", "to_csv",
           "to_markdown"]
