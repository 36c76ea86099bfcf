"""``vramplan report``: HTML report and benchmark tables from saved run records."""

from __future__ import annotations

import click

from .render import warn

FORMATS = ("html", "md", "csv")
DEFAULT_HTML = "reports/index.html"


@click.command(short_help="Render saved run records as an HTML report or a Markdown/CSV benchmark table.")
@click.argument("paths", metavar="RUN.json...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "-o", default=None, type=click.Path(dir_okay=False, allow_dash=True),
              help=f"Write here (html default: {DEFAULT_HTML}; md/csv default: stdout, or '-').")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="html", show_default=True,
              help="html: one self-contained page (works offline); md/csv: the benchmark table only.")
@click.option("--title", default="vramplan report", show_default=True, help="Page title.")
def report(*, paths: tuple[str, ...], out: str | None, fmt: str, title: str) -> None:
    """Render run records (RUN.json from `vramplan profile`, folders of them, or a summary.json listing them)
    as one page: a sortable benchmark table, and per run the memory timeline and estimate vs measured.

    Sizes are in GiB (2**30 bytes). A file that is not JSON, or a record with missing parts, is named on the page
    and in a warning; it never stops the report.
    """
    from ..extras import require

    require("report", "vramplan report")
    from ..io import atomic_write_text
    from ..report import bench_rows, collect, run_views, runs_page, to_csv, to_markdown

    sources = collect(list(paths))
    views = run_views(sources)
    for v in views:
        if not v.readable:
            warn(f"{v.source}: {v.notices[0]}; reported on the page")
    if fmt == "html":
        text = runs_page(sources, title=title)
        target = out or DEFAULT_HTML
    else:
        rows = bench_rows(views)
        text = to_markdown(rows) if fmt == "md" else to_csv(rows)
        target = out
    if target is None or target == "-":
        click.echo(text, nl=False)
        return
    atomic_write_text(target, text)
    click.echo(f"vramplan: wrote {target} ({len(views)} input{'s' if len(views) != 1 else ''})", err=True)
