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
@click.option("--columns", "columns_", default=None, metavar="COLUMNS",
              help="Columns to write, in order (comma list): column names (model, option names such as rank or "
                   "grad_ckpt, params_trainable, peak_reserved_bytes, device_used (GiB), <gpu>_fits, ...) and "
                   "the groups auto (model, method, the options that vary across the rows, every result), all, "
                   "options, results. Default: auto for csv, md and html; all for jsonl.")
def sweep(*, models: tuple[str, ...], gpus_: tuple[str, ...], margin: str, trust_remote_code: bool, fmt: str,
          out: str | None, title: str, max_rows: int, columns_: str | None, **given: tuple[str, ...]) -> None:
    """Estimate every combination of the plan options given as comma lists, one row each.

    Every option of `vramplan plan` takes a comma-separated list (--rank 8,16,64 --batch 1,2,4
    --grad-ckpt true,false); --targets, --target-regex, --modules-to-save and --layers-to-transform already
    hold commas, so repeat them for alternatives. Rows hold the model, every setup option (defaults filled
    in), params_trainable, the three counters in bytes and GiB (2**30), peak_phase, and per --gpu whether it
    fits and the headroom. With --lengths or --alloc-conf each row also replays the caching allocator over
    the run (as vramplan plan does, seconds a row): run_peak_allocated_bytes, run_peak_reserved_bytes,
    run_fragmentation_share, run_peak_reserved (GiB) and per --gpu <gpu>_run_fits (the run raises no OOM
    there). With --device-map (inference over --gpus N) each such row holds the split: split_layers and the
    fullest GPU's split_max_peak_allocated_bytes / split_max_device_used_bytes for --max-memory's budget, and per
    --gpu <gpu>_split_layers and <gpu>_split_max_device_used_bytes, <gpu>_fits and <gpu>_headroom being the
    split's verdict (every GPU fits) and its tightest GPU's headroom, as vramplan plan gives them. CSV, Markdown
    and HTML show the model, the method, the options that vary across the rows and
    every result unless --columns says otherwise; JSONL records hold every column. Invalid combinations
    (e.g. --method full with --quant nf4) are skipped with a warning; combinations that come out identical
    (LoRA options with --method full) are evaluated once. Rows go to stdout, or atomically to --out;
    progress and warnings go to stderr.
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
    replay = any(s.lengths is not None or s.alloc_conf is not None for s in setups)
    if replay:
        check_replay_options(setups)
    split = any(s.device_map != "none" for s in setups)
    card_names = [c.name for c in cards]
    wanted = parse_columns(columns_ if columns_ is not None else ("all" if fmt == "jsonl" else "auto"),
                           columns(card_names, replay, split), card_names)
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
    cols = resolve_columns(wanted, result.rows, card_names, replay, split)
    text = render(result.rows, card_names, fmt, title, cols)
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


def check_replay_options(setups: list[Any]) -> None:
    """Read every distinct ``--lengths`` and ``--alloc-conf`` of the sweep before any row is estimated, so that
    a bad value is one error (exit 2), not a warning per skipped row.

    Raises:
        LengthsError, AllocConfError: the first bad value, one line.
    """
    from ..allocator.conf import parse_alloc_conf
    from ..allocator.plan import parse_lengths_option, run_options

    for text in dict.fromkeys(s.lengths for s in setups):
        parse_lengths_option(text)
        run_options(text)
    for text in dict.fromkeys(s.alloc_conf for s in setups):
        parse_alloc_conf(text)


# ---------------------------------------------------------------------------------------------- columns
#: the groups ``--columns`` accepts besides column names
COLUMN_GROUPS = ("auto", "all", "options", "results")
#: option columns ``auto`` always shows: what a row is
KEY_COLUMNS = ("model", "method")


def columns(gpu_names: list[str], replay: bool = False, split: bool = False) -> list[str]:
    """The sweep table's columns, in order (``replay``: with the run-level columns of ``--lengths``; ``split``:
    with the per-GPU split of ``--device-map`` rows)."""
    from ..planner import COUNTER_COLUMNS, OPTION_COLUMNS, gib_column, gpu_columns
    from ..planner.sweeps import RUN_COLUMNS, SPLIT_COLUMNS, run_fits_column, split_columns

    cols = ["model", *OPTION_COLUMNS, "params_trainable", *COUNTER_COLUMNS, "peak_phase",
            *(gib_column(c) for c in COUNTER_COLUMNS)]
    if replay:
        cols += [*RUN_COLUMNS, gib_column("run_peak_reserved_bytes")]
    if split:
        cols += list(SPLIT_COLUMNS)
    for g in gpu_names:
        fits, head = gpu_columns(g)
        cols += [fits, head, gib_column(head)]
        if replay:
            cols.append(run_fits_column(g))
        if split:
            cols += list(split_columns(g))
    return cols


def parse_columns(text: str, known: list[str], gpu_names: list[str]) -> list[str]:
    """``--columns``: the names and groups asked for, in order, checked against ``known`` (the sweep's columns).
    An option may be named by its flag too (``grad-ckpt``, ``--grad-ckpt``).

    Raises:
        VramplanError: an unknown name, quoted, with the closest columns.
    """
    from ..errors import VramplanError, close_matches
    from ..planner.sweeps import RUN_COLUMNS

    by_flag = {o.flag.lstrip("-"): o.name for o in sweep_options()}
    out: list[str] = []
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise VramplanError(f"--columns {text!r} names no column: give names (model,rank,device_used_bytes) or "
                            f"one of {', '.join(COLUMN_GROUPS)}")
    for item in items:
        name = item if item in known or item in COLUMN_GROUPS else by_flag.get(item.lstrip("-"), item)
        if name not in known and name not in COLUMN_GROUPS:
            if name in RUN_COLUMNS or name.endswith("_run_fits") or name == "run_peak_reserved (GiB)":
                raise VramplanError(f"--columns {item!r}: the run-level columns come with --lengths or --alloc-conf")
            hint = close_matches(item, [*known, *COLUMN_GROUPS])
            cards = (f"; the card columns are <gpu>_fits, <gpu>_headroom_bytes for the --gpu cards "
                     f"({', '.join(gpu_names)})" if gpu_names else "")
            raise VramplanError(f"--columns {item!r} is not a sweep column{hint}: use option names (rank, "
                                f"grad_ckpt, ...), results (params_trainable, peak_reserved_bytes, device_used_bytes, "
                                f"peak_phase, ...){cards}, or {', '.join(COLUMN_GROUPS)}")
        out.append(name)
    return out


def resolve_columns(wanted: list[str], rows: list[dict[str, Any]], gpu_names: list[str],
                    replay: bool = False, split: bool = False) -> list[str]:
    """The columns to write: ``wanted`` (:func:`parse_columns`) with its groups expanded against ``rows``:
    ``auto`` is the model, the method, every option whose value differs between rows, and every result;
    ``options`` every option column, ``results`` every other column; names keep their order, repeats dropped."""
    from ..planner import OPTION_COLUMNS

    every = columns(gpu_names, replay, split)
    options = [c for c in every if c in OPTION_COLUMNS]
    results = [c for c in every if c != "model" and c not in OPTION_COLUMNS]
    varying = {c for c in options if len({_key(r.get(c)) for r in rows}) > 1}
    groups = {"all": every, "options": options, "results": results,
              "auto": [c for c in every if c in KEY_COLUMNS or c in varying or c in results]}
    out: list[str] = []
    for name in wanted:
        out.extend(groups.get(name, [name]))
    return list(dict.fromkeys(out))


def _key(value: Any) -> Any:
    return repr(value) if isinstance(value, (list, dict)) else value


# ---------------------------------------------------------------------------------------------- render


def _records(rows: list[dict[str, Any]], cols: list[str]) -> list[dict[str, Any]]:
    """Every row with every column (``None`` where a row has no value), in column order."""
    return [{c: r.get(c) for c in cols} for r in rows]


def render(rows: list[dict[str, Any]], gpu_names: list[str], fmt: str, title: str,
           cols: list[str] | None = None) -> str:
    """The sweep table in ``fmt`` with the columns ``cols`` (``None``: every column, :func:`columns`). CSV,
    Markdown and JSONL are written with the standard library (no pandas)."""
    from ..planner import gib_column

    if cols is None:
        cols = columns(gpu_names, any("run_peak_reserved_bytes" in r for r in rows),
                       any("split_layers" in r for r in rows))
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

    # a GiB copy is left out when its bytes column is shown
    gib_cols = {gib_column(c) for c in cols if c.endswith("_bytes")}
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
