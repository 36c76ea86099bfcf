"""Benchmark ``--mode simulate``: speed on Llama-3-8B (targets: all 32 layers <= 15 s, extrapolated <= 3 s on a
2-core machine) and the agreement with the analytic estimator on the must-hold shapes.

Three measurements, saved as JSON with machine info under ``benchmarks/results/`` first (views are rendered
from the saved JSON by ``--render``, never computed in a renderer):

1. *Speed*: :func:`vramplan.simulate.simulate` on Llama-3-8B (LoRA r=16 all-linear, QLoRA, full; seq 2048)
   with ``sim_layers="auto"`` and ``"all"``, in one warm process (imports and the first model build paid
   before timing; the median of ``--repeats``), plus a cold ``vramplan plan --mode simulate`` in a fresh
   interpreter (imports included).
2. *Full-depth peaks*: simulated vs analytic peak allocated, per phase, for the same setups.
3. *Agreement*: the rows of :func:`vramplan.simulate.compare.agreement` (2 layers, short sequences) for
   Llama-3, Qwen2.5, Qwen3, Gemma-2, Phi-3 and Mixtral shapes, with the known analytic gaps.

    python benchmarks/bench_simulate.py [--repeats 3] [--out FILE.json]
    python benchmarks/bench_simulate.py --render FILE.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_info as _machine  # noqa: E402  (benchmarks/_machine.py)

TARGETS_S = {"all": 15.0, "auto": 3.0}
SPEED = {
    "lora r16 all-linear": dict(method="lora"),
    "qlora r16 all-linear": dict(method="qlora"),
    "full": dict(method="full"),
}
AGREEMENT_MODELS = ["llama-3-8b", "qwen2.5-7b", "qwen3-8b", "gemma-2-9b", "phi-3-mini-4k", "mixtral-8x7b"]
AGREEMENT_CASES = [("lora", "sdpa", False, 1, 128), ("lora", "eager", True, 2, 64), ("qlora", "sdpa", True, 1, 128),
                   ("qlora", "eager", False, 1, 64), ("full", "sdpa", False, 2, 64), ("full", "eager", True, 1, 64)]


def machine_info() -> dict:
    import torch

    from vramplan.simulate.components import versions

    return {**_machine("vramplan/simulate"), "torch_threads": torch.get_num_threads(), **versions()}


def _setup(kw: dict, seq: int = 2048):
    from vramplan.lora import LoraConfig
    from vramplan.setup import Setup

    lora = LoraConfig(r=16, targets=("all-linear",)) if kw["method"] in ("lora", "qlora") else None
    return Setup.create(seq=seq, lora=lora, **kw)


def speed(repeats: int) -> dict:
    from vramplan.estimate import estimate
    from vramplan.profiles import resolve_model
    from vramplan.simulate import simulate

    spec = resolve_model("llama-3-8b").spec
    simulate(spec, _setup(SPEED["lora r16 all-linear"]))          # imports and first build, not timed
    out = {}
    for name, kw in SPEED.items():
        setup = _setup(kw)
        a = estimate(spec, setup)
        row: dict = {"analytic_peak_bytes": a.peak_allocated_bytes, "analytic_peak_phase": a.peak_phase,
                     "analytic_phases": a.phases}
        for layers in ("auto", "all"):
            times, est = [], None
            for _ in range(repeats if layers == "auto" else max(1, repeats - 1)):
                t0 = time.perf_counter()
                est = simulate(spec, setup, sim_layers=layers)
                times.append(time.perf_counter() - t0)
            assert est is not None
            row[layers] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                           "runs": len(times), "peak_bytes": est.peak_allocated_bytes, "peak_phase": est.peak_phase,
                           "phases": est.phases, "layers": est.extra["simulation"]["layers"],
                           "ops": est.extra["simulation"]["ops"]}
        out[name] = row
        print(f"{name:24s} auto {row['auto']['median_s']:.2f} s  all {row['all']['median_s']:.2f} s  "
              f"peak sim {row['all']['peak_bytes'] / 2**30:.3f} GiB (auto {row['auto']['peak_bytes'] / 2**30:.3f})"
              f"  analytic {a.peak_allocated_bytes / 2**30:.3f} GiB", flush=True)
    return out


def cold() -> dict:
    argv = ["plan", "llama-3-8b", "--mode", "simulate", "--targets", "all-linear", "--rank", "16", "--json"]
    code = "import sys, runpy; sys.argv=['vramplan', *sys.argv[1:]]\nrunpy.run_module('vramplan', run_name='__main__')"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers, peft, bitsandbytes; "
                    "from transformers import LlamaForCausalLM"], check=True)
    imports = time.perf_counter() - t0
    sim = json.loads(proc.stdout)["simulation"] if proc.returncode == 0 else {}
    print(f"cold CLI: {wall:.1f} s wall, of which imports ≈ {imports:.1f} s; simulation {sim.get('seconds')} s")
    return {"command": "vramplan " + " ".join(argv), "wall_s": round(wall, 2), "imports_s": round(imports, 2),
            "simulation_s": sim.get("seconds"), "returncode": proc.returncode}


def agreement() -> list[dict]:
    from vramplan.profiles import resolve_model
    from vramplan.simulate.compare import agreement as rows_of
    from vramplan.simulate.compare import spec_with_layers
    from vramplan.simulate.step import run

    out = []
    for model in AGREEMENT_MODELS:
        spec = spec_with_layers(resolve_model(model).spec, 2)
        for method, attn, ckpt, batch, seq in AGREEMENT_CASES:
            if model == "gemma-2-9b" and attn == "sdpa":
                attn = "flash"
            kw = dict(method=method, attn=attn, grad_ckpt=ckpt, batch=batch)
            setup = _setup(kw, seq)
            r = run(spec, setup)
            for row in rows_of(spec, setup, r):
                out.append({"model": model, "method": method, "attn": attn, "grad_ckpt": ckpt, "batch": batch,
                            "seq": seq, "quantity": row.name, "analytic_bytes": row.analytic,
                            "simulated_bytes": row.simulated, "exact": row.exact})
        print(f"agreement: {model} done", flush=True)
    return out


def render(path: str) -> None:
    d = json.loads(Path(path).read_text())
    m = d["machine"]
    print(f"# bench_simulate — {d['timestamp']}\n\n{m['cpu']} × {m['cpu_count']}, load {m['loadavg_at_start']}, "
          f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}\n")
    print("| Llama-3-8B, seq 2048 | auto s | all s | peak sim GiB (all / auto) | peak analytic GiB | diff % |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in d["speed"].items():
        s, a = r["all"]["peak_bytes"], r["analytic_peak_bytes"]
        print(f"| {name} | {r['auto']['median_s']:.2f} | {r['all']['median_s']:.2f} | {s / 2**30:.3f} / "
              f"{r['auto']['peak_bytes'] / 2**30:.3f} | {a / 2**30:.3f} | {100 * (s - a) / a:+.2f} |")
    c = d.get("cold")
    if c:
        print(f"\ncold `{c['command']}`: {c['wall_s']} s (imports ≈ {c['imports_s']} s)\n")
    print("| model | method | attn | ckpt | quantity | analytic B | simulated B | diff % |")
    print("|---|---|---|---|---|---:|---:|---:|")
    for r in d["agreement"]:
        a, s = r["analytic_bytes"], r["simulated_bytes"]
        pct = 100 * (s - a) / a if a else 0.0
        if r["exact"] and s == a:
            continue
        print(f"| {r['model']} | {r['method']} | {r['attn']} | {r['grad_ckpt']} | {r['quantity']} | {a:,} | {s:,} | "
              f"{pct:+.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--render", default=None, help="Print the views of a saved result and exit.")
    ap.add_argument("--no-cold", action="store_true")
    args = ap.parse_args()
    if args.render:
        render(args.render)
        return
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    out = Path(args.out or Path(__file__).parent / "results" / f"bench_simulate-{stamp}.json")
    data = {"timestamp": stamp, "machine": machine_info(), "targets_s": TARGETS_S}
    data["speed"] = speed(args.repeats)
    data["agreement"] = agreement()
    if not args.no_cold:
        data["cold"] = cold()
    data["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
