"""Benchmark ``vramplan sweep``: 10,000 configurations, target <= 2 s on a 2-core machine.

Runs the same functions the command runs (build the distinct setups, :func:`vramplan.planner.sweep`, the
DataFrame and CSV rendering), times each phase, and saves JSON with machine info under
``benchmarks/results/`` first (pytest-benchmark style: views are rendered from the saved JSON, never
computed in a renderer). With ``--profile`` it also runs the sweep under cProfile and records the functions
with the most own time, in microseconds per ``estimate()`` call.

    python benchmarks/bench_sweep.py [--profile] [--out benchmarks/results/NAME.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from _machine import machine_info as _machine  # noqa: E402  (benchmarks/_machine.py)

#: 5 models × 2 methods × 5 ranks × 5 batches × 5 seqs × 2 checkpointing × 2 optimizers × 2 attention = 10,000
AXES = {
    "models": ["llama-3.2-1b", "qwen3-0.6b", "llama-3.1-8b", "qwen2.5-7b", "mistral-7b-v0.3"],
    "method": ["lora", "qlora"],
    "rank": [8, 16, 32, 64, 128],
    "batch": [1, 2, 4, 8, 16],
    "seq": [512, 1024, 2048, 4096, 8192],
    "grad_ckpt": [True, False],
    "optim": ["adamw", "adamw-8bit"],
    "attn": ["sdpa", "flash"],
}
GPUS = ["rtx-4090", "a100-80gb", "h100-80gb"]
TARGET_S = 2.0
#: time the checkout this file lives in, not whatever copy of vramplan is installed in site-packages
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine_info() -> dict:
    import pandas

    import vramplan

    return {**_machine("vramplan"), "pandas": pandas.__version__,
            "vramplan_path": str(Path(vramplan.__file__).parent)}


def axes_for_cli() -> dict:
    from vramplan.cli.sweep import sweep_options

    axes = {o.name: [o.default] for o in sweep_options()}
    axes.update({k: v for k, v in AXES.items() if k != "models"})
    return axes


def run(profile: bool = False) -> dict:
    from vramplan.cli.sweep import build_setups, render
    from vramplan.planner import structure_key, sweep
    from vramplan.profiles import resolve_gpu, resolve_model

    c0 = time.process_time()
    t0 = time.perf_counter()
    models = [(r.name, r.spec) for r in (resolve_model(m) for m in AXES["models"])]
    cards = [resolve_gpu(g) for g in GPUS]
    t1 = time.perf_counter()
    setups, invalid = build_setups(axes_for_cli())
    t2 = time.perf_counter()
    result = sweep(models, setups, cards)
    t3 = time.perf_counter()
    text = render(result.rows, [c.name for c in cards], "csv", "bench")
    t4 = time.perf_counter()
    c4 = time.process_time()
    n = len(result.rows)
    out = {
        "configurations": n, "setups": len(setups), "invalid": len(invalid), "skipped": len(result.skipped),
        "gpus": GPUS, "axes": AXES, "csv_bytes": len(text.encode()),
        "seconds": {"resolve": t1 - t0, "build_setups": t2 - t1, "estimate_rows": t3 - t2, "render_csv": t4 - t3,
                    "total": t4 - t0},
        # CPU time of this process: less sensitive than wall time to other work on a shared machine
        "cpu_seconds_total": c4 - c0,
        "structural_setups": len({(name, structure_key(s)) for name, _ in models for s in setups}),
    }
    out["configs_per_s"] = n / out["seconds"]["total"]
    out["configs_per_cpu_s"] = n / out["cpu_seconds_total"]
    out["us_per_row_estimate"] = 1e6 * out["seconds"]["estimate_rows"] / max(n, 1)
    out["target_s"] = TARGET_S
    out["meets_target"] = out["seconds"]["total"] <= TARGET_S * n / 10_000
    if profile:
        out["profile"] = profile_sweep(models, setups, cards)
    return out


def profile_sweep(models, setups, cards, limit: int = 25) -> dict:
    """cProfile the row loop of the first model (all its setups: the same share of structural cache misses as
    the whole sweep); own and cumulative time of the top functions in µs per estimate() call."""
    import cProfile
    import pstats

    from vramplan.estimate.states import clear_caches
    from vramplan.planner import sweep

    clear_caches()
    pr = cProfile.Profile()
    pr.enable()
    result = sweep(models[:1], setups, cards)
    pr.disable()
    st = pstats.Stats(pr)
    calls = len(result.rows)
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():   # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}({fn})", "calls_per_estimate": nc / calls,
                     "own_us_per_estimate": 1e6 * tt / calls, "cum_us_per_estimate": 1e6 * ct / calls})
    rows.sort(key=lambda r: -r["own_us_per_estimate"])
    return {"estimates": calls, "note": "cProfile inflates times ~3-4x; compare shares, not absolutes",
            "top_own_time": rows[:limit],
            "by_cumulative": sorted(rows, key=lambda r: -r["cum_us_per_estimate"])[:limit]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", action="store_true", help="also record a cProfile breakdown")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_sweep-<time>.json)")
    args = ap.parse_args()
    result = {"benchmark": "bench_sweep", "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info()}
    result.update(run(args.profile))
    stamp = result["time_utc"].replace(":", "").replace("+0000", "Z")
    path = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"bench_sweep-{stamp}.json"
    from vramplan.io import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    s = result["seconds"]
    print(f"{result['configurations']:,} configurations in {s['total']:.2f} s = {result['configs_per_s']:,.0f} "
          f"configs/s ({result['configs_per_cpu_s']:,.0f} per CPU-second) (estimate {result['us_per_row_estimate']:,.0f} µs/row; target {TARGET_S} s for 10,000: "
          f"{'met' if result['meets_target'] else 'NOT met'}) -> {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
