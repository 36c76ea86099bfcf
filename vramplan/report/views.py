"""Read saved JSON (run records, plan JSON) into plain views for the renderers, noting what is missing.

Nothing here derives a number: values are picked out of the JSON as they were saved (sizes stay ``int`` bytes)
and checked for type. Whatever is absent, null or of the wrong type becomes a one-line notice that the page
shows, so a hand-written or partial record gives a page that says what it lacks instead of a traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

RUN_SCHEMA = "vramplan.run/1"

#: sampled series of a run record: key -> legend label. RSS is host memory (the measure on CPU runs).
SERIES: tuple[tuple[str, str], ...] = (
    ("device_used_bytes", "device used (NVML)"),
    ("process_used_bytes", "process used (NVML)"),
    ("reserved_bytes", "reserved (torch)"),
    ("allocated_bytes", "allocated (torch)"),
    ("rss_bytes", "process RSS (host)"),
)
DEVICE_SERIES = ("device_used_bytes", "process_used_bytes", "reserved_bytes", "allocated_bytes")

#: counters compared between estimate and measurement: key -> label
COUNTERS: tuple[tuple[str, str], ...] = (
    ("peak_allocated_bytes", "peak allocated (torch)"),
    ("peak_reserved_bytes", "peak reserved (torch)"),
    ("device_used_bytes", "device used (NVML)"),
    ("peak_rss_bytes", "peak RSS (host)"),
)
GPU_COUNTERS = ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes")
CPU_COUNTERS = ("peak_rss_bytes",)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def kind_of(value: Any) -> str:
    """JSON type name for notices: ``object``, ``array``, ``string``, ``number``, ``boolean``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "number"


def setup_summary(setup: Any) -> str | None:
    """One line from a setup dict, e.g. ``qlora nf4 · r=16 all-linear · batch 4 × seq 2048 · grad ckpt``."""
    if not isinstance(setup, dict):
        return None
    parts: list[str] = []
    method, quant = setup.get("method"), setup.get("quant")
    if method == "inference":
        return _inference_summary(setup)
    if isinstance(method, str):
        parts.append(f"{method} {quant}" if isinstance(quant, str) and quant != "none" else method)
    lora = setup.get("lora")
    if isinstance(lora, dict) and lora.get("r") is not None:
        text = f"r={lora['r']}"
        targets = lora.get("targets")
        if isinstance(targets, list) and targets:
            text += " " + ",".join(str(t) for t in targets)
        elif isinstance(targets, str):
            text += " " + targets
        elif lora.get("target_regex"):
            text += " regex"
        if lora.get("dora"):
            text += " DoRA"
        parts.append(text)
    batch, seq = setup.get("batch"), setup.get("seq")
    if batch is not None or seq is not None:
        parts.append(f"batch {batch if batch is not None else '?'} × seq {seq if seq is not None else '?'}")
    if isinstance(setup.get("new_tokens"), int) and setup["new_tokens"] > 0:
        parts.append(f"{setup['new_tokens']} new tokens")
    if setup.get("grad_ckpt") is True:
        parts.append("grad ckpt")
    for key in ("precision", "optim"):
        if isinstance(setup.get(key), str):
            parts.append(setup[key])
    if isinstance(setup.get("attn"), str) and setup["attn"] != "sdpa":
        parts.append(f"attn {setup['attn']}")
    if isinstance(setup.get("loss"), str) and setup["loss"] != "standard":
        parts.append(f"{setup['loss']} loss")
    if is_int(setup.get("gpus")) and setup["gpus"] > 1:
        parts.append(f"{setup['gpus']} GPUs {setup.get('strategy', '')}".rstrip())
    if isinstance(setup.get("offload"), str) and setup["offload"] != "none":
        parts.append(f"offload {setup['offload']}")
    return " · ".join(parts) if parts else None


def _inference_summary(setup: dict[str, Any]) -> str:
    """An inference setup: no optimizer, no autocast (the weights' dtype is what precision names), no DDP."""
    quant = setup.get("quant")
    parts = [f"inference {quant}" if isinstance(quant, str) and quant != "none" else "inference"]
    batch, seq = setup.get("batch"), setup.get("seq")
    parts.append(f"batch {batch if batch is not None else '?'} × seq {seq if seq is not None else '?'}")
    if isinstance(setup.get("new_tokens"), int) and setup["new_tokens"] > 0:
        parts.append(f"{setup['new_tokens']} new tokens")
    if isinstance(setup.get("precision"), str):
        parts.append(setup["precision"].split("-")[0] + " weights")
    if isinstance(setup.get("attn"), str) and setup["attn"] != "sdpa":
        parts.append(f"attn {setup['attn']}")
    if isinstance(setup.get("cache"), str) and setup["cache"] != "dynamic":
        parts.append(f"{setup['cache']} cache")
    device_map = setup.get("device_map")
    if isinstance(device_map, str) and device_map != "none":
        parts.append(f"device_map {device_map} over {setup.get('gpus', '?')} GPUs")
    return " · ".join(parts)


# ------------------------------------------------------------------------------------------- run view
@dataclass(frozen=True)
class Phase:
    name: str
    step: int | None
    t_start: float
    t_end: float


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    values: list[float | int | None]


@dataclass(frozen=True)
class RefLine:
    """A horizontal line on the timeline at a saved value."""

    label: str
    value_bytes: int | float
    style: str  # "measured", "estimated", "capacity"
    key: str    # the counter it marks: "peak_allocated_bytes", "device_used_bytes", ...


@dataclass(frozen=True)
class Oom:
    phase: str | None
    step: int | None
    message: str | None
    requested_bytes: int | None
    t: float | None  # where to draw it: the end of the matching phase, else the last sample


@dataclass(frozen=True)
class Counter:
    key: str
    label: str
    measured_bytes: int | float | None
    estimated_bytes: int | float | None
    error_pct: float | None


@dataclass
class RunView:
    """What the page shows of one run record."""

    source: str
    anchor: str
    notices: list[str] = field(default_factory=list)
    readable: bool = True
    status: str | None = None
    model: str | None = None
    method: str | None = None
    setup: str | None = None
    gpu: str | None = None
    device: str | None = None
    facts: list[tuple[str, Any, str]] = field(default_factory=list)   # (label, value, kind)
    t: list[float | int | None] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    lines: list[RefLine] = field(default_factory=list)
    oom: Oom | None = None
    counters: list[Counter] = field(default_factory=list)
    components: list[tuple[str, int | float]] = field(default_factory=list)
    measured_totals: list[tuple[str, int | float]] = field(default_factory=list)

    def bench_row(self) -> dict[str, Any]:
        """The run's row of the benchmark table (column units come from the key suffix: _bytes, _pct)."""
        row: dict[str, Any] = {"run": self.source, "_href": f"#{self.anchor}", "model": self.model,
                               "method": self.method, "setup": self.setup, "GPU": self.gpu, "status": self.status}
        by_key = {c.key: c for c in self.counters}
        stems = [("peak_allocated_bytes", "peak_allocated"), ("device_used_bytes", "device_used")]
        if "peak_rss_bytes" in by_key:
            stems.append(("peak_rss_bytes", "peak_rss"))
        for key, stem in stems:
            c = by_key.get(key)
            row[f"measured_{stem}_bytes"] = c.measured_bytes if c else None
            if key == "peak_rss_bytes":   # host memory: measured only, the plan does not estimate it
                continue
            row[f"estimated_{stem}_bytes"] = c.estimated_bytes if c else None
            row[f"error_{stem}_pct"] = c.error_pct if c else None
        return row


def _list_of_numbers(value: Any, where: str, notices: list[str]) -> list[float | int | None] | None:
    if not isinstance(value, list):
        notices.append(f"{where}: expected an array, found {kind_of(value)}")
        return None
    bad = sum(1 for v in value if v is not None and not is_number(v))
    if bad:
        notices.append(f"{where}: {bad} of {len(value)} values are not numbers (drawn as gaps)")
    return [v if is_number(v) else None for v in value]


def _number(d: dict[str, Any], key: str, where: str, notices: list[str], *, required: bool = True) -> Any:
    value = d.get(key)
    if value is None:
        if required:
            notices.append(f"{where}.{key}: {'null' if key in d else 'missing'}")
        return None
    if not is_number(value):
        notices.append(f"{where}.{key}: expected a number, found {kind_of(value)}")
        return None
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def unreadable_view(source: str, anchor: str, problem: str) -> RunView:
    """The view of a file that could not be read as JSON."""
    return RunView(source=source, anchor=anchor, notices=[problem], readable=False)


def run_view(record: Any, source: str, anchor: str) -> RunView:
    """Pick out of a run record (schema ``vramplan.run/1``) what the page draws, with a notice per gap."""
    view = RunView(source=source, anchor=anchor)
    notes = view.notices
    if not isinstance(record, dict):
        notes.append(f"not a run record: the file holds a JSON {kind_of(record)}, expected an object "
                     f"with schema {RUN_SCHEMA!r}")
        view.readable = False
        return view

    schema = record.get("schema")
    if schema is None:
        notes.append(f"schema: missing (expected {RUN_SCHEMA!r}); showing what could be read")
    elif schema != RUN_SCHEMA:
        notes.append(f"schema: {schema!r} is not {RUN_SCHEMA!r}; showing what could be read")

    view.status = _text(record.get("status"))
    if view.status is None:
        notes.append("status: missing")
    elif view.status in ("interrupted", "error"):
        notes.append(f"status: {view.status!r}, the record may be partial")
    view.model = _text(record.get("model"))
    if view.model is None:
        notes.append("model: missing")
    setup = record.get("setup")
    if not isinstance(setup, dict):
        notes.append("setup: missing" if setup is None else f"setup: expected an object, found {kind_of(setup)}")
    else:
        view.method = _text(setup.get("method"))
        view.setup = setup_summary(setup)

    env = record.get("environment")
    if not isinstance(env, dict):
        notes.append("environment: missing, GPU and device unknown")
        env = {}
    view.device = _text(env.get("device"))
    view.gpu = _text(env.get("gpu_name")) or (view.device if view.device == "cpu" else None)
    on_cpu = view.device == "cpu"

    # ---- samples
    samples = record.get("samples")
    if samples is None:
        notes.append("samples: " + ("null" if "samples" in record else "missing") + ", no memory timeline")
    elif not isinstance(samples, dict):
        notes.append(f"samples: expected an object, found {kind_of(samples)}; no memory timeline")
    else:
        t = _list_of_numbers(samples.get("t"), "samples.t", notes) if "t" in samples else None
        if "t" not in samples:
            notes.append("samples.t: missing, no memory timeline")
        if t is not None:
            view.t = t
            for key, label in SERIES:
                if key not in samples:
                    continue
                values = _list_of_numbers(samples[key], f"samples.{key}", notes)
                if values is None:
                    continue
                if len(values) != len(t):
                    notes.append(f"samples.{key}: {len(values)} values for {len(t)} times")
                if all(v is None for v in values):
                    if not (on_cpu and key in DEVICE_SERIES) and values and all(v is None for v in samples[key]):
                        notes.append(f"samples.{key}: all {len(values)} values are null")
                    continue
                view.series.append(Series(key, label, values))
            if not view.series:
                notes.append("samples: no series with values (" + ", ".join(k for k, _ in SERIES) + ")")

    # ---- phases
    phases = record.get("phases")
    if phases is None:
        notes.append("phases: missing, no phase bands")
    elif not isinstance(phases, list):
        notes.append(f"phases: expected an array, found {kind_of(phases)}; no phase bands")
    else:
        skipped = 0
        for p in phases:
            if (isinstance(p, dict) and isinstance(p.get("name"), str) and is_number(p.get("t_start"))
                    and is_number(p.get("t_end"))):
                view.phases.append(Phase(p["name"], p.get("step") if is_int(p.get("step")) else None,
                                         p["t_start"], p["t_end"]))
            else:
                skipped += 1
        if skipped:
            notes.append(f"phases: {skipped} of {len(phases)} entries lack name, t_start or t_end (not drawn)")

    # ---- measured
    measured = record.get("measured")
    if not isinstance(measured, dict):
        notes.append("measured: " + ("missing" if measured is None else f"expected an object, found {kind_of(measured)}"))
        measured = {}
    else:
        for key in (CPU_COUNTERS if on_cpu else GPU_COUNTERS):
            _number(measured, key, "measured", notes)

    # ---- estimate
    estimate = record.get("estimate")
    if estimate is None:
        notes.append("estimate: " + ("null" if "estimate" in record else "missing")
                     + ", no estimate-vs-measured comparison")
        estimate = {}
    elif not isinstance(estimate, dict):
        notes.append(f"estimate: expected an object, found {kind_of(estimate)}")
        estimate = {}
    else:
        breakdown = estimate.get("breakdown_bytes")
        if not isinstance(breakdown, dict):
            notes.append("estimate.breakdown_bytes: missing, no per-component bars")
        else:
            for name in sorted(breakdown):
                if is_number(breakdown[name]):
                    view.components.append((name, breakdown[name]))
                else:
                    notes.append(f"estimate.breakdown_bytes[{name!r}]: expected a number, "
                                 f"found {kind_of(breakdown[name])}")

    # ---- error (measured vs estimated, as the profiler saved it)
    error = record.get("error")
    if estimate and not isinstance(error, dict):
        notes.append("error: missing, error % not shown")
    error = error if isinstance(error, dict) else {}
    order = [k for k, _ in COUNTERS] + sorted(k for k in error if k not in dict(COUNTERS))
    labels = dict(COUNTERS)
    for key in order:
        entry = error.get(key)
        if key in error and not isinstance(entry, dict):
            notes.append(f"error.{key}: expected an object, found {kind_of(entry)}")
            entry = None
        if isinstance(entry, dict):
            m = entry.get("measured") if is_number(entry.get("measured")) else None
            e = entry.get("estimated") if is_number(entry.get("estimated")) else None
            pct = entry.get("error_pct") if is_number(entry.get("error_pct")) else None
            if pct is None:
                notes.append(f"error.{key}.error_pct: missing or null")
        elif key in (CPU_COUNTERS if on_cpu else GPU_COUNTERS):
            m = measured.get(key) if is_number(measured.get(key)) else None
            e = estimate.get(key) if is_number(estimate.get(key)) else None
            pct = None
        else:
            continue
        if m is not None or e is not None:
            view.counters.append(Counter(key, labels.get(key, key.replace("_", " ")), m, e, pct))

    # ---- reference lines on the timeline, and measured totals beside the component stack
    for key, label in (("peak_allocated_bytes", "peak allocated"), ("device_used_bytes", "device used (NVML)"),
                       ("peak_rss_bytes", "peak RSS (host)")):
        if key == "peak_rss_bytes" and not on_cpu:
            continue                      # host memory: not drawn against GPU memory
        if is_number(measured.get(key)):
            view.lines.append(RefLine(f"measured {label}", measured[key], "measured", key))
            view.measured_totals.append((f"measured {label}", measured[key]))
        if is_number(estimate.get(key)):
            view.lines.append(RefLine(f"estimated {label}", estimate[key], "estimated", key))
    fits = estimate.get("fits")
    if isinstance(fits, dict) and is_number(fits.get("capacity_bytes")):
        view.lines.append(RefLine(f"capacity {fits.get('gpu') or ''}".rstrip(), fits["capacity_bytes"],
                                  "capacity", "capacity_bytes"))

    # ---- OOM
    oom = record.get("oom")
    if oom is not None and not isinstance(oom, dict):
        notes.append(f"oom: expected an object or null, found {kind_of(oom)}")
    elif isinstance(oom, dict):
        phase, step = _text(oom.get("phase")), oom.get("step") if is_int(oom.get("step")) else None
        at = None
        for p in view.phases:          # the matching phase, else the last sample
            if p.name == phase and (step is None or p.step == step):
                at = p.t_end
        if at is None and view.t and view.t[-1] is not None:
            at = view.t[-1]
        view.oom = Oom(phase, step, _text(oom.get("message")),
                       oom.get("requested_bytes") if is_int(oom.get("requested_bytes")) else None, at)
    elif view.status == "oom":
        notes.append("oom: missing although status is 'oom'")

    # ---- facts
    facts = view.facts
    for label, value, kind in (
        ("status", view.status, "text"), ("model", view.model, "text"), ("setup", view.setup, "text"),
        ("GPU", _text(env.get("gpu_name")), "text"), ("device", view.device, "text"),
        ("torch", _text(env.get("torch")), "text"),
        ("steps", record.get("steps") if is_int(record.get("steps")) else None, "int"),
        ("warmup steps", record.get("warmup") if is_int(record.get("warmup")) else None, "int"),
        ("wall time", record.get("wall_s") if is_number(record.get("wall_s")) else None, "s"),
        ("CUDA context (measured)", measured.get("cuda_context_bytes")
         if is_number(measured.get("cuda_context_bytes")) else None, "bytes"),
        ("estimated peak phase", _text(estimate.get("peak_phase")), "text"),
    ):
        if value is not None:
            facts.append((label, value, kind))
    return view


# ------------------------------------------------------------------------------------------ plan view
@dataclass(frozen=True)
class Rung:
    gpu: str
    capacity_bytes: int | float
    device_used_bytes: int | float
    headroom_bytes: int | float | None
    fits: bool | None


@dataclass(frozen=True)
class Grid:
    batch: list[Any]
    seq: list[Any]
    device_used_bytes: list[list[int | float | None]]


@dataclass(frozen=True)
class DeviceRow:
    """One GPU of a ``--device-map`` split, as the plan JSON's ``device_map.devices`` saved it."""

    device: str
    layers: str
    holds_lm_head: bool
    weights_bytes: int | float
    kv_cache_bytes: int | float
    working_set_bytes: int | float
    peak_allocated_bytes: int | float
    peak_reserved_bytes: int | float
    device_used_bytes: int | float
    fits: bool | None


@dataclass
class DeviceMapView:
    strategy: str | None
    gpus: int | None
    gpu: str | None
    capacity_bytes: int | float | None
    fits: bool | None
    rows: list[DeviceRow] = field(default_factory=list)
    budgets: list[tuple[str, int | float]] = field(default_factory=list)   # max_memory after balancing
    warnings: list[str] = field(default_factory=list)
    source: str | None = None

    def table_rows(self) -> list[dict[str, Any]]:
        """The per-GPU table, the saved values under their JSON keys (units from the suffixes)."""
        return [{"GPU": r.device, "layers": r.layers, "lm_head": r.holds_lm_head, "weights_bytes": r.weights_bytes,
                 "kv_cache_bytes": r.kv_cache_bytes, "working_set_bytes": r.working_set_bytes,
                 "peak_allocated_bytes": r.peak_allocated_bytes, "peak_reserved_bytes": r.peak_reserved_bytes,
                 "device_used_bytes": r.device_used_bytes, "fits": r.fits} for r in self.rows]


_DEVICE_NUMBERS = ("weights_bytes", "kv_cache_bytes", "working_set_bytes", "peak_allocated_bytes",
                   "peak_reserved_bytes", "device_used_bytes")


def device_map_view(section: Any, notes: list[str]) -> DeviceMapView | None:
    """The ``device_map`` section of a plan's JSON, a notice per gap."""
    if not isinstance(section, dict):
        notes.append(f"device_map: expected an object, found {kind_of(section)}")
        return None
    fits = section.get("fits")
    view = DeviceMapView(_text(section.get("strategy")), section.get("gpus") if is_int(section.get("gpus")) else None,
                         _text(section.get("gpu")),
                         section.get("capacity_bytes") if is_number(section.get("capacity_bytes")) else None,
                         fits if isinstance(fits, bool) else None, source=_text(section.get("source")))
    devices = section.get("devices")
    if not isinstance(devices, list):
        notes.append("device_map.devices: missing, no per-GPU table")
    else:
        skipped = 0
        for r in devices:
            if (isinstance(r, dict) and (is_int(r.get("device")) or isinstance(r.get("device"), str))
                    and all(is_number(r.get(k)) for k in _DEVICE_NUMBERS)):
                view.rows.append(DeviceRow(str(r["device"]), str(r.get("layers", "")), r.get("holds_lm_head") is True,
                                           *(r[k] for k in _DEVICE_NUMBERS),
                                           r.get("fits") if isinstance(r.get("fits"), bool) else None))
            else:
                skipped += 1
        if skipped:
            notes.append(f"device_map.devices: {skipped} of {len(devices)} entries lack device or a size "
                         "(not shown)")
    budgets = section.get("max_memory_bytes")
    if isinstance(budgets, dict):
        view.budgets = [(str(k), v) for k, v in budgets.items() if is_number(v)]
    warnings = section.get("warnings")
    if isinstance(warnings, list):
        view.warnings = [str(w) for w in warnings]
    if view.capacity_bytes is None:
        notes.append("device_map.capacity_bytes: missing (no --gpu), no capacity line on the per-GPU chart")
    return view


@dataclass
class PlanView:
    title: str
    notices: list[str] = field(default_factory=list)
    facts: list[tuple[str, Any, str]] = field(default_factory=list)
    components: list[tuple[str, int | float]] = field(default_factory=list)
    ladder: list[Rung] = field(default_factory=list)
    grid: Grid | None = None
    chosen: tuple[int, int] | None = None     # (batch index, seq index) of the plan's own setup in the grid
    capacity: tuple[str, int | float] | None = None
    assumptions: list[str] = field(default_factory=list)
    versions: list[tuple[str, str]] = field(default_factory=list)
    device_map: DeviceMapView | None = None


def plan_view(plan: Any) -> PlanView:
    """Pick out of ``vramplan plan --json`` output what the plan page draws, with a notice per gap."""
    if not isinstance(plan, dict):
        return PlanView(title="plan", notices=[f"not a plan: expected a JSON object, found {kind_of(plan)}"])
    model = _text(plan.get("model"))
    view = PlanView(title=f"plan: {model}" if model else "plan")
    notes = view.notices
    if model is None:
        notes.append("model: missing")

    facts = view.facts
    facts.append(("model", model, "text"))
    params = plan.get("params")
    if isinstance(params, dict):
        for key in ("total", "trainable"):
            if is_int(params.get(key)):
                facts.append((f"{key} parameters", params[key], "int"))
            else:
                notes.append(f"params.{key}: missing")
    else:
        notes.append("params: missing")
    facts.append(("setup", setup_summary(plan.get("setup")), "text"))
    unsplit = "one GPU, unsplit: " if plan.get("device_map") is not None else ""
    for key, label in (("peak_allocated_bytes", "peak allocated (torch)"),
                       ("peak_reserved_bytes", "peak reserved (torch)"),
                       ("device_used_bytes", "device used (NVML)")):
        facts.append((unsplit + label, _number(plan, key, "plan", notes), "bytes"))
    facts.append(("peak phase", _text(plan.get("peak_phase")), "text"))

    fits = plan.get("fits")
    split = plan.get("device_map")
    if split is not None:
        # issue 17: the verdict is per GPU of the split; the top-level counters are one GPU's, as if unsplit
        view.device_map = device_map_view(split, notes)
        dm = view.device_map
        if dm is not None:
            facts.append(("device map", f"{dm.strategy or '?'} over {dm.gpus or '?'} GPUs", "text"))
            facts.append(("GPU", dm.gpu, "text"))
            facts.append(("capacity per GPU", dm.capacity_bytes, "bytes"))
            if dm.rows:
                fullest = max(dm.rows, key=lambda r: r.device_used_bytes)
                facts.append((f"fullest GPU (GPU {fullest.device}), device used", fullest.device_used_bytes,
                              "bytes"))
            if dm.fits is not None:
                facts.append(("fits (every GPU)", "yes" if dm.fits else "no", "text"))
    elif isinstance(fits, dict) and isinstance(fits.get("gpu"), str) and is_number(fits.get("capacity_bytes")):
        view.capacity = (fits["gpu"], fits["capacity_bytes"])
        facts.append(("GPU", fits["gpu"], "text"))
        facts.append(("capacity", fits["capacity_bytes"], "bytes"))
        if is_number(fits.get("headroom_bytes")):
            facts.append(("headroom", fits["headroom_bytes"], "bytes"))
        if isinstance(fits.get("fits"), bool):
            facts.append(("fits", "yes" if fits["fits"] else "no", "text"))
    elif fits is None:
        notes.append("fits: null (no --gpu chosen), no capacity boundary on the heatmap")
    else:
        notes.append("fits: expected an object with gpu and capacity_bytes")
    view.facts = [f for f in facts if f[1] is not None]

    breakdown = plan.get("breakdown_bytes")
    if isinstance(breakdown, dict):
        for name in sorted(breakdown):
            if is_number(breakdown[name]):
                view.components.append((name, breakdown[name]))
            else:
                notes.append(f"breakdown_bytes[{name!r}]: expected a number, found {kind_of(breakdown[name])}")
    else:
        notes.append("breakdown_bytes: missing, no breakdown chart")

    ladder = plan.get("ladder")
    if ladder is None and split is not None and plan.get("grid") is None:
        notes.append("ladder and grid: not drawn for a --device-map plan (they are views of one GPU holding "
                     "the whole model); the per-GPU split is below")
    elif ladder is None:
        notes.append("ladder: missing (run `vramplan plan --html` to add it), no GPU ladder")
    elif not isinstance(ladder, list):
        notes.append(f"ladder: expected an array, found {kind_of(ladder)}")
    else:
        skipped = 0
        for r in ladder:
            if (isinstance(r, dict) and isinstance(r.get("gpu"), str) and is_number(r.get("capacity_bytes"))
                    and is_number(r.get("device_used_bytes"))):
                view.ladder.append(Rung(r["gpu"], r["capacity_bytes"], r["device_used_bytes"],
                                        r.get("headroom_bytes") if is_number(r.get("headroom_bytes")) else None,
                                        r.get("fits") if isinstance(r.get("fits"), bool) else None))
            else:
                skipped += 1
        if skipped:
            notes.append(f"ladder: {skipped} of {len(ladder)} entries lack gpu, capacity_bytes or "
                         "device_used_bytes (not drawn)")

    grid = plan.get("grid")
    if grid is None and split is not None and ladder is None:
        pass
    elif grid is None:
        notes.append("grid: missing (run `vramplan plan --html` to add it), no batch × seq heatmap")
    elif not isinstance(grid, dict):
        notes.append(f"grid: expected an object, found {kind_of(grid)}")
    else:
        batch, seq, z = grid.get("batch"), grid.get("seq"), grid.get("device_used_bytes")
        if not (isinstance(batch, list) and isinstance(seq, list) and isinstance(z, list)):
            notes.append("grid: needs arrays batch, seq and device_used_bytes, no heatmap")
        elif len(z) != len(batch) or any(not isinstance(row, list) or len(row) != len(seq) for row in z):
            notes.append(f"grid.device_used_bytes: expected {len(batch)} rows (batch) of {len(seq)} values "
                         "(seq), no heatmap")
        else:
            rows = [[v if is_number(v) else None for v in row] for row in z]
            view.grid = Grid(list(batch), list(seq), rows)
            setup = plan.get("setup") if isinstance(plan.get("setup"), dict) else {}
            if setup.get("batch") in batch and setup.get("seq") in seq:
                view.chosen = (batch.index(setup["batch"]), seq.index(setup["seq"]))

    assumptions = plan.get("assumptions")
    if isinstance(assumptions, list):
        view.assumptions = [str(a) for a in assumptions]
    versions = plan.get("versions")
    if isinstance(versions, dict):
        view.versions = [(str(k), str(versions[k])) for k in sorted(versions)]
    return view
