"""The run record (``vramplan.run/1``): one JSON file per run, and the summary of an ``--until-oom`` search.

Field names are a contract with the HTML report; :func:`validate_record` checks one. Sizes are ``int`` bytes,
times are seconds (``t_start``/``t_end`` and ``samples.t`` on one clock whose origin is the run's start),
and an unavailable counter is ``null`` — never ``0`` or ``-1``.

A run on several ranks (:func:`merge_ranks`) is one record of the same schema with every top-level key the
report reads, plus ``ranks``: one entry per rank with its own ``status``, ``measured``, ``phases`` and
``samples`` (on that rank's clock; ``t_offset_s`` says when that clock started relative to the earliest rank).
Top-level ``measured`` is the maximum over ranks, counter by counter (the planner estimates one rank, so the
comparison is with the rank that needs the most); ``measured.peak_rank`` names the rank with the highest peak,
whose ``phases`` and ``samples`` are the top-level ones.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VramplanError
from ..io import RECORD_MAX_BYTES, atomic_write_text, read_json
from .phases import PEAK_KEYS, PHASE_NAMES
from .sampler import SAMPLE_COLUMNS

SCHEMA = "vramplan.run/1"
UNTIL_OOM_SCHEMA = "vramplan.until_oom/1"
STATUSES = ("ok", "oom", "interrupted", "error")
#: which status a merged run takes when its ranks disagree: the first in this order that any rank has (an
#: OOM on one rank makes the others fail or be stopped: the OOM is the cause)
STATUS_PRIORITY = ("oom", "error", "interrupted", "ok")
RANK_KEYS = ("rank", "status", "measured", "phases", "samples", "oom", "exception")
#: counters merged as the maximum over ranks
MERGED_COUNTERS = ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes", "cuda_context_bytes",
                   "peak_rss_bytes", "peak_active_bytes")
TOP_KEYS = ("schema", "status", "model", "setup", "environment", "phases", "samples", "measured", "estimate",
            "error", "oom", "steps", "warmup", "wall_s")
PHASE_KEYS = ("name", "step", "t_start", "t_end", "peak_allocated_bytes", "peak_reserved_bytes",
              "peak_active_bytes", "device_used_bytes", "rss_bytes")
MEASURED_KEYS = ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes", "cuda_context_bytes",
                 "peak_rss_bytes", "per_phase")
#: counters both a measurement and an ``Estimate`` carry, compared in ``error``
COMPARED = ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes")


class RecordError(ValueError):
    """A record that does not follow the schema (a bug in the writer, or a foreign file)."""


class RecordFileError(RecordError, VramplanError):
    """A record file that cannot be read at all: not a regular file, larger than
    :data:`~vramplan.io.RECORD_MAX_BYTES`, not UTF-8, not JSON, nested too deep (one line naming the file)."""


@dataclass
class RunResult:
    """One run: its record (:data:`SCHEMA`), the file it was written to (``None`` with ``write=False``), and
    the allocator snapshot written beside it, if any."""

    record: dict[str, Any]
    path: Path | None
    snapshot_path: Path | None = None

    @property
    def status(self) -> str:
        return str(self.record["status"])


@dataclass
class UntilOomResult:
    """An ``--until-oom`` search: its summary (:data:`UNTIL_OOM_SCHEMA`), where it was written, and every run."""

    summary: dict[str, Any]
    path: Path | None
    runs: list[RunResult] = field(default_factory=list)


def new_record(model: str, setup: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
    """A record in its initial state: status ``error`` until the run says otherwise."""
    return {"schema": SCHEMA, "status": "error", "model": model, "setup": setup, "environment": {},
            "phases": [], "samples": {c: [] for c in SAMPLE_COLUMNS},
            "measured": {k: None for k in MEASURED_KEYS[:-1]} | {"per_phase": {}},
            "estimate": None, "error": {}, "oom": None, "steps": steps, "warmup": warmup, "wall_s": 0.0}


def _max(values: Any) -> int | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def summarize(phases: list[dict[str, Any]], samples: dict[str, list[Any]], *, warmup: int,
              t_measure: float | None, window_peaks: dict[str, int | None], all_peaks: dict[str, int | None],
              cuda_context_bytes: int | None) -> dict[str, Any]:
    """``measured`` from the phases and samples.

    The measurement window is the steps after warmup (from the first measured step's start). When the run
    stopped before reaching it (an OOM in a warmup step, a failure while loading), the window is the whole
    run and ``measured.window`` says ``"all"``. ``per_phase`` gives, per phase name, the largest peak of each
    counter over its occurrences in the window, their count and mean duration; ``load`` is always included.
    """
    in_window = t_measure is not None
    measured_phases = [p for p in phases if p["name"] == "load" or
                       (in_window and p.get("step") is not None and p["step"] >= warmup)]
    if not in_window:
        measured_phases = list(phases)
    t_from = t_measure if in_window else None

    def sample_max(col: str) -> int | None:
        return _max(v for t, v in zip(samples["t"], samples[col], strict=True) if t_from is None or t >= t_from)

    train_phases = [p for p in measured_phases if p["name"] != "load"] or measured_phases
    peaks = window_peaks if in_window else all_peaks
    measured: dict[str, Any] = {
        "peak_allocated_bytes": peaks.get("peak_allocated_bytes"),
        "peak_reserved_bytes": peaks.get("peak_reserved_bytes"),
        "device_used_bytes": _max([sample_max("device_used_bytes"),
                                   *(p.get("device_used_bytes") for p in train_phases)]),
        "cuda_context_bytes": cuda_context_bytes,
        "peak_rss_bytes": _max([sample_max("rss_bytes"), *(p.get("rss_bytes") for p in train_phases)]),
        "peak_active_bytes": peaks.get("peak_active_bytes"),
        "window": "steps>=warmup" if in_window else "all",
    }
    per_phase: dict[str, dict[str, Any]] = {}
    for name in PHASE_NAMES:
        group = [p for p in measured_phases if p["name"] == name]
        if not group:
            continue
        entry: dict[str, Any] = {k: _max(p.get(k) for p in group) for k in (*PEAK_KEYS, "device_used_bytes",
                                                                             "rss_bytes")}
        entry["count"] = len(group)
        entry["mean_s"] = sum(p["t_end"] - p["t_start"] for p in group) / len(group)
        per_phase[name] = entry
    measured["per_phase"] = per_phase
    key = "peak_allocated_bytes" if measured["peak_allocated_bytes"] is not None else "rss_bytes"
    top = max(train_phases, key=lambda p: p.get(key) or -1, default=None)
    measured["peak_phase"] = top["name"] if top is not None and top.get(key) is not None else None
    measured["peak_step"] = top.get("step") if top is not None and top.get(key) is not None else None
    return measured


def compare(measured: dict[str, Any], estimate: dict[str, Any] | None) -> dict[str, Any]:
    """``error``: for each counter both sides have, ``error_pct = 100 * (estimated - measured) / measured``.

    Positive means the planner over-estimates (safe side), negative that it under-estimates.
    """
    if not estimate:
        return {}
    out: dict[str, Any] = {}
    for k in COMPARED:
        m, e = measured.get(k), estimate.get(k)
        if isinstance(m, int) and isinstance(e, int) and m > 0:
            out[k] = {"measured": m, "estimated": e, "error_pct": 100.0 * (e - m) / m}
    return out


def validate_record(rec: dict[str, Any]) -> None:
    """Raise :class:`RecordError` naming the first field that breaks the ``vramplan.run/1`` schema."""
    missing = [k for k in TOP_KEYS if k not in rec]
    if missing:
        raise RecordError(f"record lacks {', '.join(missing)}")
    if rec["schema"] != SCHEMA:
        raise RecordError(f"schema is {rec['schema']!r}, expected {SCHEMA!r}")
    if rec["status"] not in STATUSES:
        raise RecordError(f"status {rec['status']!r} is not one of {', '.join(STATUSES)}")
    _validate_run_parts(rec, "")
    for k, v in rec["error"].items():
        if not {"measured", "estimated", "error_pct"} <= set(v):
            raise RecordError(f"error.{k} needs measured, estimated, error_pct")
    if "ranks" in rec:
        ranks = rec["ranks"]
        if not isinstance(ranks, list) or not ranks:
            raise RecordError("ranks must be a non-empty list")
        for i, entry in enumerate(ranks):
            lack = [k for k in RANK_KEYS if k not in entry]
            if lack:
                raise RecordError(f"ranks[{i}] lacks {', '.join(lack)}")
            if entry["rank"] != i:
                raise RecordError(f"ranks[{i}].rank is {entry['rank']!r}, expected {i}")
            if entry["status"] not in STATUSES:
                raise RecordError(f"ranks[{i}].status {entry['status']!r} is not one of {', '.join(STATUSES)}")
            _validate_run_parts(entry, f"ranks[{i}].")
        world = (rec.get("environment") or {}).get("world_size")
        if world != len(ranks):
            raise RecordError(f"environment.world_size is {world!r} but ranks has {len(ranks)} entries")


def _validate_run_parts(rec: dict[str, Any], where: str) -> None:
    """phases, samples, measured and oom of a record or of one of its ranks."""
    for i, p in enumerate(rec["phases"]):
        lack = [k for k in PHASE_KEYS if k not in p]
        if lack:
            raise RecordError(f"{where}phases[{i}] lacks {', '.join(lack)}")
        if p["name"] not in PHASE_NAMES:
            raise RecordError(f"{where}phases[{i}].name {p['name']!r} is not one of {', '.join(PHASE_NAMES)}")
        if p["t_end"] < p["t_start"]:
            raise RecordError(f"{where}phases[{i}] ends before it starts")
        for k in PHASE_KEYS[4:]:
            if p[k] is not None and not isinstance(p[k], int):
                raise RecordError(f"{where}phases[{i}].{k} must be int bytes or null, got {p[k]!r}")
    cols = rec["samples"]
    if set(cols) != set(SAMPLE_COLUMNS):
        raise RecordError(f"{where}samples columns are {sorted(cols)}, expected {sorted(SAMPLE_COLUMNS)}")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise RecordError(f"{where}samples columns have different lengths: { {k: len(v) for k, v in cols.items()} }")
    lack = [k for k in MEASURED_KEYS if k not in rec["measured"]]
    if lack:
        raise RecordError(f"{where}measured lacks {', '.join(lack)}")
    if rec["status"] == "oom":
        oom = rec["oom"]
        if not isinstance(oom, dict) or not {"phase", "step", "message", "requested_bytes"} <= set(oom):
            raise RecordError(f"{where}status oom needs oom = {{phase, step, message, requested_bytes}}")
    elif rec["oom"] is not None:
        raise RecordError(f"{where}oom must be null when status is {rec['status']!r}")


# ----------------------------------------------------------------------------------------------- merging
def _empty_measured() -> dict[str, Any]:
    return {k: None for k in MEASURED_KEYS[:-1]} | {"per_phase": {}}


def _rank_entry(r: int, rec: dict[str, Any] | None, missing_reason: str, missing_status: str) -> dict[str, Any]:
    """One rank of a merged record: its own status, counters, phases and samples, and where it ran."""
    if rec is None:
        return {"rank": r, "status": missing_status, "local_rank": None, "pid": None, "device": None,
                "device_index": None, "gpu_name": None, "gpu_uuid": None, "parallel": None,
                "clock_origin_unix": None, "t_offset_s": None, "wall_s": None, "measured": _empty_measured(),
                "phases": [], "samples": {c: [] for c in SAMPLE_COLUMNS}, "oom": None,
                "exception": {"type": "NoRecord", "message": missing_reason, "phase": None, "step": None}}
    env = rec.get("environment") or {}
    gpu = env.get("gpu") or {}
    return {"rank": r, "status": rec["status"], "local_rank": env.get("local_rank"), "pid": env.get("pid"),
            "device": env.get("device"), "device_index": env.get("device_index"), "gpu_name": env.get("gpu_name"),
            "gpu_uuid": gpu.get("uuid"), "parallel": env.get("parallel"),
            "clock_origin_unix": rec.get("clock_origin_unix"), "t_offset_s": None, "wall_s": rec.get("wall_s"),
            "measured": rec["measured"], "phases": rec["phases"], "samples": rec["samples"], "oom": rec["oom"],
            "exception": rec.get("exception")}


def merge_measured(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The maximum over ranks of every counter, per phase too (``count`` and ``mean_s``: the largest, i.e. the
    slowest rank); ``peak_rank`` is the rank with the highest peak (allocated on CUDA, RSS on the CPU), whose
    ``peak_phase``/``peak_step`` are kept. ``measured`` is in rank order; ranks without a record are left out
    by the caller."""
    out: dict[str, Any] = {k: _max(m.get(k) for m in measured) for k in MERGED_COUNTERS}
    out["window"] = "steps>=warmup" if measured and all(m.get("window") == "steps>=warmup" for m in measured) \
        else "all"
    per_phase: dict[str, dict[str, Any]] = {}
    for name in PHASE_NAMES:
        group = [m["per_phase"][name] for m in measured if name in (m.get("per_phase") or {})]
        if not group:
            continue
        entry: dict[str, Any] = {k: _max(g.get(k) for g in group) for k in (*PEAK_KEYS, "device_used_bytes",
                                                                            "rss_bytes")}
        entry["count"] = max(g["count"] for g in group)
        entry["mean_s"] = max(g["mean_s"] for g in group)
        per_phase[name] = entry
    out["per_phase"] = per_phase
    key = "peak_allocated_bytes" if out["peak_allocated_bytes"] is not None else "peak_rss_bytes"
    ranked = [(m.get(key), i) for i, m in enumerate(measured) if m.get(key) is not None]
    top = max(ranked, key=lambda t: (t[0], -t[1]))[1] if ranked else None
    out["peak_rank"] = top
    out["peak_phase"] = measured[top].get("peak_phase") if top is not None else None
    out["peak_step"] = measured[top].get("peak_step") if top is not None else None
    return out


def merge_ranks(records: list[dict[str, Any] | None], *, model: str, setup: dict[str, Any], steps: int,
                warmup: int, launch: dict[str, Any], missing_reason: str = "this rank wrote no record",
                missing_status: str = "error") -> dict[str, Any]:
    """One ``vramplan.run/1`` record from the records of ranks ``0..len(records)-1`` (``None``: no record).

    Status: the first of :data:`STATUS_PRIORITY` any rank has (a rank without a record counts as
    ``missing_status``); ``oom`` and ``exception`` are those of the first rank that has one, with its ``rank``.
    ``measured``: :func:`merge_measured`; ``phases`` and ``samples``: the peak rank's; ``environment``: the
    first rank's, without its rank-specific keys, plus ``world_size`` and ``launch``; ``estimate`` (one rank,
    the same on every rank) and ``error`` against the merged counters. ``wall_s`` and ``started_at`` are left
    for the caller, who timed the launch.
    """
    present = [(r, rec) for r, rec in enumerate(records) if rec is not None]
    entries = [_rank_entry(r, rec, missing_reason, missing_status) for r, rec in enumerate(records)]
    origins = [e["clock_origin_unix"] for e in entries if e["clock_origin_unix"] is not None]
    for e in entries:
        if e["clock_origin_unix"] is not None:
            e["t_offset_s"] = e["clock_origin_unix"] - min(origins)
    rec = new_record(model, setup, steps, warmup)
    statuses = {e["status"] for e in entries}
    rec["status"] = next(s for s in STATUS_PRIORITY if s in statuses)
    first_oom = next((e for e in entries if e["oom"]), None)
    rec["oom"] = dict(first_oom["oom"], rank=first_oom["rank"]) if first_oom and rec["status"] == "oom" else None
    failed = next((e for e in entries if e["status"] == "error" and e["exception"]), None)
    rec["exception"] = dict(failed["exception"], rank=failed["rank"]) if failed else None
    env: dict[str, Any] = {}
    if present:
        env = {k: v for k, v in (present[0][1].get("environment") or {}).items()
               if k not in ("rank", "local_rank", "pid", "parallel", "device_index")}
    env["world_size"] = len(records)
    env["launch"] = launch
    env.setdefault("device", launch.get("device"))
    rec["environment"] = env
    measured_list = [entries[r]["measured"] for r, _ in present]
    merged = merge_measured(measured_list)
    if merged["peak_rank"] is not None:
        merged["peak_rank"] = present[merged["peak_rank"]][0]
    rec["measured"] = merged
    top = merged["peak_rank"] if merged["peak_rank"] is not None else (present[0][0] if present else None)
    if top is not None:
        rec["phases"] = entries[top]["phases"]
        rec["samples"] = entries[top]["samples"]
    rec["estimate"] = next((r_["estimate"] for _, r_ in present if r_.get("estimate")), None)
    rec["error"] = compare(merged, rec["estimate"])
    rec["snapshot"] = None
    rec["ranks"] = entries
    return rec


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "model"


def record_path(out: str | Path, model: str, setup: dict[str, Any], *, suffix: str = "") -> Path:
    """``OUT/<model>-<method>[-<quant>]-b<batch>-s<seq>-<UTC time, ms>-<pid>.json``; ``OUT`` ending in ``.json``
    is the file itself."""
    import os

    out = Path(out)
    if out.suffix == ".json" and not suffix:
        return out
    if out.suffix == ".json":
        out = out.parent
    quant = f"-{setup['quant']}" if setup.get("quant") not in (None, "none") else ""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}"
    name = (f"{_slug(model)}-{setup['method']}"
            f"{quant}-b{setup['batch']}-s{setup['seq']}{suffix}-{stamp}-{os.getpid()}.json")
    return out / name


def write_record(rec: dict[str, Any], path: str | Path, warn: Any = None) -> Path:
    """Write ``rec`` atomically as JSON (a reader never sees half a record); returns the path written.

    Indented for reading, except the sample columns, which are written one column per line. A measurement is
    never lost to its output location (issue 18): when ``path`` cannot be written although ``profile`` checked
    it before measuring (the folder was removed or filled meanwhile), the record goes to
    :func:`fallback_record_path` and ``warn`` (default: stderr) says where.
    """
    marker = "\"__vramplan_samples__\""
    body = dict(rec)
    samples = body.get("samples")
    if isinstance(samples, dict):
        body["samples"] = "__vramplan_samples__"
        inner = ",\n  ".join(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'), allow_nan=False)}"
                             for k, v in samples.items())
        text = json.dumps(body, indent=1, allow_nan=False).replace(marker, "{\n  " + inner + "\n }", 1)
    else:
        text = json.dumps(body, indent=1, allow_nan=False)
    try:
        return atomic_write_text(path, text + "\n")
    except VramplanError as exc:            # OutputPathError: the folder is gone, read-only, full ...
        written = atomic_write_text(fallback_record_path(path), text + "\n")
        message = f"the run record could not be written ({exc}); it is in {written} instead"
        if warn is None:
            sys.stderr.write(f"vramplan: warning: {message}\n")
        else:
            warn(message)
        return written


def fallback_record_path(path: str | Path) -> Path:
    """Where a record goes when its own path cannot be written: the system's temporary folder, under the
    record's own file name (``$TMPDIR/vramplan-records/<name>``)."""
    import tempfile

    return Path(tempfile.gettempdir()) / "vramplan-records" / Path(path).name


def load_record(path: str | Path) -> dict[str, Any]:
    """A ``vramplan.run/1`` record read through :func:`vramplan.io.read_json` (a FIFO or a device is refused
    before it is opened, at most :data:`~vramplan.io.RECORD_MAX_BYTES`, UTF-8, nested at most
    :data:`~vramplan.io.MAX_DEPTH` deep) and validated.

    Raises:
        RecordFileError: the file cannot be read as JSON (one line naming it).
        RecordError: it is JSON but not a record (:func:`validate_record`).
    """
    rec = read_json(path, RECORD_MAX_BYTES, error=RecordFileError, what="run record")
    if not isinstance(rec, dict):
        raise RecordError(f"{path}: a run record is a JSON object, got {type(rec).__name__}")
    validate_record(rec)
    return rec
