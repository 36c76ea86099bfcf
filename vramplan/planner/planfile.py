"""Plan files: vramplan's own keys (the options, :data:`PLAN_OPTIONS`) or another tool's training config
(read by :mod:`vramplan.interop`), validated into :class:`PlanEntry` objects naming file, plan and key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ForeignConfigError, PlanFileError, close_matches
from ..interop import TRAINING_ARGS_KEYS, from_axolotl, from_llama_factory
from ..interop.hf import from_training_args_json
from ..io import yaml_problem
from ..options import Option, read_value
from ..setup import RUN_OPTIONS, SETUP_OPTIONS

#: plan-file keys (the long options with underscores) -> their options: a plan's name and model, where it
#: runs (gpu, margin, trust_remote_code) and every setup option
PLAN_OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("name", "str", "A name for the plan, shown in check's output."),
    Option("model", "str", "A bundled name, Hub id or config path."),
    *RUN_OPTIONS, *SETUP_OPTIONS)}
#: plan-file keys -> the kind of value they take
PLAN_KEYS: dict[str, str] = {k: o.kind for k, o in PLAN_OPTIONS.items()}


@dataclass(frozen=True)
class PlanEntry:
    """One plan of a plan file, validated: where it came from, its options, GPU and margin."""

    file: str
    index: int          # 1-based
    count: int
    format: str         # vramplan / llama-factory / axolotl / training-args
    options: dict[str, Any]
    model: str | None
    gpu: str | None
    margin: float
    name: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}: plan {self.index} of {self.count}"


def _err(file: str, index: int, count: int, key: str | None, msg: str) -> PlanFileError:
    where = f"{file}: plan {index} of {count}"
    return PlanFileError(f"{where}: key {key!r}: {msg}" if key else f"{where}: {msg}")


def _normalize_keys(d: Mapping[Any, Any], file: str, index: int, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw, value in d.items():
        if not isinstance(raw, str):
            raise _err(file, index, count, str(raw), "keys must be strings")
        key = raw.strip().replace("-", "_").lower()
        if key not in PLAN_KEYS:
            raise _err(file, index, count, raw, f"unknown key{close_matches(key, list(PLAN_KEYS))}; plan keys are "
                                                "the long options of `vramplan plan` (rank, batch, seq, gpu, ...)")
        try:
            out[key] = read_value(PLAN_OPTIONS[key], value) if value is not None else None
        except ValueError as exc:
            raise _err(file, index, count, raw, str(exc)) from None
    return out


# ---- foreign formats -------------------------------------------------------------------------------
def _from_training_args(d: Mapping[str, Any]) -> dict[str, Any]:
    """transformers ``TrainingArguments`` JSON plus vramplan keys (``model``, ``method``, ``rank``, ``seq``...):
    the TrainingArguments fields that decide memory (:func:`vramplan.interop.hf.from_training_args_json`),
    overridden by plan keys given alongside; ``optim`` is TrainingArguments' own."""
    o = from_training_args_json(d)
    o.update({k: v for k, v in d.items() if isinstance(k, str) and k.replace("-", "_") in PLAN_KEYS
              and k != "optim"})
    return o


#: plan-file formats other than vramplan's own -> their reader
FOREIGN_READERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "llama-factory": from_llama_factory, "axolotl": from_axolotl, "training-args": _from_training_args}


def detect_format(d: Mapping[str, Any]) -> str:
    """``vramplan`` / ``axolotl`` / ``llama-factory`` / ``training-args``, from a plan mapping's keys."""
    keys = {str(k).replace("-", "_") for k in d}
    if "plans" in keys:
        return "vramplan"
    if "base_model" in keys:
        return "axolotl"
    if "model_name_or_path" in keys:
        return "llama-factory"
    if keys & set(TRAINING_ARGS_KEYS) - set(PLAN_KEYS):
        return "training-args"
    return "vramplan"


def read_plan_file(path: str | Path, gpu: str | None = None, margin: float | None = None,
                   model: str | None = None) -> list[PlanEntry]:
    """Every plan of a plan file, validated (options are not yet turned into setups).

    A vramplan plan file is one mapping of plan keys, or ``plans:`` (a list of mappings) with the other
    top-level keys as defaults for each. LLaMA-Factory, axolotl and TrainingArguments files are detected by
    their keys. ``gpu``/``margin`` (from the command line) override the file's; ``model`` is used for plans
    that name none (a TrainingArguments JSON).

    Raises:
        PlanFileError: naming the file, the plan (1-based) and the key.
    """
    import json

    import yaml

    p = Path(path)
    file = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanFileError(f"{file}: cannot read the plan file: {exc.strerror or exc}") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise PlanFileError(f"{file}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except yaml.YAMLError as exc:
        raise PlanFileError(f"{file}: not YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise PlanFileError(f"{file}: expected a mapping of plan keys (model, method, rank, batch, seq, gpu, ...) "
                            f"or plans: [...], got {type(data).__name__ if data is not None else 'an empty file'}")
    fmt = detect_format(data)
    raws: list[tuple[dict[str, Any], str]]
    if "plans" in data:
        plans = data["plans"]
        defaults = {k: v for k, v in data.items() if k != "plans"}
        if not isinstance(plans, list) or not plans:
            raise PlanFileError(f"{file}: key 'plans' must be a non-empty list of mappings, got {plans!r}")
        raws = []
        for i, item in enumerate(plans):
            if not isinstance(item, dict):
                raise _err(file, i + 1, len(plans), None, f"expected a mapping of plan keys, got {item!r}")
            merged = {**defaults, **item}
            raws.append((merged, detect_format(merged)))
    else:
        raws = [(data, fmt)]
    count = len(raws)
    out = []
    for i, (raw, kind) in enumerate(raws, start=1):
        reader = FOREIGN_READERS.get(kind)
        try:
            opts = reader(raw) if reader is not None else dict(raw)
        except ForeignConfigError as exc:
            raise _err(file, i, count, exc.key, exc.message) from None
        opts = _normalize_keys(opts, file, i, count)
        name = opts.pop("name", None)
        m = opts.pop("model", None) or model
        g = gpu if gpu is not None else opts.pop("gpu", None)
        opts.pop("gpu", None)
        mg = margin if margin is not None else opts.pop("margin", None)
        opts.pop("margin", None)
        if m is None:
            raise _err(file, i, count, "model", "missing: name the model in the file or pass --model")
        if g is None:
            raise _err(file, i, count, "gpu", "missing: name a card in the file (gpu: rtx-4090) or pass --gpu")
        out.append(PlanEntry(file, i, count, kind, opts, m, g, mg or 0.0, name))
    return out
