"""How the estimator's cost grows with the layer count (issue 18 class 2: "cost must not grow with repeated
identical layers beyond the layer period"), measured side by side in one run.

For qwen3-0.6b's config.json with ``num_hidden_layers`` of 32, 1,024 and 4,096 (the input cap,
``vramplan/shapes/config.py`` MAX_LAYERS), each step is timed cold (a fresh ModelSpec from the config dict, so no
identity-keyed memo of an earlier step is reused):

- ``spec``: :func:`vramplan.shapes.from_config.spec_from_config` (building the tensor list);
- ``params``: PEFT-exact LoRA targeting (:func:`vramplan.lora.plan_lora`, what ``vramplan params`` counts);
- ``plan``: one LoRA :func:`vramplan.estimate.estimate`;
- ``fit``: :func:`vramplan.planner.fit_report` on an h100-80gb (searches, the fewest GPUs over every strategy:
  dozens of estimates of one structure at different --gpus).

``fit`` runs twice per size: with the GPU-count-independent walks of ``estimate/distributed.py`` memoized
(``_fsdp_units``, ``_module_bytes``: once per spec and structure) and with them bypassed (each estimate of the
search walking every tensor again, as before that memo). The ratio of the two at the same size, and each step's
seconds per layer (the slope between 1,024 and 4,096 layers), are what the JSON records. Wall-clock numbers depend
on the machine and its load; the ratios measured in one run are what to compare.

    python benchmarks/layer_scaling.py [--repeat 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _machine import machine_info  # benchmarks/_machine.py

QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 40960, "tie_word_embeddings": True, "hidden_act": "silu",
    "rms_norm_eps": 1e-06, "attention_bias": False, "torch_dtype": "bfloat16",
}
LAYERS = (32, 1024, 4096)


def _spec(n: int):
    from vramplan.shapes.from_config import spec_from_config

    return spec_from_config({**QWEN3_06B, "num_hidden_layers": n}, name=f"qwen3-{n}-layers")


def _timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``fn()``, each call cold (``fn`` builds its own spec)."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def measure(repeat: int) -> dict[str, Any]:
    from vramplan.cli.options import setup_from_options
    from vramplan.estimate import distributed, estimate
    from vramplan.lora import LoraConfig, plan_lora
    from vramplan.planner import fit_report
    from vramplan.profiles import resolve_gpu

    gpu = resolve_gpu("h100")
    lora = setup_from_options({"method": "lora"})
    memo = (distributed._fsdp_units, distributed._module_bytes)
    bypass = (distributed._build_fsdp_units, distributed._build_module_bytes)

    def fit(use_memo: bool, n: int) -> Callable[[], Any]:
        def run() -> None:
            distributed._fsdp_units, distributed._module_bytes = memo if use_memo else bypass
            try:
                fit_report(_spec(n), lora, gpu)
            finally:
                distributed._fsdp_units, distributed._module_bytes = memo
        return run

    rows: dict[int, dict[str, float]] = {}
    for n in LAYERS:
        spec_s = _timed(lambda n=n: _spec(n), repeat)
        rows[n] = {
            "spec_s": spec_s,
            "params_s": _timed(lambda n=n: plan_lora(_spec(n), LoraConfig()), repeat) - spec_s,
            "plan_s": _timed(lambda n=n: estimate(_spec(n), lora, gpu), repeat) - spec_s,
            "fit_s": _timed(fit(True, n), repeat) - spec_s,
            "fit_without_memo_s": _timed(fit(False, n), repeat) - spec_s,
        }
    lo, hi = LAYERS[-2], LAYERS[-1]
    slope = {k.removesuffix("_s") + "_us_per_layer": (rows[hi][k] - rows[lo][k]) / (hi - lo) * 1e6
             for k in rows[hi]}
    return {
        "machine": machine_info(),
        "what": "seconds per step, median of --repeat cold runs, spec building subtracted from params/plan/fit",
        "repeat": repeat,
        "rows": {str(n): {k: round(v, 4) for k, v in r.items()} for n, r in rows.items()},
        "slope_1024_to_4096": {k: round(v, 1) for k, v in slope.items()},
        "fit_memo_speedup": {str(n): round(r["fit_without_memo_s"] / r["fit_s"], 2) for n, r in rows.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/layer_scaling-<UTC>.json")
    a = ap.parse_args()
    result = measure(a.repeat)
    out = a.out or Path(__file__).parent / "results" / f"layer_scaling-{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
