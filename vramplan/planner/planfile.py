"""Plan files: vramplan's own keys (the options, :data:`PLAN_OPTIONS`) or another tool's training config
(read by :mod:`vramplan.interop`), validated into :class:`PlanEntry` objects naming file, plan and key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ForeignConfigError, PlanFileError, close_matches
from ..interop import from_axolotl, from_llama_factory
from ..interop.axolotl import KEY_SOURCES as axolotl_keys
from ..interop.detect import detect_mapping, plan_options
from ..interop.hf import ADAPTER_KEY_SOURCES as adapter_keys
from ..interop.hf import KEY_SOURCES as training_args_keys
from ..interop.hf import from_training_args_json
from ..interop.llama_factory import KEY_SOURCES as llama_factory_keys
from ..io import brief, short_path
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
    return PlanFileError(f"{where}: key {brief(key)}: {msg}" if key else f"{where}: {msg}")


def _normalize_keys(d: Mapping[Any, Any], file: str, index: int, count: int,
                    sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Plan keys read by their options. ``sources`` maps a plan key to the key of the user's own file it was
    translated from (another tool's config), so that an error names the key the user wrote."""
    out: dict[str, Any] = {}
    for raw, value in d.items():
        if not isinstance(raw, str):
            raise _err(file, index, count, brief(raw), "keys must be strings")
        key = raw.strip().replace("-", "_").lower()
        if key not in PLAN_KEYS:
            raise _err(file, index, count, raw, f"unknown key{close_matches(key, list(PLAN_KEYS))}; plan keys are "
                                                "the long options of `vramplan plan` (rank, batch, seq, gpu, ...)")
        try:
            out[key] = read_value(PLAN_OPTIONS[key], value) if value is not None else None
        except ValueError as exc:
            src = (sources or {}).get(key)
            raise _err(file, index, count, src or raw, f"{str(exc)} (read as {raw})" if src else str(exc)) \
                from None
    return out


def normalize_plan_keys(d: Mapping[Any, Any], file: str, index: int, count: int,
                        sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Plan keys read and validated by their options (``check`` on another tool's config): errors name the file,
    the plan and, through ``sources``, the key the user wrote."""
    return _normalize_keys(d, file, index, count, sources)


# ---- foreign formats -------------------------------------------------------------------------------
def _from_training_args(d: Mapping[str, Any]) -> dict[str, Any]:
    """transformers ``TrainingArguments`` JSON plus vramplan keys (``model``, ``method``, ``rank``, ``seq``...):
    the TrainingArguments fields that decide memory (:func:`vramplan.interop.hf.from_training_args_json`),
    overridden by plan keys given alongside; ``optim`` is TrainingArguments' own."""
    o = from_training_args_json(d)
    o.update({k: v for k, v in d.items() if isinstance(k, str) and k.replace("-", "_") in PLAN_KEYS
              and k != "optim"})
    return o


#: plan-file formats other than vramplan's own -> plan key -> the key of that format it is read from
KEY_SOURCES: dict[str, dict[str, str]] = {"llama-factory": llama_factory_keys, "axolotl": axolotl_keys,
                                          "peft-adapter": adapter_keys,
                                          "training-args": training_args_keys}
#: plan-file formats other than vramplan's own -> their reader
FOREIGN_READERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "llama-factory": from_llama_factory, "axolotl": from_axolotl, "training-args": _from_training_args}


#: the other formats vramplan.interop reads (LLaMA-Factory v1 before TrainingArguments: it has output_dir)
for _fmt in ("llamafactory-v1", "msswift", "torchtune", "trl-config", "trl-cli-config", "trl-args-json",
             "deepspeed-json", "accelerate-config"):
    FOREIGN_READERS[_fmt] = partial(plan_options, _fmt)


def detect_format(d: Mapping[str, Any]) -> str:
    """``vramplan`` / ``training-args`` / ``llama-factory`` / ``llamafactory-v1`` / ``axolotl`` / ``msswift`` /
    ``torchtune`` / ``trl-*``..., from a plan mapping's keys (:func:`vramplan.interop.detect.detect_mapping`)."""
    fmt = detect_mapping(d, frozenset(PLAN_KEYS))
    return "llama-factory" if fmt == "llamafactory" else fmt


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
    from ..io import CONFIG_MAX_BYTES, parse_json, parse_yaml, read_text

    p = Path(path)
    file = short_path(path)
    text = read_text(p, CONFIG_MAX_BYTES, error=PlanFileError, what="plan file")
    parse = parse_json if p.suffix.lower() == ".json" else parse_yaml
    data = parse(text, p, error=PlanFileError, what="plan file")
    if not isinstance(data, dict):
        raise PlanFileError(f"{file}: expected a mapping of plan keys (model, method, rank, batch, seq, gpu, ...) "
                            f"or plans: [...], got {type(data).__name__ if data is not None else 'an empty file'}")
    fmt = detect_format(data)
    raws: list[tuple[dict[str, Any], str]]
    if "plans" in data:
        plans = data["plans"]
        defaults = {k: v for k, v in data.items() if k != "plans"}
        if not isinstance(plans, list) or not plans:
            raise PlanFileError(f"{file}: key 'plans' must be a non-empty list of mappings, got {brief(plans)}")
        raws = []
        for i, item in enumerate(plans):
            if not isinstance(item, dict):
                raise _err(file, i + 1, len(plans), None, f"expected a mapping of plan keys, got {brief(item)}")
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
        sources = {k: v for k, v in KEY_SOURCES.get(kind, {}).items() if v in raw and k not in raw}
        opts = _normalize_keys(opts, file, i, count, sources)
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
