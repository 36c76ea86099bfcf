"""Benchmark the profiler's background sampler: its overhead at 100 Hz as a percentage of a training step.

Two measurements, saved as JSON with machine info under ``benchmarks/results/`` (views are rendered from the
saved JSON, never computed in a renderer):

1. *Step time*: a tiny CPU training step (the profiler's own model builder: a 2-layer llama-shaped model,
   hidden 256, LoRA r=8 on q/v, AdamW, fp32 — bf16 matmuls are ~10x slower on CPUs without native bf16) timed
   in adjacent pairs, one step without and one with a running :class:`vramplan.profiler.sampler.Sampler` at
   ``--hz`` (order alternating, ABBA); overhead = median of the paired ratios - 1, in wall time and in process
   CPU time (all threads, the sampler's included). Pairing cancels slow load drift of a shared machine; the
   IQR of the ratios says how much noise is left. On a machine busy with other work the wall-time ratio is
   dominated by scheduling noise and the CPU-time ratio is the better figure.
2. *Cost per sample*: ``Sampler.sample()`` called in a tight loop; cost x hz is the fraction of one core the
   thread uses, the floor of (1) when the step is CPU-bound and holds the GIL.

    python benchmarks/bench_sampler.py [--hz 100] [--pairs 60] [--batch 2] [--seq 64] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

from _machine import machine_info as _machine  # noqa: E402  (benchmarks/_machine.py)

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
          "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
          "vocab_size": 1024, "max_position_embeddings": 512, "tie_word_embeddings": False, "hidden_act": "silu"}


def machine_info() -> dict:
    import torch

    return {**_machine("vramplan/profiler"), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def build_step(batch: int, seq: int):
    """A closure running one forward + backward + AdamW step of the tiny LoRA model on the CPU."""
    import torch

    from vramplan.lora import LoraConfig
    from vramplan.profiler.loader import build_model
    from vramplan.setup import Setup

    setup = Setup.create(method="lora", batch=batch, seq=seq, precision="32-true",
                         lora=LoraConfig(r=8, targets=("q_proj", "v_proj")))
    model = build_model(None, CONFIG, setup, torch.device("cpu")).model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CONFIG["vocab_size"], (batch, seq), generator=g)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        out.append(time.perf_counter() - t)
    return out


def run(hz: float, pairs: int, batch: int, seq: int) -> dict:
    from vramplan.profiler.sampler import Sampler

    step = build_step(batch, seq)
    for _ in range(3):                                      # warm up kernels and the allocator
        step()
    without: list[tuple[float, float]] = []
    with_: list[tuple[float, float]] = []
    samples = 0
    sampled_s = 0.0

    def timed() -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        step()
        return time.perf_counter() - t, time.process_time() - c

    def sampled() -> tuple[float, float]:
        nonlocal samples, sampled_s
        s = Sampler(hz, time.perf_counter())
        s.sample()                                          # what start() does first, outside the timing
        t, c = time.perf_counter(), time.process_time()
        s._thread = __import__("threading").Thread(target=s._run, daemon=True)
        s._thread.start()
        step()
        s._stop.set()
        s._thread.join()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        samples += len(s.columns["t"]) - 2     # minus the one taken before timing and the thread's tick at t=0
        sampled_s += wall
        return wall, cpu

    for i in range(pairs):
        # adjacent steps share the machine's load; alternate which comes first (ABBA) to cancel order effects
        if i % 2 == 0:
            a, b = timed(), sampled()
        else:
            b, a = sampled(), timed()
        without.append(a)
        with_.append(b)

    def overhead(k: int) -> dict:
        ratios = [b[k] / a[k] for a, b in zip(without, with_, strict=True) if a[k] > 0]
        q = statistics.quantiles(ratios, n=4)
        return {"median_pct": 100.0 * (statistics.median(ratios) - 1.0),
                "iqr_pct": [100.0 * (q[0] - 1.0), 100.0 * (q[2] - 1.0)]}

    probe = Sampler(hz, time.perf_counter())               # the cost of one tick, measured alone
    n = 2000
    t = time.perf_counter()
    for _ in range(n):
        probe.sample()
    per_sample = (time.perf_counter() - t) / n
    return {
        "hz": hz, "pairs": pairs, "batch": batch, "seq": seq, "model": CONFIG, "precision": "32-true",
        "device": "cpu",
        "step_s": {"median_without": statistics.median(a[0] for a in without),
                   "median_with": statistics.median(b[0] for b in with_),
                   "cpu_median_without": statistics.median(a[1] for a in without),
                   "cpu_median_with": statistics.median(b[1] for b in with_)},
        "overhead_wall": overhead(0),
        "overhead_cpu": overhead(1),
        "achieved_hz": samples / sampled_s if sampled_s else None,
        "sample_cost_us": 1e6 * per_sample,
        "sample_cpu_pct_at_hz": 100.0 * per_sample * hz,
        "counters_read": "RSS (psutil); on CUDA also NVML device/process used and torch.cuda allocated/reserved",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hz", type=float, default=100.0)
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    result = {"benchmark": "bench_sampler", "time_utc": now.isoformat(), "machine": machine_info(),
              **run(args.hz, args.pairs, args.batch, args.seq)}
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results"
                                           / f"bench_sampler-{now.strftime('%Y-%m-%dT%H%M%SZ')}.json")
    from vramplan.io import atomic_write_text

    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    s, w, c = result["step_s"], result["overhead_wall"], result["overhead_cpu"]
    print(f"sampler at {result['hz']:.0f} Hz (achieved {result['achieved_hz']:.0f} Hz): step "
          f"{1e3 * s['median_without']:.1f} ms wall / {1e3 * s['cpu_median_without']:.1f} ms CPU; overhead "
          f"{w['median_pct']:+.2f} % wall (IQR {w['iqr_pct'][0]:+.1f} to {w['iqr_pct'][1]:+.1f}), "
          f"{c['median_pct']:+.2f} % CPU (IQR {c['iqr_pct'][0]:+.1f} to {c['iqr_pct'][1]:+.1f}); one sample {result['sample_cost_us']:.1f} us = "
          f"{result['sample_cpu_pct_at_hz']:.2f} % of a core", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
