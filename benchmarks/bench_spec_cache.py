"""Cold vs cached answers for architectures vramplan has no pure-Python builder for (issue 16).

Such a config is built on the meta device, which imports torch and transformers; the on-disk spec cache
(``vramplan/shapes/cache.py``) keeps the built spec so that the next call with the same config skips both.
This runs ``vramplan plan CONFIG --targets all-linear --json`` in fresh interpreters for configs that
transformers builds but vramplan's pure-Python tables do not (OLMo-2 7B and Granite-3.1 8B shapes, written
here from their published config.json), once per run with the cache off (``VRAMPLAN_NO_CACHE=1``: every run
cold) and with a warm cache (one unmeasured run fills it), plus a bundled profile (llama-3-8b, pure Python)
for comparison. Runs alternate between the modes so load on the shared machine hits both alike. Each run
also reports whether torch/transformers were imported.

Results (machine info first, then per-run wall times) go to ``benchmarks/results/bench_spec_cache-<UTC>.json``;
the table is rendered from that file::

    python benchmarks/bench_spec_cache.py [--runs 5]
    python benchmarks/bench_spec_cache.py --render benchmarks/results/bench_spec_cache-<UTC>.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_info  # benchmarks/_machine.py

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CONFIGS = {
    # allenai/OLMo-2-1124-7B config.json (shape keys)
    "olmo2-7b": {"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": 4096,
                 "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 32, "vocab_size": 100352, "max_position_embeddings": 4096,
                 "rms_norm_eps": 1e-06, "rope_theta": 500000, "attention_bias": False, "hidden_act": "silu",
                 "tie_word_embeddings": False, "pad_token_id": 100277, "bos_token_id": None,
                 "eos_token_id": 100257},
    # ibm-granite/granite-3.1-8b-base config.json (shape keys)
    "granite-3.1-8b": {"architectures": ["GraniteForCausalLM"], "model_type": "granite", "hidden_size": 4096,
                       "intermediate_size": 12800, "num_hidden_layers": 40, "num_attention_heads": 32,
                       "num_key_value_heads": 8, "vocab_size": 49155, "max_position_embeddings": 131072,
                       "rms_norm_eps": 1e-05, "rope_theta": 10000000.0, "attention_bias": False,
                       "mlp_bias": False, "hidden_act": "silu", "tie_word_embeddings": True,
                       "embedding_multiplier": 12.0, "logits_scaling": 16.0, "residual_multiplier": 0.22,
                       "attention_multiplier": 0.0078125, "pad_token_id": 0, "bos_token_id": 0,
                       "eos_token_id": 0},
}
BUNDLED = "llama-3-8b"

PROBE = ("import sys, json, runpy\n"
         "sys.argv = ['vramplan', *sys.argv[1:]]\n"
         "code = 0\n"
         "try:\n    runpy.run_module('vramplan', run_name='__main__')\n"
         "except SystemExit as e:\n    code = e.code or 0\n"
         "print(json.dumps({'rc': code, 'torch': 'torch' in sys.modules, "
         "'transformers': 'transformers' in sys.modules}), file=sys.stderr)\n")


def _run(model: str, cache_dir: str, no_cache: bool) -> dict:
    env = dict(os.environ, VRAMPLAN_CACHE_DIR=cache_dir, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("VRAMPLAN_NO_CACHE", None)
    if no_cache:
        env["VRAMPLAN_NO_CACHE"] = "1"
    argv = [sys.executable, "-c", PROBE, "plan", model, "--targets", "all-linear", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    if probe["rc"] not in (0, 1):           # 1 = does not fit, still an answer
        raise SystemExit(f"{model}: exit {probe['rc']}: {proc.stderr.strip().splitlines()[-2:]}")
    return {"wall_s": round(wall, 4), "torch": probe["torch"], "transformers": probe["transformers"],
            "peak_allocated_bytes": json.loads(proc.stdout)["peak_allocated_bytes"]}


def measure(runs: int) -> dict:
    out: dict = {"machine": machine_info("vramplan"), "runs": runs, "command": "plan MODEL --targets all-linear --json",
                 "cases": {}}
    with tempfile.TemporaryDirectory(prefix="vramplan-bench-cache-") as tmp:
        paths = {}
        for name, cfg in CONFIGS.items():
            p = Path(tmp) / f"{name}.json"
            p.write_text(json.dumps(cfg))
            paths[name] = str(p)
        cache_dir = str(Path(tmp) / "cache")
        for name in CONFIGS:                 # fill the cache (unmeasured)
            _run(paths[name], cache_dir, no_cache=False)
        cases = {f"{n} cold": (paths[n], True) for n in CONFIGS}
        cases |= {f"{n} cached": (paths[n], False) for n in CONFIGS}
        cases[f"{BUNDLED} (bundled, pure Python)"] = (BUNDLED, False)
        results: dict[str, list[dict]] = {k: [] for k in cases}
        for i in range(runs):
            order = list(cases) if i % 2 == 0 else list(reversed(cases))
            for label in order:
                model, no_cache = cases[label]
                results[label].append(_run(model, cache_dir, no_cache))
                print(f"run {i + 1}/{runs} {label:36s} {results[label][-1]['wall_s']:.3f} s", file=sys.stderr)
    for label, rs in results.items():
        peaks = {r["peak_allocated_bytes"] for r in rs}
        out["cases"][label] = {"runs": rs, "same_answer_every_run": len(peaks) == 1}
    for n in CONFIGS:                        # the cached answer must be the cold one
        cold = out["cases"][f"{n} cold"]["runs"][0]["peak_allocated_bytes"]
        warm = out["cases"][f"{n} cached"]["runs"][0]["peak_allocated_bytes"]
        out["cases"][f"{n} cached"]["same_answer_as_cold"] = cold == warm
    return out


def render(doc: dict) -> str:
    """The table of a saved result (no computation beyond medians of the recorded runs)."""
    m = doc["machine"]
    lines = [f"{doc['command']} · {doc['runs']} runs · {m['cpu']} ({m['cpu_count']} CPUs) · commit {m['commit'][:10]}"
             f"{' (dirty)' if m['worktree_dirty'] else ''}", "",
             f"{'case':40s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  imports torch/transformers",
             f"{'-' * 40} {'-' * 9} {'-' * 7} {'-' * 7}  {'-' * 26}"]
    for label, case in doc["cases"].items():
        walls = [r["wall_s"] for r in case["runs"]]
        imp = {(r["torch"], r["transformers"]) for r in case["runs"]}
        imp_s = "/".join("yes" if x else "no" for x in next(iter(imp))) if len(imp) == 1 else "mixed"
        lines.append(f"{label:40s} {statistics.median(walls):9.3f} {min(walls):7.3f} {max(walls):7.3f}  {imp_s}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--render", metavar="JSON", help="print the table of a saved result and exit")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return
    doc = measure(args.runs)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    path = HERE / "results" / f"bench_spec_cache-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(render(doc))
    print(f"\nsaved {path.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
