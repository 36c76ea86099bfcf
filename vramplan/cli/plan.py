"""``vramplan plan``: estimate one setup."""

from __future__ import annotations

import sys

import click

from .options import json_option, margin_option, plan_options, setup_from_options
from .render import echo_json, plan_text, warn


@click.command(short_help="Estimate peak GPU memory of a fine-tuning or inference setup.")
@click.argument("model")
@plan_options
@margin_option
@json_option
@click.option("--explain", is_flag=True, help="Print every formula with its numbers and source.")
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the plan as a self-contained HTML page.")
@click.option("--mode", type=click.Choice(["analytic", "simulate", "both"], case_sensitive=False),
              default="analytic", show_default=True,
              help="analytic: the formulas; simulate: run the step on meta tensors with the installed "
                   "transformers/peft/bitsandbytes and track every allocation (needs torch); both: side by "
                   "side with the difference per component (falls back to analytic with a warning).")
@click.option("--sim-layers", default="auto", show_default=True,
              help="Layers the simulation runs: auto (two depths, extrapolated per layer), all, or N "
                   "(N and N + the layer period).")
def plan(model: str, *, as_json: bool, explain: bool, html_path: str | None, gpu: str | None, margin: str,
         trust_remote_code: bool, mode: str = "analytic", sim_layers: str = "auto", **opts) -> None:
    """Estimate peak GPU memory for MODEL and say whether it fits on --gpu.

    MODEL is a bundled name (vramplan models), a Hugging Face id, or a path to a config.json or model
    folder. Exit code 0, or 1 when --gpu is given and the setup does not fit; 2 on bad input.
    """
    from ..errors import SetupError
    from ..estimate import estimate
    from ..io import check_output_path, refuse_overwriting_input
    from ..profiles import resolve_gpu, resolve_model

    if html_path:
        check_output_path(html_path, "--html")
    setup = setup_from_options(opts)
    g = resolve_gpu(gpu) if gpu is not None else None
    m = parse_margin(margin)
    resolved = resolve_model(model, trust_remote_code=trust_remote_code)
    refuse_overwriting_input(html_path, resolved.input_files, "--html")
    ignored = ignored_warnings(opts, setup)
    for w in ignored:
        warn(w)
    if mode.lower() != "analytic" and setup.device_map != "none":
        raise SetupError(f"--device-map {setup.device_map} is planned analytically only: --mode {mode.lower()} "
                         "simulates one GPU holding the whole model, so the split per GPU would be lost; drop --mode")
    if mode.lower() != "analytic":     # issue 4: simulated step (vramplan/cli/simulate_cmd.py)
        from ..extras import require

        require("simulate", f"--mode {mode.lower()}")
        from .simulate_cmd import plan_mode

        code = plan_mode(mode.lower(), resolved, setup, g, m, sim_layers=sim_layers, as_json=as_json,
                         explain=explain, html_path=html_path)
        if code:
            sys.exit(code)
        return
    # with --device-map the verdict is per GPU of the split (the device_map section), not for one card
    est = estimate(resolved.spec, setup, g if setup.device_map == "none" else None, m)
    data = est.to_dict()
    data["model"] = resolved.name
    if ignored:
        data["warnings"] = [*ignored, *data.get("warnings", [])]
    for w in est.warnings:
        warn(w)
    if setup.device_map != "none":        # issue 17: from_pretrained(device_map=...) over --gpus GPUs
        data["device_map"] = device_map_data(resolved.spec, setup, data, g, m)
        for w in data["device_map"]["warnings"]:
            warn(w)
    if setup.lengths is not None or setup.alloc_conf is not None:     # issue 20: the caching allocator's run
        from ..allocator.plan import allocator_plan, capacity_from
        from ..estimate.overhead import usable_bytes

        # the card less --margin, as fit and sweep give the replay (planner/fit.py)
        cap = (capacity_from(usable_bytes(g.memory_bytes, m), est.device_used_bytes, est.peak_reserved_bytes)
               if g is not None else None)
        data["allocator"] = allocator_plan(resolved.spec, setup, setup.lengths, setup.alloc_conf, cap).to_dict()
    if html_path:
        from ..extras import require

        require("report", "--html")
        from ..io import atomic_write_text
        from ..planner import plan_page_data
        from ..report import plan_page

        # a --device-map plan's page is the split per GPU: the ladder and grid are views of one GPU (issue 17)
        page_data = data if "device_map" in data else plan_page_data(resolved.spec, setup, data, g)
        atomic_write_text(html_path, plan_page(page_data))
    if as_json:
        echo_json(data)
    else:
        click.echo(plan_text(data, explain=explain))
        if "allocator" in data:
            click.echo(allocator_text(data["allocator"]))
        if "device_map" in data:
            click.echo(device_map_text(data["device_map"], explain=explain))
    if "device_map" in data:
        if data["device_map"]["fits"] is False:
            sys.exit(1)
    elif est.fit is not None and not est.fit.fits:
        sys.exit(1)
    if data.get("allocator", {}).get("oom_step") is not None:
        sys.exit(1)


def device_map_data(spec, setup, data: dict, g, margin: float) -> dict:
    """The ``device_map`` section (:func:`vramplan.planner.sweeps.device_map_data`) for this plan's components."""
    from ..planner.sweeps import device_map_data as section

    return section(spec, setup, data["breakdown_bytes"], g, margin)


def device_map_text(d: dict, explain: bool = False) -> str:
    """The human view of a plan's ``device_map`` section; ``explain``: the budgets and each GPU's sum."""
    from ..units import gib

    lines = ["", f"device map ({d['strategy']}, {d['gpus']} GPUs; {d['source']}):",
             f"  {'GPU':>4} {'layers':>10} {'weights':>9} {'KV cache':>9} {'working':>9} {'allocated':>10} "
             f"{'nvidia-smi':>10}  fits"]
    for r in d["devices"]:
        fits = {True: "yes", False: "NO", None: "-"}[r["fits"]]
        head = " +lm_head" if r["holds_lm_head"] else ""
        lines.append(f"  {r['device']:>4} {r['layers']:>10} {gib(r['weights_bytes']):>9.2f} "
                     f"{gib(r['kv_cache_bytes']):>9.2f} {gib(r['working_set_bytes']):>9.2f} "
                     f"{gib(r['peak_allocated_bytes']):>10.2f} {gib(r['device_used_bytes']):>10.2f}  {fits}{head}")
    lines.append("  (GiB; allocated = max_memory_allocated, nvidia-smi = reserved + CUDA context)")
    if explain:
        budget = ", ".join(f"{k}: {v:,} B" for k, v in d["max_memory_bytes"].items())
        lines.append(f"  max_memory given to infer_auto_device_map (after get_balanced_memory): {budget or '-'}")
        lines.append("  per GPU: allocated = its weights + the KV cache × its layers / all layers + one layer's "
                     "working set (where it holds layers) + the logits (where lm_head sits) + cuBLAS workspace; "
                     "reserved = allocated + allocator slack; nvidia-smi = reserved + CUDA context")
        for r in d["devices"]:
            lines.append(f"    GPU {r['device']}: {r['weights_bytes']:,} + {r['kv_cache_bytes']:,} + "
                         f"{r['working_set_bytes']:,} (+ cuBLAS) = {r['peak_allocated_bytes']:,} B allocated; "
                         f"{r['peak_reserved_bytes']:,} B reserved; {r['device_used_bytes']:,} B nvidia-smi")
    return "\n".join(lines)


def allocator_text(a: dict) -> str:
    """The human view of a plan's ``allocator`` section (``vramplan/allocator/plan.py``)."""
    from .render import gib, table

    b, s = a["longest_batch_seq"]
    conf = a["alloc_conf"] or "default"
    lines = ["", f"allocator (PYTORCH_CUDA_ALLOC_CONF {conf}; lengths {a['lengths']}, {a['batching']} batching, "
                 f"{a['steps']} steps, longest {b} × {s:,}):"]
    lines.append(f"  run peak reserved  {gib(a['peak_reserved_bytes']):>9s} GiB  ← max_memory_reserved over the run")
    lines.append(f"  run peak allocated {gib(a['peak_allocated_bytes']):>9s} GiB  ← max_memory_allocated over the run")
    lines.append(f"  analytic reserved  {gib(a['analytic_reserved_bytes']):>9s} GiB  ← allocated + slack at the "
                 "longest step")
    if a["capacity_bytes"] is not None:
        oom = f"OOM at step {a['oom_step']}" if a["oom_step"] is not None else "no OOM"
        lines.append(f"  on {gib(a['capacity_bytes'])} GiB for the allocator: {oom}")
    lines.append(f"  reason: {a['reason']}")
    lines += [f"  note: {n}" for n in a.get("notes", ())]
    rows = [[f["fix"], gib(f["peak_reserved_bytes"]), gib(f["saved_bytes"]),
             "OOM at step " + str(f["oom_step"]) if f["oom_step"] is not None else "", f["how"]]
            for f in a["fixes"]]
    if rows:
        lines.append("  fixes, best first:")
        body = table(["fix", "peak reserved GiB", "saved GiB", "", "how"], rows, "lrrll")
        lines += ["    " + line for line in body.splitlines()]
    return "\n".join(lines)


def parse_margin(text: str) -> float:
    """``"10%"`` or ``"0.1"`` -> 0.1 (:func:`vramplan.options.read_margin`, the reader of plan files too)."""
    from ..errors import SetupError
    from ..options import read_margin

    try:
        return read_margin(text)
    except ValueError as exc:
        raise SetupError(f"--margin {exc}") from None


def given_options(opts: dict) -> dict:
    """The options of the running command that the user wrote (command line or environment), by name."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {k: v for k, v in opts.items()
            if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


def ignored_warnings(opts: dict, setup) -> list[str]:
    """Warnings for options given that ``setup`` does not use (:func:`vramplan.setup.ignored_options`)."""
    from ..setup import ignored_options

    return ignored_options(given_options(opts), setup)
