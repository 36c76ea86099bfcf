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
    from ..io import atomic_write_text, check_output_path, refuse_overwriting_input
    from ..report import bench_rows, collect, run_views, runs_page, to_csv, to_markdown

    target = out or (DEFAULT_HTML if fmt == "html" else None)
    if target is not None and target != "-":
        check_output_path(target, "--out")
    sources = collect(list(paths))
    if target is not None and target != "-":
        refuse_overwriting_input(target, input_files(paths, sources), "--out")
    views = run_views(sources)
    for v in views:
        if not v.readable:
            warn(f"{v.source}: {v.notices[0]}; reported on the page")
        elif v.notices:            # a wrong schema, missing parts: drawn as far as they go, and said here too
            more = f" (and {len(v.notices) - 1} more)" if len(v.notices) > 1 else ""
            warn(f"{v.source}: {v.notices[0]}{more}; shown on the page as far as it can be read")
    if fmt == "html":
        text = runs_page(sources, title=title)
    else:
        rows = bench_rows(views)
        text = to_markdown(rows) if fmt == "md" else to_csv(rows)
    if target is None or target == "-":
        click.echo(text, nl=False)
        return
    atomic_write_text(target, text)
    click.echo(f"vramplan: wrote {target} ({len(views)} input{'s' if len(views) != 1 else ''})", err=True)


def input_files(paths: tuple[str, ...], sources: list) -> list[str]:
    """Every file the report read: the arguments, the ``*.json`` of folders among them, and each source (the
    records that summaries list); the output must be none of them."""
    from pathlib import Path

    out: list[str] = []
    for arg in paths:
        p = Path(arg)
        out += [str(f) for f in sorted(p.glob("*.json"))] if p.is_dir() else [arg]
    out += [s.label for s in sources if " runs[" not in s.label]
    return out
