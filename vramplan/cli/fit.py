"""``vramplan fit``: does a setup fit a card, how far can it grow, and what to change when it does not."""

from __future__ import annotations

import sys

import click

from .options import json_option, margin_option, plan_options, setup_from_options
from .plan import parse_margin
from .render import echo_json, gib, setup_line, table, warn


@click.command(short_help="Does a setup fit a GPU? Largest batch/seq/rank, fewest GPUs, changes that make it fit.")
@click.argument("model")
@plan_options
@margin_option
@json_option
def fit(model: str, *, as_json: bool, gpu: str | None, margin: str, trust_remote_code: bool, **opts) -> None:
    """Say whether MODEL with the plan options fits on --gpu, and with how much headroom.

    Also reports the largest batch that fits at --seq, the largest sequence length that fits at --batch (a
    multiple of 128), for lora/qlora the largest --rank, and the fewest cards of --gpu on which the setup fits
    and with which --strategy (per-rank estimate, --batch per GPU, --offload kept; up to 64 GPUs; JSON key
    min_gpus). When the setup does not fit, lists single changes (checkpointing, qlora, 8-bit or paged
    optimizer, chunked loss, shorter sequences, a smaller batch with gradient accumulation, fewer targets,
    sharding over more GPUs) with the memory each saves, most first.

    With --lengths or --alloc-conf the run is replayed through PyTorch's caching allocator (as vramplan plan
    does, seconds per replay): the verdict is the run's (no out-of-memory error over its steps on the card,
    JSON fits_on "run_peak_reserved_bytes"), and so are the largest batch and rank (and seq when every step
    has one shape; with varying --lengths the largest seq stays the single-step estimate, every sample that
    long). The allocator section lists the run's reserved peak and the ranked allocator fixes.

    Exit code 0 when it fits, 1 when it does not, 2 on bad input.
    """
    from ..errors import SetupError
    from ..planner import MIN_GPUS_LIMIT, SEQ_STEP, fit_report
    from ..profiles import resolve_gpu, resolve_model

    if gpu is None:
        raise SetupError("fit needs a card: pass --gpu (a name from `vramplan gpus` or a size such as 24GB)")
    from .plan import ignored_warnings

    setup = setup_from_options(opts)
    for w in ignored_warnings(opts, setup):
        warn(w)
    g = resolve_gpu(gpu)
    m = parse_margin(margin)
    resolved = resolve_model(model, trust_remote_code=trust_remote_code)
    report = fit_report(resolved.spec, setup, g, m)
    plan_json = report.estimate.to_dict()
    plan_json["model"] = resolved.name
    for w in report.estimate.warnings:
        warn(w)
    data = report.to_dict(plan_json)
    if as_json:
        echo_json(data)
    else:
        click.echo(fit_text(data, SEQ_STEP, resolved.spec.max_position_embeddings, MIN_GPUS_LIMIT))
    if not report.fits:
        sys.exit(1)


def fewest_gpus_line(mg: dict | None, gpu: str, s: dict, max_gpus: int) -> str:
    """``fit``'s answer to "on how many of these cards does it fit?" (``min_gpus`` in the JSON)."""
    if mg is None:
        return f"fewest {gpu} that fit: none up to {max_gpus} GPUs"
    n, strategy = mg["gpus"], mg["strategy"]
    if s["method"] == "inference":
        return f"fewest {gpu} that fit: {n} (one replica per GPU)"
    if n == 1 and strategy == "ddp":
        return f"fewest {gpu} that fit: 1 (a single GPU)"
    offload = f" --offload {s['offload']}" if s.get("offload") not in (None, "none") else ""
    per = f", per-GPU batch {s['batch']}" if n > 1 else ""
    return f"fewest {gpu} that fit: {n} with --strategy {strategy} (--gpus {n} --strategy {strategy}{offload}{per})"


def fit_text(d: dict, seq_step: int, max_positions: int | None, max_gpus: int = 64) -> str:
    """The human view of ``fit --json``."""
    p = d["plan"]
    f = p["fits"]
    s = p["setup"]
    at_limit = set(d["at_limit"])
    margin = f" with {f['margin']:.0%} margin" if f.get("margin") else ""
    run = d.get("allocator")
    step = f"one step with every sample {s['seq']:,} tokens: " if run is not None else ""
    lines = [setup_line(p),
             f"{f['gpu']} ({gib(f['capacity_bytes'])} GiB): {step}{'FITS' if f['fits'] else 'DOES NOT FIT'}{margin} — "
             f"device used {gib(p['device_used_bytes'])} GiB, headroom {gib(f['headroom_bytes'])} GiB"]
    single = set(d.get("single_step", ()))
    if run is not None:
        b, sq = run["longest_batch_seq"]
        verdict = "FITS" if d["fits"] else f"DOES NOT FIT (out of memory at step {run['oom_step']})"
        lines.append(f"the run ({run['steps']} steps of --lengths {run['lengths']}, longest {b} × {sq:,}; "
                     f"PYTORCH_CUDA_ALLOC_CONF {run['alloc_conf'] or 'default'}): {verdict} — run peak reserved "
                     f"{gib(run['peak_reserved_bytes'])} GiB of {gib(run['capacity_bytes'])} GiB the allocator may "
                     "reserve; the verdict and the searches below are the run's")
    lines.append("")

    def largest(value: int | None, what: str, name: str) -> str:
        if value is None:
            return f"largest {what}: none fits"
        more = " (search limit: at least this)" if name in at_limit else ""
        if name in single:
            more += " (single-step estimate: every sample this long)"
        return f"largest {what}: {value:,}{more}"

    lines.append(largest(d["max_batch"], f"batch at seq {s['seq']:,}", "batch"))
    seq_line = largest(d["max_seq"], f"seq at batch {s['batch']} (multiple of {seq_step})", "seq")
    if d["max_seq"] is not None and max_positions and d["max_seq"] > max_positions:
        seq_line += f" (beyond the model's max_position_embeddings {max_positions:,})"
    lines.append(seq_line)
    if s["method"] in ("lora", "qlora"):
        lines.append(largest(d["max_rank"], f"rank at batch {s['batch']} × seq {s['seq']:,}", "rank"))
    lines.append(fewest_gpus_line(d.get("min_gpus"), f["gpu"], s, max_gpus)
                 + (" (single-step estimate)" if "min_gpus" in single else ""))
    if d["suggestions"]:
        basis = "single-step estimate; " if run is not None else ""
        lines += ["", f"changes that save memory ({basis}one at a time, most saved first):"]
        rows = [[x["change"], gib(x["saves_bytes"]), "yes" if x["fits_after"] else "no", x["option"]]
                for x in d["suggestions"]]
        lines.append(table(["change", "saves GiB", "fits after", "option"], rows, "lrll"))
    elif not d["fits"]:
        lines += ["", "no single change modelled by vramplan saves memory on this setup"]
    if run is not None:
        from .plan import allocator_text

        lines.append(allocator_text(run))
    lines += ["", "GiB = 2**30 bytes"]
    return "\n".join(lines)
