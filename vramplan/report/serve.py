"""The view of ``vramplan serve --json`` (a plan, or a --target-concurrency search) for the ``serve --html`` page.

Nothing is derived here: the budget segments, block counts and concurrency are the JSON's (``serve/budget.py``
cuts the card into segments); the view picks them and notes what is missing; :func:`.pages.serve_page` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .views import is_int, is_number, kind_of


@dataclass
class ServeView:
    title: str
    kind: str                                  # "plan" | "search" | "unknown"
    notices: list[str] = field(default_factory=list)
    facts: list[tuple[str, Any, str]] = field(default_factory=list)
    segments: list[tuple[str, int | float]] = field(default_factory=list)
    over_bytes: int | float | None = None
    components: list[dict[str, Any]] = field(default_factory=list)      # name, bytes, formula
    kv_groups: list[dict[str, Any]] = field(default_factory=list)
    options: list[dict[str, Any]] = field(default_factory=list)          # a search's setups, best first
    fits: bool | None = None


_PLAN_FACTS: tuple[tuple[str, str, str], ...] = (
    ("engine", "engine", "text"), ("release", "accounting of", "text"), ("gpu", "GPU", "text"),
    ("tp", "tensor-parallel size", "int"), ("max_model_len", "max_model_len", "int"), ("dtype", "weights", "text"),
    ("quant", "quantization", "text"), ("kv_cache_dtype", "KV cache dtype", "text"),
    ("gpu_memory_utilization", "gpu_memory_utilization", "text"), ("mem_fraction_static", "mem_fraction_static",
                                                                   "text"),
    ("max_num_seqs", "max_num_seqs", "int"), ("max_num_batched_tokens", "max_num_batched_tokens", "int"),
    ("total_bytes", "card total", "bytes"), ("requested_bytes", "requested (total × utilization)", "bytes"),
    ("pre_model_load_bytes", "free before the weights load", "bytes"), ("weights_bytes", "weights per rank", "bytes"),
    ("available_kv_bytes", "available for the KV cache", "bytes"), ("block_size", "block size (tokens)", "int"),
    ("bytes_per_block", "bytes per block", "int"), ("num_gpu_blocks", "# GPU blocks", "int"),
    ("kv_cache_tokens", "GPU KV cache size (tokens)", "int"), ("page_size", "page size (tokens)", "int"),
    ("cell_bytes", "KV bytes per token", "int"), ("max_total_num_tokens", "max_total_num_tokens", "int"),
)


def serve_view(d: Any) -> ServeView:
    """Pick out of ``serve --json`` what the page shows, a notice per gap."""
    if not isinstance(d, dict):
        return ServeView("serve", "unknown", [f"not a serve plan: expected a JSON object, found {kind_of(d)}"])
    model = d.get("model") if isinstance(d.get("model"), str) else None
    notes: list[str] = [] if model else ["model: missing"]
    if "options" in d:
        return _search_view(d, model, notes)
    gpu = d.get("gpu") if isinstance(d.get("gpu"), str) else "?"
    view = ServeView(f"serve: {model or '?'} on {gpu}", "plan", notes)
    for key, label, kind in _PLAN_FACTS:
        value = d.get(key)
        if value is None:
            continue
        if (kind in ("bytes", "int") and not is_int(value)) or (kind == "text" and isinstance(value, (dict, list))):
            notes.append(f"{key}: expected {'an integer' if kind != 'text' else 'a value'}, found {kind_of(value)}")
            continue
        view.facts.append((label, value, kind))
    if is_number(d.get("max_concurrency")):
        length = d.get("max_model_len")
        view.facts.append((f"maximum concurrency at {length:,} tokens" if is_int(length) else "maximum concurrency",
                           f"{d['max_concurrency']:.2f}x", "text"))
    else:
        notes.append("max_concurrency: missing")
    if isinstance(d.get("fits"), bool):
        view.fits = d["fits"]
        view.facts.append(("the engine starts", "yes" if d["fits"] else "no: one request does not fit", "text"))
    else:
        notes.append("fits: missing")
    budget = d.get("budget_bytes")
    if isinstance(budget, dict) and isinstance(budget.get("segments"), list):
        bad = 0
        for s in budget["segments"]:
            if isinstance(s, dict) and isinstance(s.get("name"), str) and is_number(s.get("bytes")):
                view.segments.append((s["name"], s["bytes"]))
            else:
                bad += 1
        if bad:
            notes.append(f"budget_bytes.segments: {bad} entries lack name or bytes (not drawn)")
        if is_number(budget.get("over_bytes")) and budget["over_bytes"] > 0:
            view.over_bytes = budget["over_bytes"]
    else:
        notes.append("budget_bytes: missing, no budget chart")
    comps = d.get("components")
    if isinstance(comps, list):
        view.components = [{"component": c.get("name"), "size_bytes": c.get("bytes"), "formula": c.get("formula")}
                           for c in comps if isinstance(c, dict) and is_number(c.get("bytes"))]
    else:
        notes.append("components: missing")
    groups = d.get("kv_groups")
    if isinstance(groups, list):
        view.kv_groups = [{"kind": g.get("kind"), "layers": g.get("layers"), "padded_to": g.get("padded_to"),
                           "page_bytes_per_layer": g.get("page_bytes"), "sliding_window": g.get("sliding_window")}
                          for g in groups if isinstance(g, dict)]
    return view


def _search_view(d: dict[str, Any], model: str | None, notes: list[str]) -> ServeView:
    target, length = d.get("target_concurrency"), d.get("max_model_len")
    view = ServeView(f"serve: {model or '?'}, {target} sequences of {length} tokens", "search", notes)
    for key, label, kind in (("engine", "engine", "text"), ("target_concurrency", "target concurrency", "int"),
                             ("max_model_len", "tokens per sequence", "int"), ("gpu", "GPU asked about", "text"),
                             ("smallest_tp_on_gpu", "smallest TP size on it", "int")):
        if d.get(key) is not None:
            view.facts.append((label, d[key], kind))
    best = d.get("best")
    if isinstance(best, dict):
        view.facts.append(("best setup", f"{best.get('tp')} × {best.get('gpu')}", "text"))
    elif best is None:
        view.facts.append(("best setup", "none of the catalogue serves it at TP <= 8", "text"))
    options = d.get("options")
    if isinstance(options, list):
        view.options = [{"GPU": o.get("gpu"), "TP": o.get("tp"), "total_memory_bytes": o.get("total_memory_bytes"),
                         "usd_per_hour": o.get("usd_per_hour"), "max_concurrency": o.get("max_concurrency")}
                        for o in options if isinstance(o, dict)]
        if len(view.options) != len(options):
            notes.append(f"options: {len(options) - len(view.options)} entries are not objects (not shown)")
    else:
        notes.append(f"options: expected an array, found {kind_of(options)}")
    return view
