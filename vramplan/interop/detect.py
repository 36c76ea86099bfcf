"""Which tool a training config belongs to, and reading it: one file -> its format and its plans.

Detection runs from the most specific marker to the least: a launch script by its commands; a recorded TRL run;
DeepSpeed and accelerate configs (referenced files, not training configs); LLaMA-Factory v1 (``model:`` plus
``*_config`` plugin keys) before anything that looks at ``output_dir``; torchtune (``model._component_``);
axolotl (``base_model``); ms-swift (``model`` plus its own keys); TRL (``model_name_or_path`` plus TRL-only keys);
LLaMA-Factory flat (``model_name_or_path``); transformers TrainingArguments; else vramplan's own plan file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CannotCheckError
from .hf import TRAINING_ARGS_KEYS
from .launch import LAUNCHERS, read_script
from .reading import Reading, from_accelerate, from_deepspeed

#: formats :func:`detect_mapping` names; ``vramplan`` and ``training-args`` are read by vramplan's plan-file reader
FORMATS = ("vramplan", "training-args", "llamafactory", "llamafactory-v1", "axolotl", "msswift", "torchtune",
           "trl-config", "trl-cli-config", "trl-args-json", "deepspeed-json", "accelerate-config", "launch-script", "peft-adapter")


def is_script(text: str, path: str | os.PathLike[str] | None = None) -> bool:
    """A shell script: a ``.sh`` file, a ``#!`` line, or a first command that is a known launcher."""
    if path is not None and str(path).lower().endswith((".sh", ".bash")):
        return True
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#!"):
            return True
        if s.startswith("#"):
            continue
        words = s.split()
        while words and "=" in words[0] and not words[0].startswith(("-", "'", '"')) and ":" not in words[0]:
            words.pop(0)
        return bool(words) and os.path.basename(words[0]) in LAUNCHERS and not s.endswith(":")
    return False


def detect_mapping(d: Mapping[str, Any], plan_keys: set[str] | frozenset[str] = frozenset()) -> str:
    """The format of a parsed config mapping (one of :data:`FORMATS`, never ``launch-script``)."""
    from .llama_factory import is_v1
    from .msswift import is_msswift
    from .torchtune import is_torchtune
    from .trl import is_trl, is_trl_args_json

    keys = {str(k).replace("-", "_") for k in d}
    if "plans" in keys:
        return "vramplan"
    if "peft_type" in keys and keys & {"r", "target_modules", "lora_alpha"}:
        return "peft-adapter"                     # a PEFT adapter_config.json (LoraConfig.save_pretrained)
    if is_trl_args_json(d):
        return "trl-args-json"
    if "zero_optimization" in keys:
        return "deepspeed-json"
    if "distributed_type" in keys and ("compute_environment" in keys or "num_processes" in keys):
        return "accelerate-config"
    if is_v1(d):
        return "llamafactory-v1"
    if is_torchtune(d):
        return "torchtune"
    if "base_model" in keys:
        return "axolotl"
    if is_msswift(d):
        return "msswift"
    if is_trl(d):
        return "trl-config" if "max_seq_length" in keys else "trl-cli-config"
    if "model_name_or_path" in keys:
        return "llamafactory"
    if keys & set(TRAINING_ARGS_KEYS) - set(plan_keys):
        return "training-args"
    return "vramplan"


def read_mapping(fmt: str, d: Mapping[str, Any], file: str | os.PathLike[str] | None = None,
                 text: str = "", plan_keys: set[str] | frozenset[str] = frozenset()) -> list[Reading]:
    """The plans of a config of format ``fmt`` (from :func:`detect_mapping`; not ``vramplan``/``training-args``).

    Raises:
        CannotCheckError: the file cannot be checked on its own (a DeepSpeed or accelerate config), or its stage
            or method is not modelled.
        ForeignConfigError: a value that cannot be read.
    """
    from .axolotl import read_axolotl
    from .llama_factory import read_llama_factory, read_llama_factory_v1
    from .msswift import read_msswift
    from .torchtune import read_torchtune
    from .trl import read_trl, read_trl_args_json

    if fmt == "deepspeed-json":
        r = from_deepspeed(d)
        raise CannotCheckError(f"a DeepSpeed config ({r['strategy']}, offload {r['offload']}), not a training config: "
                               "check the config that names it (deepspeed: this file)")
    if fmt == "accelerate-config":
        r = from_accelerate(d, file)
        raise CannotCheckError(f"an accelerate config ({r.get('gpus')} processes, {r.get('strategy') or 'single'}), "
                               "not a training config: check the launch script that names it")
    if fmt == "llamafactory-v1":
        return [read_llama_factory_v1(d, file)]
    if fmt == "llamafactory":
        return [read_llama_factory(d, file)]
    if fmt == "axolotl":
        return [read_axolotl(d, file)]
    if fmt == "msswift":
        return [read_msswift(d, file, fmt="msswift")]
    if fmt == "torchtune":
        return [read_torchtune(d, file, text)]
    if fmt in ("trl-config", "trl-cli-config"):
        return [read_trl(d, file, fmt=fmt)]
    if fmt == "trl-args-json":
        return [read_trl_args_json(d, file)]
    if fmt == "peft-adapter":
        from .hf import read_adapter_config

        return [read_adapter_config(d, file)]
    if fmt == "training-args":
        from .hf import read_training_args

        return [read_training_args(d, file, plan_keys)]
    raise ValueError(f"format {fmt!r} is not a foreign config format")


def plan_options(fmt: str, d: Mapping[str, Any]) -> dict[str, Any]:
    """Plan keys of a config of format ``fmt`` (its first plan): the model and the options it decides, for
    :func:`vramplan.planner.read_plan_file`. Values the file leaves open and ignored keys are dropped here;
    ``vramplan check`` reports them (:func:`read_mapping`)."""
    r = read_mapping(fmt, d)[0]
    if r.cannot_check:
        raise CannotCheckError(r.cannot_check)
    return {"model": r.model, **r.setup_options()}


def read_config_text(text: str, path: str | os.PathLike[str], plan_keys: set[str] | frozenset[str] = frozenset()
                     ) -> tuple[str, list[Reading] | None, Any]:
    """``(format, readings, data)`` of a config file's text: readings ``None`` for vramplan's own plan files and
    TrainingArguments JSON (read by :func:`vramplan.planner.read_plan_file`).

    Raises:
        PlanFileError: not YAML/JSON, not a mapping.
        CannotCheckError, ForeignConfigError: as :func:`read_mapping`.
    """
    from ..errors import PlanFileError
    from ..io import parse_json, parse_yaml, short_path

    if is_script(text, path):
        return "launch-script", read_script(text, path), None
    p = Path(path)
    parse = parse_json if p.suffix.lower() == ".json" else parse_yaml
    data = parse(text, p, error=PlanFileError, what="config")
    if not isinstance(data, Mapping):
        raise PlanFileError(f"{short_path(path)}: expected a mapping of plan keys (model, method, rank, batch, seq, "
                            f"gpu, ...) or plans: [...], got "
                            f"{type(data).__name__ if data is not None else 'an empty file'}")
    fmt = detect_mapping(data, plan_keys)
    if fmt in ("vramplan", "training-args"):
        return fmt, None, data
    return fmt, read_mapping(fmt, data, path, text), data
