"""``check``: every file read and checked on its own (the CI gate). One bad file never hides the others: each
plan ends ``ok`` (fits), ``fail`` (does not fit), ``cannot-check`` (read, but a stage, setting or model
vramplan cannot model or resolve) or ``bad-file`` (unreadable or invalid), with the keys it ignored."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import (
    CannotCheckError,
    ForeignConfigError,
    PlanFileError,
    TargetError,
    UnknownModelError,
    VramplanError,
)
from ..estimate import Estimate, estimate
from ..setup import Setup
from .planfile import PlanEntry

Status = Literal["ok", "fail", "cannot-check", "bad-file"]


def _plan_error(entry: PlanEntry, exc: Exception, key: str | None = None) -> PlanFileError:
    """Prefix an error with the plan's place and the key it is about (read from ``--option`` in the message)."""
    msg = str(exc)
    if key is None:
        m = re.search(r"--([a-z][a-z0-9-]*)", msg)
        key = m.group(1).replace("-", "_") if m else None
    return PlanFileError(f"{entry.where}: key {key!r}: {msg}" if key else f"{entry.where}: {msg}")


# ------------------------------------------------------------------------------------------ per file
@dataclass
class PlanOutcome:
    """What ``check`` concluded for one plan of one file (or for a file that yields no plan)."""

    file: str
    status: Status
    format: str | None = None
    plan: int | None = None          # 1-based; None when the file yields no plan
    count: int = 0
    name: str | None = None
    model_id: str | None = None      # as the file names it
    model: str | None = None         # as resolved (bundled profile name, path, Hub id)
    reason: str | None = None        # cannot-check / bad-file
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    entry: PlanEntry | None = None
    estimate: Estimate | None = None

    @property
    def where(self) -> str:
        return f"{self.file}: plan {self.plan} of {self.count}" if self.plan is not None else self.file

    def to_dict(self) -> dict[str, Any]:
        """The ``check --json`` record of this plan (schema in docs/ci.md)."""
        est = self.estimate
        fit = est.fit if est is not None else None
        return {
            "file": self.file, "format": self.format, "plan": self.plan, "plans_in_file": self.count,
            "name": self.name, "status": self.status, "model_id": self.model_id, "model": self.model,
            "fits": fit.fits if fit is not None else None,
            "gpu": fit.gpu if fit is not None else (self.entry.gpu if self.entry is not None else None),
            "capacity_bytes": fit.capacity_bytes if fit is not None else None,
            "peak_allocated_bytes": est.peak_allocated_bytes if est is not None else None,
            "peak_reserved_bytes": est.peak_reserved_bytes if est is not None else None,
            "device_used_bytes": est.device_used_bytes if est is not None else None,
            "headroom_bytes": fit.headroom_bytes if fit is not None else None,
            "margin": fit.margin if fit is not None else (self.entry.margin if self.entry is not None else None),
            "setup": est.setup.to_dict() if est is not None else None,
            "ignored": list(self.ignored), "warnings": list(self.warnings),
            "cannot_check": self.reason if self.status == "cannot-check" else None,
            "bad_file": self.reason if self.status == "bad-file" else None,
            "references": list(self.references),
        }


@dataclass(frozen=True)
class CheckOverrides:
    """What the command line gives for every file: the card and margin, the model of files that name none,
    and the values files leave to the launcher (``seq`` of a file that does not truncate, ``gpus``)."""

    gpu: str | None = None
    margin: float | None = None
    model: str | None = None
    seq: int | None = None
    gpus: int | None = None
    batch: int | None = None             # a file that names no batch size (a PEFT adapter_config.json)


def _read_file(path: str, ov: CheckOverrides) -> list[PlanOutcome | PlanEntry]:
    """The plans of one file as entries to estimate, or outcomes already decided (cannot check, bad file)."""
    from ..interop.detect import detect_mapping, is_script, read_mapping
    from ..interop.launch import read_script
    from ..io import CONFIG_MAX_BYTES, parse_json, parse_yaml, read_text, short_path
    from .planfile import KEY_SOURCES, PLAN_KEYS, normalize_plan_keys, read_plan_file

    file = short_path(path)
    fmt: str | None = None
    try:
        text = read_text(path, CONFIG_MAX_BYTES, error=PlanFileError, what="config")
        if is_script(text, path):
            fmt = "launch-script"
            readings = read_script(text, path)
        else:
            parse = parse_json if str(path).lower().endswith(".json") else parse_yaml
            data = parse(text, path, error=PlanFileError, what="config")
            if not isinstance(data, dict):
                return list(read_plan_file(path, gpu=ov.gpu, margin=ov.margin, model=ov.model))  # its own message
            fmt = detect_mapping(data, frozenset(PLAN_KEYS))
            if fmt == "vramplan":
                return list(read_plan_file(path, gpu=ov.gpu, margin=ov.margin, model=ov.model))
            readings = read_mapping(fmt, data, path, text, frozenset(PLAN_KEYS))
    except CannotCheckError as exc:
        return [PlanOutcome(file, "cannot-check", fmt, reason=exc.reason)]
    except ForeignConfigError as exc:
        return [PlanOutcome(file, "bad-file", fmt, reason=f"{file}: key {exc.key!r}: {exc.message}")]
    except VramplanError as exc:
        return [PlanOutcome(file, "bad-file", fmt, reason=str(exc))]
    out: list[PlanOutcome | PlanEntry] = []
    n = len(readings)
    for i, r in enumerate(readings, start=1):
        base = PlanOutcome(file, "cannot-check", r.format if fmt != "launch-script" else f"launch-script ({r.format})",
                           i, n, model_id=r.model, ignored=list(r.ignored), references=list(r.references))
        if r.cannot_check:
            base.reason = r.cannot_check
            out.append(base)
            continue
        opts = r.setup_options()
        missing = []
        for key, why in r.undecided.items():
            given = getattr(ov, key, None)
            if given is not None:
                opts[key] = given
            else:
                missing.append(why)
        sharded = opts.get("strategy") in ("fsdp", "fsdp1", "fsdp-grad-op", "zero1", "zero2", "zero3")
        if opts.get("gpus") is None:
            if ov.gpus is not None:
                opts["gpus"] = ov.gpus
            elif sharded:
                missing.append(f"the file shards with {opts['strategy']} but leaves the GPU count to the launcher; "
                               "pass --gpus N")
        model = r.model or ov.model
        if model is None:
            base.status = "bad-file"
            base.reason = f"{base.where}: key 'model': missing: name the model in the file or pass --model"
            out.append(base)
            continue
        if missing:
            base.reason = "; ".join(missing)
            out.append(base)
            continue
        kind = r.format
        sources = dict(KEY_SOURCES.get({"llamafactory": "llama-factory"}.get(kind, kind), {}))
        try:
            norm = normalize_plan_keys(opts, file, i, n, sources)
        except PlanFileError as exc:
            base.status, base.reason = "bad-file", str(exc)
            out.append(base)
            continue
        name = norm.pop("name", None)
        gpu = ov.gpu if ov.gpu is not None else norm.pop("gpu", None)
        norm.pop("gpu", None)
        margin = ov.margin if ov.margin is not None else norm.pop("margin", None)
        norm.pop("margin", None)
        if gpu is None:
            base.status, base.reason = "bad-file", f"{base.where}: key 'gpu': missing: training configs name no card; " \
                                                   "pass --gpu"
            out.append(base)
            continue
        entry = PlanEntry(file, i, n, base.format or kind, norm, model, gpu, margin or 0.0, name)
        out.append(PlanOutcome(file, "ok", base.format, i, n, model_id=model, ignored=list(r.ignored),
                               references=list(r.references), entry=entry))
    return out


def check_files(paths: Sequence[str | os.PathLike[str]], make_setup: Callable[[dict[str, Any]], Setup],
                overrides: CheckOverrides | None = None) -> list[PlanOutcome]:
    """Every plan of every file, each file read and each plan checked on its own: a bad or unreadable file, a
    stage vramplan cannot model or an unknown model is that plan's outcome, never an error for the others."""
    from ..profiles import resolve_gpu, resolve_model
    from ..setup import ignored_options

    ov = overrides or CheckOverrides()
    models: dict[tuple[str, bool], Any] = {}
    out: list[PlanOutcome] = []
    for path in paths:
        try:
            items = _read_file(str(path), ov)
        except VramplanError as exc:
            from ..io import short_path

            out.append(PlanOutcome(short_path(str(path)), "bad-file", reason=str(exc)))
            continue
        for item in items:
            if isinstance(item, PlanOutcome) and item.entry is None:
                out.append(item)
                continue
            if isinstance(item, PlanEntry):
                item = PlanOutcome(item.file, "ok", item.format, item.index, item.count, item.name,
                                   model_id=str(item.model), entry=item)
            e = item.entry
            assert e is not None
            item.name = e.name
            try:
                setup = make_setup(dict(e.options))
            except TargetError as exc:
                # another tool's targets that vramplan's PEFT mirror cannot apply: not the user's mistake
                foreign = e.format not in ("vramplan", "training-args")
                item.status = "cannot-check" if foreign else "bad-file"
                item.reason = f"LoRA targets: {exc}" if foreign else str(_plan_error(e, exc))
                out.append(item)
                continue
            except VramplanError as exc:
                item.status, item.reason = "bad-file", str(_plan_error(e, exc))
                out.append(item)
                continue
            item.warnings = ignored_options(e.options, setup)
            trust = bool(e.options.get("trust_remote_code"))
            key = (str(e.model), trust)
            try:
                if key not in models:
                    models[key] = resolve_model(str(e.model), trust_remote_code=trust)
            except UnknownModelError as exc:
                item.status, item.reason = "cannot-check", f"unknown model: {exc}"
                out.append(item)
                continue
            except VramplanError as exc:
                item.status, item.reason = "bad-file", str(_plan_error(e, exc, "model"))
                out.append(item)
                continue
            try:
                gpu = resolve_gpu(str(e.gpu))
            except VramplanError as exc:
                item.status, item.reason = "bad-file", str(_plan_error(e, exc, "gpu"))
                out.append(item)
                continue
            try:
                est = estimate(models[key].spec, setup, gpu, e.margin)
            except VramplanError as exc:
                item.status, item.reason = "bad-file", str(_plan_error(e, exc))
                out.append(item)
                continue
            item.model = models[key].name
            item.estimate = est
            item.warnings += [w for w in est.warnings if w not in item.warnings]   # the stack's unmodelled
            assert est.fit is not None
            item.status = "ok" if est.fit.fits else "fail"
            out.append(item)
    return out


def summary(outcomes: Sequence[PlanOutcome]) -> dict[str, int]:
    """Counts by outcome: ``fits``, ``does_not_fit``, ``cannot_check``, ``bad_file``."""
    names = {"ok": "fits", "fail": "does_not_fit", "cannot-check": "cannot_check", "bad-file": "bad_file"}
    counts = dict.fromkeys(names.values(), 0)
    for o in outcomes:
        counts[names[o.status]] += 1
    return counts


def exit_code(outcomes: Sequence[PlanOutcome]) -> int:
    """2 if any file is bad or cannot be checked, else 1 if any plan does not fit, else 0."""
    if any(o.status in ("cannot-check", "bad-file") for o in outcomes):
        return 2
    return 1 if any(o.status == "fail" for o in outcomes) else 0
