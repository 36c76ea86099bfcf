"""All terminal output of the CLI. Renderers read results; they compute nothing."""

from __future__ import annotations

import json
from typing import Any

import click

from ..units import GiB, MiB


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, allow_nan=False))    # NaN/Infinity are not JSON


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A plain monospace table; ``align`` is one char per column, ``l`` or ``r``."""
    align = align or "l" * len(headers)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            c = str(c)
            out.append(c.rjust(widths[i]) if align[i] == "r" else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def gib(n: int, digits: int = 2) -> str:
    return f"{n / GiB:,.{digits}f}"


def mib(n: int) -> str:
    return f"{n / MiB:,.0f}"


def warn(message: str) -> None:
    click.echo(f"vramplan: warning: {message}", err=True)


COUNTERS = (
    ("peak_allocated_bytes", "peak allocated", "torch.cuda.max_memory_allocated"),
    ("peak_reserved_bytes", "peak reserved", "torch.cuda.max_memory_reserved"),
    ("device_used_bytes", "device used", "nvidia-smi / NVML"),
)


def setup_line(d: dict) -> str:
    """One line that names the setup, from an estimate's JSON ``setup``."""
    s = d["setup"]
    parts = [d["model"], s["method"]]
    if s["quant"] != "none":
        parts.append(s["quant"] + ("+DQ" if s["double_quant"] and s["quant"] in ("nf4", "fp4") else ""))
    lora = s.get("lora")
    if lora:
        tg = lora["target_regex"] or ",".join(lora["targets"] or ["peft default"])
        parts.append(f"r={lora['r']} {tg}" + (" dora" if lora["dora"] else ""))
    parts.append(f"batch {s['batch']} × seq {s['seq']:,}")
    if s["method"] == "inference":        # no optimizer, no autocast: the weights' dtype is what --precision sets
        parts += [s["attn"], s["precision"].split("-")[0].replace("32", "fp32") + " weights"]
        if s.get("cache", "dynamic") != "dynamic":
            parts.append(f"{s['cache']} cache")
        if s.get("device_map", "none") != "none":
            parts.append(f"{s['gpus']} GPUs device_map {s['device_map']}")
        elif s.get("gpus", 1) > 1:
            parts.append(f"{s['gpus']} replicas")
        return " · ".join(parts)
    if s["grad_ckpt"]:
        parts.append("grad ckpt")
    parts += [s["attn"], s["optim"], s["precision"]]
    if s.get("gpus", 1) > 1:
        parts.append(f"{s['gpus']} GPUs {s['strategy']}")
    return " · ".join(parts)


def plan_text(d: dict, explain: bool = False) -> str:
    """The human view of an estimate (its JSON dict): components, the three counters, verdict, assumptions."""
    lines = [setup_line(d)]
    p = d["params"]
    pct = 100 * p["trainable"] / p["total"] if p["total"] else 0.0
    lines.append(f"params: total {p['total']:,} · trainable {p['trainable']:,} ({pct:.4f}%)")
    lines.append("")
    denom = d["device_used_bytes"] or 1
    rows = [[name, gib(b), f"{100 * b / denom:.1f}", d["counters"].get(name, "")]
            for name, b in d["breakdown_bytes"].items()]
    lines.append(table(["component", "GiB", "% of device used", "counter"], rows, "lrrl"))
    lines.append("")
    for key, label, what in COUNTERS:
        extra = f"   (phase: {d['peak_phase']})" if key == "peak_allocated_bytes" else ""
        lines.append(f"{label:15s} {gib(d[key]):>9s} GiB  ← {what}{extra}")
    pr = d.get("per_rank")
    if pr and pr.get("gpus", 1) > 1:
        lines.append(f"per rank of {pr['gpus']} GPUs ({pr['strategy']}, offload {pr.get('offload', 'none')}); "
                     f"model states on each GPU {gib(pr.get('model_states_bytes', 0))} GiB")
    if d.get("cpu_bytes_per_node"):
        lines.append(f"host (CPU) memory per node for offload: {gib(d['cpu_bytes_per_node'])} GiB")
    f = d.get("fits")
    if f:
        verdict = "FITS" if f["fits"] else "DOES NOT FIT"
        margin = f" with {f['margin']:.0%} margin" if f.get("margin") else ""
        lines.append(f"{f['gpu']} ({gib(f['capacity_bytes'])} GiB): {verdict}{margin}, headroom "
                     f"{gib(f['headroom_bytes'])} GiB")
    if d.get("warnings"):
        lines.append("")
        lines += [f"warning: {w}" for w in d["warnings"]]
    lines.append("")
    lines.append("assumptions:")
    lines += [f"  - {a}" for a in d["assumptions"]]
    if explain:
        lines.append("")
        lines.append("formulas:")
        for name, formula in d["formulas"].items():
            lines.append(f"  {name} = {d['breakdown_bytes'][name]:,} B")
            lines.append(f"      {formula}")
    lines.append("")
    lines.append("GiB = 2**30 bytes")
    return "\n".join(lines)
