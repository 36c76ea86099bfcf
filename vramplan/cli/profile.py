"""``vramplan profile``: run real steps of a setup and record what memory they use.

Exit codes: 0 the run finished (or ``--until-oom`` found its limit); 1 the run went out of memory (does not
fit); 2 bad input; 3 the run failed for another reason (the record says why); 130 interrupted (Ctrl-C), with
a partial record written. With ``--gpus N`` the status is the merged one (an OOM on any rank is exit 1).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from ..profiler.options import NOT_PROFILED
from .options import apply, json_option, setup_from_options, setup_option_list
from .render import echo_json, gib, table, warn

EXIT = {"ok": 0, "oom": 1, "error": 3, "interrupted": 130}

plan_options = apply(setup_option_list(exclude=NOT_PROFILED))


def _progress(message: str) -> None:
    click.echo(f"vramplan: {message}", err=True)


def _g(n: int | None) -> str:
    return "-" if n is None else gib(n, 3)


def _render_run(rec: dict[str, Any], path: Any) -> None:
    s = rec["setup"]
    quant = "" if s["quant"] == "none" else f" {s['quant']}"
    ranks = rec.get("ranks")
    where = rec["environment"].get("device")
    if ranks:
        where = f"{len(ranks)} × {where} ({s['strategy']}{'' if s.get('offload', 'none') == 'none' else ', offload ' + s['offload']})"
    click.echo(f"{rec['model']}: {s['method']}{quant}, batch {s['batch']} x seq {s['seq']}, {s['precision']} on "
               f"{where}: {rec['status']} ({rec['steps']} steps after {rec['warmup']} "
               f"warmup, {rec['wall_s']:.1f} s)")
    if ranks:
        rows = [[str(e["rank"]), e["status"], _g(e["measured"].get("peak_allocated_bytes")),
                 _g(e["measured"].get("peak_reserved_bytes")), _g(e["measured"].get("device_used_bytes")),
                 _g(e["measured"].get("peak_rss_bytes")), _g((e.get("parallel") or {}).get("local_param_bytes"))]
                for e in ranks]
        click.echo(table(["rank", "status", "peak allocated GiB", "peak reserved GiB", "device used GiB", "RSS GiB",
                          "own params GiB"], rows, "rlrrrrr"))
        click.echo(f"per phase: the maximum over ranks (peak: rank {rec['measured'].get('peak_rank')})")
    rows = []
    for name, p in rec["measured"]["per_phase"].items():
        rows.append([name, str(p["count"]), f"{p['mean_s']:.3f}", _g(p["peak_allocated_bytes"]),
                     _g(p["peak_reserved_bytes"]), _g(p["device_used_bytes"]), _g(p["rss_bytes"])])
    if rows:
        click.echo(table(["phase", "count", "mean s", "peak allocated GiB", "peak reserved GiB", "device used GiB",
                          "RSS GiB"], rows, "lrrrrrr"))
    m = rec["measured"]
    click.echo(f"measured peak: allocated {_g(m['peak_allocated_bytes'])} GiB, reserved "
               f"{_g(m['peak_reserved_bytes'])} GiB, device used {_g(m['device_used_bytes'])} GiB (CUDA context "
               f"{_g(m['cuda_context_bytes'])} GiB), RSS {_g(m['peak_rss_bytes'])} GiB")
    for key, e in rec["error"].items():
        click.echo(f"estimate {key.removesuffix('_bytes').replace('_', ' ')}: {gib(e['estimated'], 3)} GiB vs "
                   f"measured {gib(e['measured'], 3)} GiB ({e['error_pct']:+.1f} %)")
    if rec["oom"]:
        o = rec["oom"]
        on = f" on rank {o['rank']}" if o.get("rank") is not None else ""
        click.echo(f"out of memory{on} in {o['phase']} of step {o['step']}: {o['message']}")
    if rec.get("snapshot"):
        click.echo(f"allocator snapshot: {rec['snapshot']}")
    if path is not None:
        click.echo(f"record: {path}")


def _render_until_oom(summary: dict[str, Any], path: Any) -> None:
    axis = summary["axis"]
    rows = [[str(r["value"]), r["status"], _g(r["peak_allocated_bytes"]), _g(r["device_used_bytes"]),
             _g(r["peak_rss_bytes"]), _g(r["estimated_device_used_bytes"])] for r in summary["trials"]]
    click.echo(table([axis, "status", "peak allocated GiB", "device used GiB", "RSS GiB", "estimated used GiB"],
                     rows, "rlrrrr"))
    pred, pmax = summary["predicted_limit"], summary.get("predicted_max")
    planner = "n/a" if pred is None else f"{pred} on this ladder (largest that fits: {pmax})"
    click.echo(f"largest {axis} that ran: {summary['limit'] if summary['limit'] is not None else 'none'}; first OOM: "
               f"{summary['first_oom'] if summary['first_oom'] is not None else 'none'} (stopped: "
               f"{summary['stopped']}); planner predicts: {planner}")
    if path is not None:
        click.echo(f"summary: {path}")


@click.command(short_help="Run real steps of a setup and record the memory they use.")
@click.argument("model")
@plan_options
@click.option("--steps", type=int, default=5, show_default=True, help="Measured steps (after warmup).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Steps run before measuring.")
@click.option("--sample-hz", type=float, default=100.0, show_default=True, help="Memory samples per second.")
@click.option("--out", default="reports/runs/", show_default=True,
              help="Folder for the run record (or a .json file path).")
@click.option("--loop", type=click.Choice(("trainer", "plain")), default="trainer", show_default=True,
              help="HF Trainer, or a bare PyTorch loop.")
@click.option("--snapshot", is_flag=True, help="Dump a CUDA allocator snapshot (pickle) of the peak step.")
@click.option("--until-oom", type=click.Choice(("batch", "seq")), default=None,
              help="Double batch (or seq) until out of memory; one record per run and a summary.")
@click.option("--device", type=click.Choice(("auto", "cuda", "cpu")), default="auto", show_default=True,
              help="Where to run (auto: CUDA when available).")
@json_option
def profile(model: str, *, steps: int, warmup: int, sample_hz: float, out: str, loop: str, snapshot: bool,
            until_oom: str | None, device: str, as_json: bool, **opts: Any) -> None:
    """Run MODEL with the setup for WARMUP + STEPS steps and record the memory it really uses.

    MODEL is a bundled name, a config.json, or a model folder (its *.safetensors weights are used when
    present; otherwise weights are random — memory does not depend on their values). The record (JSON,
    schema vramplan.run/1) holds per-phase allocator peaks, NVML and RSS samples, the environment and the
    planner's estimate beside the measurement. Runs on the CPU too (RSS only). An OOM is a result: exit 1.

    --gpus N (or a sharding --strategy) runs N ranks, one GPU each: ddp under torchrun, FSDP and DeepSpeed
    under accelerate launch with a generated config holding the defaults the planner models (on the CPU: N
    processes over gloo; DeepSpeed needs GPUs and the deepspeed package). Every rank is sampled; the record
    lists them under "ranks" and its measured peaks are the maximum over ranks (--batch is per rank).
    """
    from ..extras import require

    require("profile", "vramplan profile")
    from ..io import check_output_path
    from ..profiler import RunOptions, profile_run
    from ..profiler import until_oom as run_until_oom

    setup = setup_from_options(opts)
    # an --out that cannot be written is refused before measuring, so a run is never lost to it
    check_output_path(out if out.endswith(".json") else f"{out.rstrip('/')}/run.json", "--out")
    options = RunOptions(steps=steps, warmup=warmup, sample_hz=sample_hz, out=out, loop=loop, snapshot=snapshot,
                         device=device)
    options.validate()
    ctx = click.get_current_context()
    # Libraries print to stdout (Trainer metrics, peft); keep stdout for our data.
    with contextlib.redirect_stdout(sys.stderr):
        if until_oom:
            result = run_until_oom(model, setup, options, until_oom, warn=warn, progress=_progress)
        else:
            run = profile_run(model, setup, options, warn=warn, progress=_progress)
    if until_oom:
        if as_json:
            echo_json(result.summary)
        else:
            _render_until_oom(result.summary, result.path)
        last = result.runs[-1].status if result.runs else "ok"
        ctx.exit(EXIT[last] if last in ("interrupted", "error") else 0)
    rec = run.record
    if as_json:
        echo_json(rec)
        if run.path is not None:
            click.echo(f"vramplan: record: {run.path}", err=True)
    else:
        _render_run(rec, run.path)
    if rec["status"] == "error":
        exc = rec.get("exception") or {}
        first = (exc.get("message") or "").splitlines()[0] if exc.get("message") else ""
        on = f"rank {exc['rank']} of " if exc.get("rank") is not None else ""
        click.echo(f"vramplan: error: {on}the run failed in {exc.get('phase')}: {exc.get('type')}: {first} "
                   f"(record: {run.path})", err=True)
    ctx.exit(EXIT[rec["status"]])
