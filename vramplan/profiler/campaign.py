"""The validation campaign: run the profiler over a matrix of setups and compare with the estimator.

``vramplan validate MATRIX.yaml --out reports/validation/`` runs each entry of the matrix as its own
``vramplan profile`` process (a fresh process per run: the CUDA context is measured at CUDA init, and an OOM
cannot leave a fragmented allocator behind for the next run), in the order of the file (smallest and most
valuable first), within a time budget:

* a run is started only when the time left exceeds the longest run seen so far (or ``--min-run-seconds``
  before any), so the campaign stops cleanly instead of being killed mid-run;
* a run whose record already exists with a final status (ok or oom) is skipped: the campaign resumes where a
  previous call stopped;
* after every run, ``summary.json`` and ``README.md`` (the table of every run and the median / p90 / max error
  per counter) are rewritten atomically.

Matrix file (YAML)::

    budget_minutes: 25
    defaults: {steps: 3, warmup: 1, loop: trainer, sample_hz: 100}
    runs:
      - {model: qwen2.5-0.5b, method: qlora, batch: 1, seq: 512}
      - {model: llama-3.2-1b, method: lora, targets: all-linear, rank: 16, seq: 2048, attn: eager}
      - {model: qwen2.5-0.5b, method: qlora, seq: 512, until_oom: batch}

Keys of a run are the long options of ``vramplan profile`` with underscores: every setup option the profiler
runs (:data:`vramplan.setup.SETUP_OPTIONS` less :data:`vramplan.profiler.options.NOT_PROFILED`) and the run
options in :data:`PROFILE_RUN_KEYS`.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PlanFileError, close_matches
from ..io import atomic_write_text
from ..setup import SETUP_OPTIONS
from .options import NOT_PROFILED

#: keys of a run that are options of ``vramplan profile`` but not of the setup (how to run and measure)
PROFILE_RUN_KEYS = ("steps", "warmup", "sample_hz", "loop", "until_oom", "device")
#: the setup options a run takes: every declared setup option the profiler runs, so a new option reaches the
#: campaign without being spelled here
SETUP_KEYS = tuple(o.name for o in SETUP_OPTIONS if o.name not in NOT_PROFILED)
RUN_KEYS = {"model", "id", *SETUP_KEYS, *PROFILE_RUN_KEYS}
TOP_KEYS = {"budget_minutes", "defaults", "runs", "description"}
#: boolean setup options: ``--x`` for true, ``--no-x`` for false
FLAGS = {o.name: (o.flag, f"--no-{o.flag[2:]}") for o in SETUP_OPTIONS if o.kind == "bool" and o.name in SETUP_KEYS}
COUNTERS = ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes")
FINAL = ("ok", "oom")


@dataclass(frozen=True)
class Run:
    index: int
    id: str
    options: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.options["model"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower()


def run_id(options: dict[str, Any]) -> str:
    """A stable, readable id: the model and every option that differs from the profile defaults."""
    if options.get("id"):
        return _slug(str(options["id"]))
    parts = [str(options["model"]).split("/")[-1]]
    for k in sorted(options):
        if k in ("model", "id", "steps", "warmup", "sample_hz", "device", "loop"):
            continue
        v = options[k]
        parts.append(f"{k}-{v}" if not isinstance(v, bool) else (k if v else f"no-{k}"))
    return _slug("_".join(parts))


def load_matrix(path: str | Path) -> tuple[list[Run], float]:
    """Read and validate a matrix file (:func:`vramplan.io.read_yaml`: a regular UTF-8 file of at most
    16 MiB, depth and alias limits). Keys must be strings, ``model`` and ``id`` strings, every setup option a
    value of its kind (:func:`vramplan.options.read_value`), ``budget_minutes`` a finite positive number.

    Raises:
        PlanFileError: naming file, run index and key.
    """
    from ..io import CONFIG_MAX_BYTES, brief, read_yaml
    from ..options import read_value

    p = Path(path)
    data = read_yaml(p, CONFIG_MAX_BYTES, error=PlanFileError, what="matrix", not_yaml="not valid YAML")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise PlanFileError(f"{p}: expected a mapping with a 'runs:' list")
    for k in data:
        if not isinstance(k, str):
            raise PlanFileError(f"{p}: key {brief(k)}: keys must be strings")
        if k not in TOP_KEYS:
            raise PlanFileError(f"{p}: unknown key {k!r}{close_matches(k, sorted(TOP_KEYS))}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise PlanFileError(f"{p}: 'defaults' must be a mapping")
    options = {o.name: o for o in SETUP_OPTIONS}
    runs: list[Run] = []
    seen: set[str] = set()
    for i, entry in enumerate(data["runs"]):
        if not isinstance(entry, dict) or "model" not in entry:
            raise PlanFileError(f"{p}: run {i}: expected a mapping with a 'model' key")
        opts = {**defaults, **entry}
        for k, v in opts.items():
            if not isinstance(k, str):
                raise PlanFileError(f"{p}: run {i}: key {brief(k)}: keys must be strings")
            if k not in RUN_KEYS:
                raise PlanFileError(f"{p}: run {i}: unknown key {k!r}{close_matches(k, sorted(RUN_KEYS))}")
            if k in ("model", "id") and not isinstance(v, str):
                raise PlanFileError(f"{p}: run {i}: key {k!r}: must be a string, got {brief(v)}")
            if k in options and v is not None:
                try:
                    read_value(options[k], v)
                except ValueError as exc:
                    raise PlanFileError(f"{p}: run {i}: key {k!r}: {exc}") from None
        rid = run_id(opts)
        if rid in seen:
            raise PlanFileError(f"{p}: run {i}: duplicates an earlier run ({rid}); give it an 'id'")
        seen.add(rid)
        runs.append(Run(i, rid, opts))
    budget = data.get("budget_minutes", 25)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < float("inf"):
        raise PlanFileError(f"{p}: budget_minutes must be a positive number of minutes, got {brief(budget)}")
    return runs, float(budget) * 60


def profile_argv(run: Run, out_dir: Path) -> list[str]:
    """The ``vramplan profile`` command line for a run."""
    o = run.options
    argv = [sys.executable, "-m", "vramplan", "profile", run.model, "--out", str(out_dir)]
    for k, v in o.items():
        if k in ("model", "id"):
            continue
        if k in FLAGS:
            argv.append(FLAGS[k][0] if v else FLAGS[k][1])
            continue
        if isinstance(v, list):
            v = ",".join(str(x) for x in v)
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def _records(run_dir: Path) -> list[dict[str, Any]]:
    """The run records in ``run_dir`` (read with :func:`vramplan.io.read_json`'s caps); unreadable ones skipped."""
    from ..errors import VramplanError
    from ..io import RECORD_MAX_BYTES, read_json

    out = []
    for f in sorted(run_dir.glob("*.json")):
        try:
            data = read_json(f, RECORD_MAX_BYTES)
        except VramplanError:
            continue
        if isinstance(data, dict):
            out.append({**data, "_path": str(f)})
    return out


def finished(run_dir: Path) -> bool:
    recs = _records(run_dir)
    if not recs:
        return False
    if any(r.get("schema") == "vramplan.until_oom/1" for r in recs):
        return True
    return any(r.get("status") in FINAL for r in recs if r.get("schema") == "vramplan.run/1")


# --------------------------------------------------------------------------------------------- summary
def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(out: Path, runs: list[Run]) -> dict[str, Any]:
    """Collect every run's records into ``summary.json`` data: rows and error statistics per counter."""
    rows: list[dict[str, Any]] = []
    paths: list[str] = []
    for run in runs:
        for rec in _records(out / "runs" / run.id):
            paths.append(os.path.relpath(rec["_path"], out))
            if rec.get("schema") != "vramplan.run/1":
                if rec.get("schema") == "vramplan.until_oom/1":
                    rows.append({"run": run.id, "model": run.model, "kind": "until_oom",
                                 "axis": rec.get("axis"), "measured_limit": rec.get("limit"),
                                 "predicted_limit": rec.get("predicted_limit")})
                continue
            m = rec.get("measured") or {}
            est = rec.get("estimate") or {}
            row = {"run": run.id, "model": run.model, "kind": "run", "status": rec.get("status"),
                   "device": (rec.get("environment") or {}).get("gpu_name")
                   or (rec.get("environment") or {}).get("device")}
            for c in COUNTERS:
                row[f"measured_{c}"] = m.get(c)
                row[f"estimated_{c}"] = est.get(c)
                e = (rec.get("error") or {}).get(c) or {}
                row[f"error_pct_{c}"] = e.get("error_pct")
            rows.append(row)
    stats: dict[str, Any] = {}
    for c in COUNTERS:
        errs = [abs(r[f"error_pct_{c}"]) for r in rows
                if r.get("kind") == "run" and r.get("status") == "ok" and r.get(f"error_pct_{c}") is not None]
        stats[c] = None if not errs else {"n": len(errs), "median_abs_error_pct": round(statistics.median(errs), 2),
                                          "p90_abs_error_pct": round(_pct(errs, 0.9), 2),
                                          "max_abs_error_pct": round(max(errs), 2)}
    return {"schema": "vramplan.validation/1", "runs": paths, "rows": rows, "stats": stats,
            "targets": {"peak_allocated_bytes": {"median": 3, "max": 8}, "device_used_bytes": {"median": 5}}}


def _gib(v: Any) -> str:
    return "—" if v is None else f"{v / 2**30:.2f}"


def readme(summary: dict[str, Any], matrix_path: str) -> str:
    lines = ["# Validation: measured against estimated", "",
             f"Generated by `vramplan validate {matrix_path}` — do not edit by hand. GiB = 2**30 bytes.", ""]
    lines.append("| counter | runs | median abs error | p90 | max |")
    lines.append("|---|---|---|---|---|")
    for c, s in summary["stats"].items():
        if s is None:
            lines.append(f"| {c} | 0 | — | — | — |")
        else:
            lines.append(f"| {c} | {s['n']} | {s['median_abs_error_pct']} % | {s['p90_abs_error_pct']} % | "
                         f"{s['max_abs_error_pct']} % |")
    lines += ["", "| run | device | status | measured alloc (GiB) | estimated alloc (GiB) | error | "
              "measured reserved (GiB) | estimated reserved (GiB) | measured device (GiB) | "
              "estimated device (GiB) | error |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        if r["kind"] == "until_oom":
            lines.append(f"| {r['run']} (until OOM, {r['axis']}) | | limit measured {r['measured_limit']} "
                         f"vs predicted {r['predicted_limit']} | | | | | | | | |")
            continue

        def err(c: str, row: dict[str, Any] = r) -> str:
            v = row.get(f"error_pct_{c}")
            return "—" if v is None else f"{v:+.1f} %"

        lines.append(
            f"| {r['run']} | {r['device']} | {r['status']} | {_gib(r['measured_peak_allocated_bytes'])} | "
            f"{_gib(r['estimated_peak_allocated_bytes'])} | {err('peak_allocated_bytes')} | "
            f"{_gib(r['measured_peak_reserved_bytes'])} | {_gib(r['estimated_peak_reserved_bytes'])} | "
            f"{_gib(r['measured_device_used_bytes'])} | {_gib(r['estimated_device_used_bytes'])} | "
            f"{err('device_used_bytes')} |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, runs: list[Run], matrix_path: str) -> dict[str, Any]:
    s = summarize(out, runs)
    atomic_write_text(out / "summary.json", json.dumps(s, indent=2) + "\n")
    atomic_write_text(out / "README.md", readme(s, matrix_path))
    return s


# ----------------------------------------------------------------------------------------------- run all
def validate(matrix_path: str, out: str, *, budget_s: float | None = None, min_run_s: float = 90.0,
             dry_run: bool = False, echo=print) -> dict[str, Any]:
    """Run the matrix within the budget, resuming; returns the summary."""
    from ..io import check_output_path

    runs, file_budget = load_matrix(matrix_path)
    budget = file_budget if budget_s is None else budget_s
    out_dir = Path(out)
    # an --out that cannot be written is refused before any run (issue 18: a folder under a file was a
    # NotADirectoryError traceback at the first run's mkdir, a dry run failed only at the summary)
    check_output_path(out_dir / "summary.json", "--out")
    start = time.monotonic()
    longest = 0.0
    for run in runs:
        run_dir = out_dir / "runs" / run.id
        if finished(run_dir):
            echo(f"skip  {run.id} (already recorded)")
            continue
        left = budget - (time.monotonic() - start)
        need = max(longest, min_run_s)
        if left < need:
            echo(f"stop  {len(runs) - run.index} runs left, {left:.0f} s of budget < {need:.0f} s needed; "
                 "run the same command again to resume")
            break
        argv = profile_argv(run, run_dir)
        if dry_run:
            echo("would run: " + " ".join(argv[2:]))
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        echo(f"run   {run.id}")
        timeout = max(60.0, left)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
            if proc.returncode not in (0, 1):
                (run_dir / "stderr.log").write_text(proc.stderr[-20000:])
        except subprocess.TimeoutExpired:
            status = "timeout"
        dt = time.monotonic() - t0
        longest = max(longest, dt)
        echo(f"      {status} in {dt:.0f} s")
        write_summary(out_dir, runs, matrix_path)
    return write_summary(out_dir, runs, matrix_path)
