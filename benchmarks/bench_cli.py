"""Cold-start wall time of the analytic path (issue 2 and 3 targets: `plan ... --method qlora` <= 0.5 s).

Runs each command in a fresh interpreter several times and records the median with machine info as JSON in
``benchmarks/results/cli.json``. Also asserts that no torch import happened (the analytic path must not import it).

    python benchmarks/bench_cli.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_info as _machine  # noqa: E402  (benchmarks/_machine.py)

COMMANDS = {
    "plan llama-3-8b qlora": ["plan", "meta-llama/Meta-Llama-3-8B", "--method", "qlora"],
    "params qwen3-14b all-linear": ["params", "Qwen/Qwen3-14B", "--targets", "all-linear"],
    "plan qwen3-14b qlora --json": ["plan", "Qwen/Qwen3-14B", "--method", "qlora", "--json"],
}

PROBE = ("import sys, runpy; sys.argv=['vramplan', *sys.argv[1:]]\n"
         "try:\n runpy.run_module('vramplan', run_name='__main__')\n"
         "except SystemExit: pass\n"
         "assert 'torch' not in sys.modules, 'torch was imported'\n")


def machine() -> dict:
    return _machine("vramplan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cli.json"))
    args = ap.parse_args()
    results = {}
    for name, argv in COMMANDS.items():
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed: {proc.stderr.strip().splitlines()[-1:]}")
        results[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                         "runs": args.runs}
        print(f"{name:32s} median {results[name]['median_s']:.3f} s  min {results[name]['min_s']:.3f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine(), "results": results,
                                          "target": {"plan llama-3-8b qlora": 0.5}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
