"""``vramplan sweep``: the plan options as comma lists; every combination estimated into one table."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..options import Option
from ..setup import SETUP_OPTIONS, option_named, parse_layers
from .options import click_type, setup_from_options
from .plan import parse_margin
from .render import warn

#: the most rows (models x combinations of the option lists, counted before anything is built) a sweep runs
#: unless --max-rows allows more: about a minute of estimates on one core
SWEEP_MAX_ROWS = 100_000

#: show a progress bar on stderr from this many rows on even when stderr is not a terminal
PROGRESS_MIN_ROWS = 2000

#: options whose single value already contains commas: alternatives are given by repeating the option
REPEAT_ONLY = ("targets", "target_regex", "modules_to_save", "layers_to_transform")

_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def sweep_options() -> tuple[Option, ...]:
    """The swept options: every setup option of ``plan``, each taking a list of values."""
    return SETUP_OPTIONS


def _options(fn: Any) -> Any:
    for o in reversed(sweep_options()):
        how = ("repeat the option for several values" if o.repeat_only
               else "comma list (or repeat the option) to sweep")
        what = "true/false" if o.kind == "bool" else "|".join(o.choices) if o.choices else click_type(o).name.upper()
        flags = (o.flag, o.short) if o.short else (o.flag,)
        fn = click.option(*flags, o.name, multiple=True, metavar=what,
                          help=f"{o.help} {'Default: ' + str(o.default) + '. ' if o.default is not None else ''}"
                               f"[{how}]")(fn)
    return fn


def _values(o: Option, given: tuple[str, ...], ctx: click.Context) -> list[Any]:
    items = list(given) if o.repeat_only else [v.strip() for g in given for v in g.split(",") if v.strip()]
    out = []
    for item in items:
        if o.kind == "bool":
            if item.lower() not in _BOOL_WORDS:
                raise click.BadParameter(f"{item!r} is not true or false", param_hint=o.flag)
            out.append(_BOOL_WORDS[item.lower()])
        elif o.kind == "layers":
            try:
                parse_layers(item)          # validate now; setup_from_options parses it again
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=o.flag) from None
            out.append(item)
        else:
            try:
                out.append(click_type(o).convert(item, None, ctx))
            except click.BadParameter as exc:
                raise click.BadParameter(exc.message, param_hint=o.flag) from None
    return list(dict.fromkeys(out))     # keep order, drop repeats


def _split(given: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(v.strip() for g in given for v in g.split(",") if v.strip()))


@click.command(short_help="Estimate every combination of option lists into CSV, Markdown, JSONL or HTML.")
@click.option("--model", "models", multiple=True, required=True, metavar="MODELS",
              help="Models to sweep: comma list or repeated (bundled names, Hub ids, config paths).")
@_options
@click.option("--gpu", "gpus_", multiple=True, metavar="GPUS",
              help="Cards to judge every row on (comma list): adds <gpu>_fits and <gpu>_headroom columns.")
@click.option("--margin", default="0%", show_default=True, help="Headroom kept free on each --gpu, e.g. 10%.")
@click.option("--trust-remote-code", is_flag=True, default=False,
              help="Allow a model folder's own modeling code (auto_map) for shapes.")
@click.option("--format", "fmt", type=click.Choice(["csv", "md", "jsonl", "html"]), default="csv",
              show_default=True, help="Output format.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write to this file (atomically: complete or not at all) instead of stdout.")
@click.option("--title", default="vramplan sweep", show_default=True, help="Page title for --format html.")
@click.option("--max-rows", type=click.IntRange(min=1), default=SWEEP_MAX_ROWS, show_default=True,
              help="Refuse a sweep whose product (models x combinations of the lists) exceeds this, before "
                   "building anything.")
def sweep(*, models: tuple[str, ...], gpus_: tuple[str, ...], margin: str, trust_remote_code: bool, fmt: str,
          out: str | None, title: str, max_rows: int, **given: tuple[str, ...]) -> None:
    """Estimate every combination of the plan options given as comma lists, one row each.

    Every option of `vramplan plan` takes a comma-separated list (--rank 8,16,64 --batch 1,2,4
    --grad-ckpt true,false); --targets, --target-regex, --modules-to-save and --layers-to-transform already
    hold commas, so repeat them for alternatives. Rows hold the model, every setup option (defaults filled
    in), params_trainable, the three counters in bytes and GiB (2**30), peak_phase, and per --gpu whether it
    fits and the headroom. Invalid combinations (e.g. --method full with --quant nf4) are skipped with a
    warning; combinations that come out identical (LoRA options with --method full) are evaluated once.
    Rows go to stdout, or atomically to --out; progress and warnings go to stderr.
    """
    import math

    from ..errors import VramplanError
    from ..io import atomic_write_text, check_output_path, refuse_overwriting_input
    from ..planner import sweep as run_sweep
    from ..profiles import resolve_gpu, resolve_model

    ctx = click.get_current_context()
    names = _split(models)
    if not names:
        raise click.BadParameter("give at least one model name (a bundled name, Hub id or config path)",
                                 param_hint="--model")
    if out:
        check_output_path(out, "--out")
    axes: dict[str, list[Any]] = {}
    for o in sweep_options():
        axes[o.name] = _values(o, given.get(o.name, ()), ctx) or [o.default]
    rows = len(names) * math.prod(len(v) for v in axes.values())
    if rows > max_rows:
        longest = sorted(((len(v), k) for k, v in axes.items() if len(v) > 1), reverse=True)[:3]
        sizes = " x ".join(f"{n:,} {option_named(k).flag}" for n, k in longest)
        raise VramplanError(f"this sweep has {rows:,} rows ({len(names)} model{'s' if len(names) != 1 else ''}"
                            f"{' x ' + sizes if sizes else ''}{' x ...' if len(longest) == 3 else ''}), more than "
                            f"--max-rows {max_rows:,}: shorten the lists, or pass --max-rows {rows} to run it")
    m = parse_margin(margin)
    cards = [resolve_gpu(g) for g in _split(gpus_)]
    if len({c.name for c in cards}) != len(cards):
        cards = list({c.name: c for c in cards}.values())
    resolved = [resolve_model(name, trust_remote_code=trust_remote_code) for name in names]
    refuse_overwriting_input(out, [f for r in resolved for f in r.input_files], "--out")
    model_list = list({r.name: (r.name, r.spec) for r in resolved}.values())

    setups, invalid = build_setups(axes)
    if any(s.lengths is not None or s.alloc_conf is not None for s in setups):
        warn("--lengths/--alloc-conf: sweep rows do not replay the caching allocator yet; their reserved column is "
             "the single-step estimate (vramplan plan reports the run-level reserved peak)")
    if invalid:
        reasons = sorted({str(e) for e in invalid})
        warn(f"skipped {len(invalid)} invalid combination{'s' if len(invalid) != 1 else ''}: "
             + "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more reasons" if len(reasons) > 3 else ""))
    if not setups:
        raise VramplanError("no valid combination to sweep: every combination of the options is invalid "
                            "(see the warning above)")
    total = len(model_list) * len(setups)
    show = sys.stderr.isatty() or total > PROGRESS_MIN_ROWS
    if show:
        with click.progressbar(length=total, label=f"sweep: {total:,} rows", file=sys.stderr) as bar:
            result = run_sweep(model_list, setups, cards, m, progress=bar.update)
    else:
        result = run_sweep(model_list, setups, cards, m)
    if result.skipped:
        reasons = sorted({f"{name}: {why}" for name, why in result.skipped})
        warn(f"skipped {len(result.skipped)} row{'s' if len(result.skipped) != 1 else ''} the estimator refused: "
             + "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""))
    if not result.rows:
        raise VramplanError("the sweep produced no row: every combination was refused (see the warning above)")
    text = render(result.rows, [c.name for c in cards], fmt, title)
    if out:
        atomic_write_text(out, text)
        click.echo(f"vramplan: wrote {len(result.rows):,} row{'s' if len(result.rows) != 1 else ''} to {out}", err=True)
    else:
        click.echo(text, nl=False)


def build_setups(axes: dict[str, list[Any]]) -> tuple[list[Any], list[Exception]]:
    """The distinct valid setups of the option product, in order, and the errors of invalid combinations."""
    from ..errors import VramplanError
    from ..planner import product

    setups: dict[Any, None] = {}
    invalid: list[Exception] = []
    for combo in product(axes):
        try:
            setups.setdefault(setup_from_options(combo))
        except VramplanError as exc:
            invalid.append(exc)
    return list(setups), invalid


# ---------------------------------------------------------------------------------------------- render
def columns(gpu_names: list[str]) -> list[str]:
    """The sweep table's columns, in order."""
    from ..planner import COUNTER_COLUMNS, OPTION_COLUMNS, gib_column, gpu_columns

    cols = ["model", *OPTION_COLUMNS, "params_trainable", *COUNTER_COLUMNS, "peak_phase",
            *(gib_column(c) for c in COUNTER_COLUMNS)]
    for g in gpu_names:
        fits, head = gpu_columns(g)
        cols += [fits, head, gib_column(head)]
    return cols


def _records(rows: list[dict[str, Any]], cols: list[str]) -> list[dict[str, Any]]:
    """Every row with every column (``None`` where a row has no value), in column order."""
    return [{c: r.get(c) for c in cols} for r in rows]


def render(rows: list[dict[str, Any]], gpu_names: list[str], fmt: str, title: str) -> str:
    """The sweep table in ``fmt``. CSV, Markdown and JSONL are written with the standard library (no pandas)."""
    from ..planner import COUNTER_COLUMNS, gib_column, gpu_columns

    cols = columns(gpu_names)
    records = _records(rows, cols)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        writer.writerows(["" if r[c] is None else r[c] for c in cols] for r in records)
        return buf.getvalue()
    if fmt == "jsonl":
        import json

        return "".join(json.dumps(r) + "\n" for r in records)
    if fmt == "md":
        return _markdown(cols, records)
    # html: the report's table shows *_bytes columns in GiB itself, so the GiB copies are left out
    from ..extras import require

    require("report", "sweep --format html")
    from ..report import table_page

    gib_cols = {gib_column(c) for c in COUNTER_COLUMNS} | {gib_column(gpu_columns(g)[1]) for g in gpu_names}
    return table_page([{k: v for k, v in r.items() if k not in gib_cols} for r in records], title)


def _markdown(cols: list[str], records: list[dict[str, Any]]) -> str:
    def cell(k: str, v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float) and k.endswith("(GiB)"):
            return f"{v:,.2f}"
        if isinstance(v, int):
            return f"{v:,}" if k.endswith("_bytes") or k == "params_trainable" else str(v)
        return str(v).replace("|", "\\|")

    numeric = {c for c in cols if any(isinstance(r[c], (int, float)) and not isinstance(r[c], bool)
                                      for r in records)}
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if c in numeric else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in cols) + " |" for r in records]
    return "\n".join(lines) + "\n"
