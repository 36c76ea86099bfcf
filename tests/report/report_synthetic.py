"""Synthetic run records and plan JSON that follow the saved schemas, for the report tests and examples.

The numbers are made up to look like a QLoRA run of an 8B model; they are not measurements. Everything is
deterministic (no clock, no randomness) so that pages built from them can be compared byte for byte.
"""

from __future__ import annotations

import copy
from typing import Any

GiB = 2**30
MiB = 2**20

EXAMPLE_LABEL = "example (synthetic record)"

BREAKDOWN = {
    "weights/base_nf4": 5_520 * MiB,
    "weights/base_bf16": 2_004 * MiB,
    "adapters/lora": 160 * MiB,
    "gradients/lora": 160 * MiB,
    "optimizer/adamw": 320 * MiB,
    "activations/checkpoints": 1_024 * MiB,
    "activations/recompute_layer": 612 * MiB,
    "logits/fp32": 2_004 * MiB,
    "logits/bf16": 1_002 * MiB,
    "overhead/dequant_buffer": 112 * MiB,
}
PEAK_ALLOCATED = 12_918 * MiB   # the sum of BREAKDOWN
CUDA_CONTEXT = 520 * MiB


def plan_json(*, ladder: bool = True, grid: bool = True, gpu: str | None = "RTX 4090") -> dict[str, Any]:
    """A plan as ``vramplan plan --json --html`` would save it (the ladder and grid included)."""
    capacity = {"RTX 4090": 24_564 * MiB, "RTX 3090": 24_576 * MiB, "L4": 23_034 * MiB, "A10G": 23_028 * MiB,
                "T4": 15_360 * MiB, "RTX 4080": 16_376 * MiB, "RTX 3060": 12_288 * MiB, "A100 40GB": 40_960 * MiB, "H100 80GB": 81_559 * MiB}
    device_used = PEAK_ALLOCATED + 700 * MiB + CUDA_CONTEXT
    plan: dict[str, Any] = {
        "model": "meta-llama/Llama-3.1-8B",
        "params": {"total": 8_030_261_248, "trainable": 41_943_040},
        "setup": {"method": "qlora", "quant": "nf4", "double_quant": True, "precision": "bf16-mixed",
                  "lora": {"r": 16, "alpha": 32, "targets": ["all-linear"], "dora": False, "dropout": 0.0},
                  "batch": 2, "seq": 2048, "grad_ckpt": True, "attn": "sdpa", "optim": "paged-adamw-8bit",
                  "loss": "standard", "gpus": 1, "strategy": "ddp", "offload": "none", "new_tokens": 0},
        "breakdown_bytes": dict(BREAKDOWN),
        "peak_allocated_bytes": PEAK_ALLOCATED,
        "peak_reserved_bytes": PEAK_ALLOCATED + 700 * MiB,
        "device_used_bytes": device_used,
        "peak_phase": "backward",
        "fits": None,
        "assumptions": ["synthetic example data, not a measurement",
                        "caching allocator rounding: 2 MiB blocks (PyTorch CUDACachingAllocator)"],
        "versions": {"vramplan": "0.1.0", "torch": "2.9.0", "transformers": "4.57.0", "peft": "0.17.0"},
    }
    if gpu is not None:
        plan["fits"] = {"gpu": gpu, "capacity_bytes": capacity[gpu], "headroom_bytes": capacity[gpu] - device_used,
                        "fits": capacity[gpu] >= device_used}
    if ladder:
        plan["ladder"] = [{"gpu": g, "capacity_bytes": c, "device_used_bytes": device_used,
                           "headroom_bytes": c - device_used, "fits": c >= device_used}
                          for g, c in sorted(capacity.items(), key=lambda kv: kv[1])]
    if grid:
        batch, seq = [1, 2, 4, 8], [512, 1024, 2048, 4096, 8192]
        per_token = MiB  # logits + checkpoints per token (made up); the plan's own cell equals device_used
        fixed = device_used - 2 * 2048 * per_token
        plan["grid"] = {"batch": batch, "seq": seq,
                        "device_used_bytes": [[fixed + b * s * per_token for s in seq] for b in batch]}
    return plan


def _timeline(steps: int, *, oom_at: tuple[str, int] | None = None, cuda: bool = True) -> tuple[list, dict]:
    """Phases and 10 Hz samples: load, then forward/backward/optimizer per step, memory rising and falling."""
    weights = BREAKDOWN["weights/base_nf4"] + BREAKDOWN["weights/base_bf16"] + BREAKDOWN["adapters/lora"]
    phases: list[dict[str, Any]] = []
    t_rows: list[float] = []
    alloc_rows: list[int] = []
    plan = [("load", None, 40)]
    for s in range(steps):
        plan += [("forward", s, 6), ("backward", s, 12), ("optimizer", s, 2)]
    tick = 0
    optimizer_state = 0
    stopped = False
    for name, step, n in plan:
        t_start = tick / 10
        peak = 0
        for i in range(n):
            frac = (i + 1) / n
            if name == "load":
                a = int(weights * frac)
            elif name == "forward":
                a = weights + optimizer_state + int((BREAKDOWN["activations/checkpoints"] + 2_500 * MiB) * frac)
            elif name == "backward":
                a = (weights + optimizer_state + BREAKDOWN["activations/checkpoints"] + 2_500 * MiB
                     + int(BREAKDOWN["activations/recompute_layer"] * (1 - abs(2 * frac - 1)))
                     + int(BREAKDOWN["gradients/lora"] * frac))
            else:
                optimizer_state = BREAKDOWN["optimizer/adamw"]
                a = weights + optimizer_state + BREAKDOWN["gradients/lora"] * (n - i - 1) // n
            t_rows.append(round(tick / 10, 3))
            alloc_rows.append(a)
            peak = max(peak, a)
            tick += 1
            if oom_at == (name, step) and frac >= 0.5:
                stopped = True
                break
        phase: dict[str, Any] = {
            "name": name, "step": step, "t_start": t_start, "t_end": round(tick / 10, 3),
            "peak_allocated_bytes": peak if cuda else None,
            "peak_reserved_bytes": (peak + 512 * MiB) if cuda else None,
            "peak_active_bytes": peak if cuda else None,
            "device_used_bytes": (peak + 512 * MiB + CUDA_CONTEXT) if cuda else None,
            "rss_bytes": 3 * GiB if cuda else 600 * MiB + peak // 24}
        if stopped:
            phase["status"] = "oom"
        phases.append(phase)
        if stopped:
            break
    reserved = []
    high = 0
    for a in alloc_rows:  # the caching allocator keeps what it reserved
        high = max(high, a + 384 * MiB)
        reserved.append(high)
    samples = {
        "t": t_rows,
        "device_used_bytes": [r + CUDA_CONTEXT + 96 * MiB if cuda else None for r in reserved],
        "process_used_bytes": [r + CUDA_CONTEXT if cuda else None for r in reserved],
        "allocated_bytes": alloc_rows if cuda else [None] * len(alloc_rows),
        "reserved_bytes": reserved if cuda else [None] * len(alloc_rows),
        "rss_bytes": [3 * GiB if cuda else 600 * MiB + a // 24 for a in alloc_rows],
    }
    return phases, samples


def run_record(*, status: str = "ok") -> dict[str, Any]:
    """A run record (schema ``vramplan.run/1``): ``ok`` (3 steps) or ``oom`` (OOM in backward of step 0)."""
    oom = status == "oom"
    phases, samples = _timeline(1 if oom else 3, oom_at=("backward", 0) if oom else None)
    estimate = plan_json(ladder=False, grid=False)
    if oom:  # 8x the tokens of the plan: activations and logits 8x, the card no longer fits
        estimate["setup"]["batch"] = 8
        estimate["setup"]["seq"] = 4096
        grow = sum(v for k, v in BREAKDOWN.items() if k.startswith(("activations/", "logits/"))) * 7
        for k in estimate["breakdown_bytes"]:
            if k.startswith(("activations/", "logits/")):
                estimate["breakdown_bytes"][k] *= 8
        for k in ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes"):
            estimate[k] += grow
        estimate["fits"]["headroom_bytes"] -= grow
        estimate["fits"]["fits"] = estimate["fits"]["headroom_bytes"] >= 0
    measured_alloc = max(p["peak_allocated_bytes"] for p in phases)
    measured = {"peak_allocated_bytes": measured_alloc, "peak_reserved_bytes": measured_alloc + 512 * MiB,
                "device_used_bytes": measured_alloc + 512 * MiB + CUDA_CONTEXT, "cuda_context_bytes": CUDA_CONTEXT,
                "peak_rss_bytes": 3 * GiB,
                "per_phase": {p["name"]: {"peak_allocated_bytes": p["peak_allocated_bytes"]} for p in phases}}
    error = {}
    if not oom:
        for key in ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes"):
            m, e = measured[key], estimate[key]
            error[key] = {"measured": m, "estimated": e, "error_pct": round(100 * (e - m) / m, 2)}
    return {
        "schema": "vramplan.run/1", "status": status, "model": estimate["model"], "setup": estimate["setup"],
        "environment": {"gpu_name": "NVIDIA GeForce RTX 4090", "device": "cuda", "torch": "2.9.0+cu128",
                        "driver": "570.86", "cuda": "12.8"},
        "phases": phases, "samples": samples, "measured": measured, "estimate": estimate, "error": error,
        "oom": {"phase": "backward", "step": 0, "requested_bytes": 2 * GiB,
                "message": "CUDA out of memory. Tried to allocate 2.00 GiB (synthetic)"} if oom else None,
        "steps": 1 if oom else 3, "warmup": 1, "wall_s": samples["t"][-1] + 0.4,
    }


def cpu_record() -> dict[str, Any]:
    """A CPU run: RSS only, no estimate."""
    phases, samples = _timeline(2, cuda=False)
    return {
        "schema": "vramplan.run/1", "status": "ok", "model": "HuggingFaceTB/SmolLM2-135M",
        "setup": {"method": "lora", "quant": "none", "precision": "32-true", "batch": 1, "seq": 256,
                  "lora": {"r": 8, "targets": ["q_proj", "v_proj"]}, "optim": "adamw"},
        "environment": {"gpu_name": None, "device": "cpu", "torch": "2.9.0+cpu"},
        "phases": phases, "samples": samples,
        "measured": {"peak_allocated_bytes": None, "peak_reserved_bytes": None, "device_used_bytes": None,
                     "cuda_context_bytes": None, "peak_rss_bytes": max(samples["rss_bytes"]), "per_phase": {}},
        "estimate": None, "error": {}, "oom": None, "steps": 2, "warmup": 0, "wall_s": samples["t"][-1],
    }


def malformed_records() -> dict[str, Any]:
    """Hand-written partial records: name -> JSON value (each must give a page with a notice, not a crash)."""
    ok = run_record()
    no_samples = copy.deepcopy(ok)
    del no_samples["samples"]
    null_estimate = copy.deepcopy(ok)
    null_estimate["estimate"] = None
    null_estimate["error"] = None
    null_measured = copy.deepcopy(ok)
    null_measured["measured"] = {"peak_allocated_bytes": None, "peak_reserved_bytes": None,
                                 "device_used_bytes": None}
    null_measured["error"] = {"peak_allocated_bytes": {"measured": None, "estimated": 1, "error_pct": None}}
    unknown_schema = {"schema": "someone.else/3", "status": "ok", "rows": [1, 2, 3]}
    broken_types = copy.deepcopy(ok)
    broken_types["samples"]["allocated_bytes"] = ["a lot"] * len(broken_types["samples"]["t"])
    broken_types["samples"]["reserved_bytes"] = broken_types["samples"]["reserved_bytes"][:3]
    broken_types["phases"] = [{"name": "forward"}, "backward", *broken_types["phases"][:2]]
    broken_types["estimate"]["breakdown_bytes"]["weights/base_nf4"] = "5 GiB"
    broken_types["oom"] = "yes"
    broken_types["environment"] = None
    oom_without_detail = copy.deepcopy(ok)
    oom_without_detail["status"] = "oom"
    oom_without_detail["oom"] = None
    return {"no_samples": no_samples, "null_estimate": null_estimate, "null_measured": null_measured,
            "unknown_schema": unknown_schema, "broken_types": broken_types, "a_list": [1, 2, 3],
            "oom_without_detail": oom_without_detail, "empty_object": {}}
