"""peft ``LoraConfig``, transformers ``BitsAndBytesConfig`` and ``TrainingArguments`` -> setup options.

Objects are read by attribute (duck typing): checking a real training script's objects costs no torch import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ForeignConfigError, SetupError, close_matches
from ..io import brief
from ..lora import LoraConfig

#: HF Trainer ``optim`` names -> vramplan optimizers (transformers/training_args.py OptimizerNames)
TRAINER_OPTIMS = {
    "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "adamw_apex_fused": "adamw",
    "adamw_bnb_8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit", "paged_adamw_32bit": "paged-adamw",
    "paged_adamw_8bit": "paged-adamw-8bit", "adafactor": "adafactor", "sgd": "sgd", "lion_32bit": "lion",
    "paged_lion_32bit": "lion",
}


def lora_from_peft(cfg: Any) -> LoraConfig:
    """A :class:`LoraConfig` from a ``peft.LoraConfig`` (or anything with its attributes)."""
    tm = getattr(cfg, "target_modules", None)
    targets: tuple[str, ...] | None = None
    regex = None
    if isinstance(tm, str):
        if tm.lower() == "all-linear":
            targets = ("all-linear",)
        else:
            regex = tm
    elif tm is not None:
        targets = tuple(sorted(tm))
    ltt = getattr(cfg, "layers_to_transform", None)
    if isinstance(ltt, int):
        ltt = [ltt]
    return LoraConfig(
        r=int(getattr(cfg, "r", 8)), alpha=getattr(cfg, "lora_alpha", 8), targets=targets, target_regex=regex,
        modules_to_save=tuple(getattr(cfg, "modules_to_save", None) or ()),
        layers_to_transform=tuple(ltt) if ltt else None,
        layers_pattern=getattr(cfg, "layers_pattern", None) if isinstance(getattr(cfg, "layers_pattern", None), str)
        else None,
        dora=bool(getattr(cfg, "use_dora", False)), dropout=float(getattr(cfg, "lora_dropout", 0.0) or 0.0))


def _dtype_name(d: Any) -> str:
    return str(d).replace("torch.", "") if d is not None else ""


def options_from_bnb(cfg: Any) -> dict[str, Any]:
    """Setup options from a transformers ``BitsAndBytesConfig``."""
    if getattr(cfg, "load_in_4bit", False):
        out: dict[str, Any] = {"quant": str(getattr(cfg, "bnb_4bit_quant_type", "fp4")),
                               "double_quant": bool(getattr(cfg, "bnb_4bit_use_double_quant", False))}
        cd = _dtype_name(getattr(cfg, "bnb_4bit_compute_dtype", None))
        if cd in ("float16", "half"):
            out["_compute"] = "fp16"
        elif cd == "bfloat16":
            out["_compute"] = "bf16"
        return out
    if getattr(cfg, "load_in_8bit", False):
        return {"quant": "int8"}
    return {}


def options_from_training_args(args: Any) -> dict[str, Any]:
    """Setup options from transformers ``TrainingArguments`` (batch, precision, checkpointing, optimizer)."""
    out: dict[str, Any] = {}
    if getattr(args, "per_device_train_batch_size", None):
        out["batch"] = int(args.per_device_train_batch_size)
    if getattr(args, "bf16", False):
        out["precision"] = "bf16-mixed"
    elif getattr(args, "fp16", False):
        out["precision"] = "fp16-mixed"
    if getattr(args, "gradient_checkpointing", None) is not None:
        out["grad_ckpt"] = bool(args.gradient_checkpointing)
    optim = getattr(args, "optim", None)
    if optim is not None:
        name = str(getattr(optim, "value", optim))
        if name not in TRAINER_OPTIMS:
            raise SetupError(f"TrainingArguments.optim {brief(name)} is not modelled; use one of "
                             f"{', '.join(sorted(TRAINER_OPTIMS))}")
        out["optim"] = TRAINER_OPTIMS[name]
    return out


def optim_from_trainer(name: Any, key: str = "optim") -> str:
    """A vramplan optimizer from an HF Trainer ``optim`` name (or an ``OptimizerNames`` member).

    Raises:
        ForeignConfigError: a name vramplan does not model, naming ``key``.
    """
    n = str(getattr(name, "value", name))
    if n not in TRAINER_OPTIMS:
        raise ForeignConfigError(key, f"optimizer {brief(n)} is not modelled{close_matches(n, list(TRAINER_OPTIMS))}; "
                                      f"use one of {', '.join(sorted(TRAINER_OPTIMS))}")
    return TRAINER_OPTIMS[n]


#: TrainingArguments / TRL SFTConfig keys that mark a JSON as training arguments
TRAINING_ARGS_KEYS = ("per_device_train_batch_size", "output_dir", "gradient_accumulation_steps", "learning_rate",
                      "num_train_epochs", "optim", "bf16", "fp16", "gradient_checkpointing")


def from_training_args_json(d: Mapping[str, Any]) -> dict[str, Any]:
    """Options from a ``TrainingArguments`` JSON (``args.to_json_string()``) or a TRL ``SFTConfig``: the
    fields that decide memory, read through :func:`options_from_training_args`, and TRL's
    ``max_seq_length``/``max_length`` as ``seq``; every other field is ignored.

    Raises:
        ForeignConfigError: an optimizer vramplan does not model (key ``optim``).
    """
    from types import SimpleNamespace

    from .util import as_bool, as_int

    values: dict[str, Any] = {k: d.get(k) for k in ("per_device_train_batch_size", "bf16", "fp16",
                                                    "gradient_checkpointing", "optim")}
    if values["per_device_train_batch_size"] is not None:
        values["per_device_train_batch_size"] = as_int(values["per_device_train_batch_size"],
                                                       "per_device_train_batch_size")
    for key in ("bf16", "fp16", "gradient_checkpointing"):       # "false" must not read as true
        if values[key] is not None:
            values[key] = as_bool(values[key], key)
    if values["optim"] is not None and not isinstance(values["optim"], str):
        raise ForeignConfigError("optim", f"must be an optimizer name such as adamw_torch, got {brief(values['optim'])}")
    try:
        o = options_from_training_args(SimpleNamespace(**values))
    except SetupError as exc:
        raise ForeignConfigError("optim", str(exc)) from None
    key = "max_seq_length" if d.get("max_seq_length") is not None else "max_length"    # TRL SFTConfig
    if d.get(key) is not None:
        o["seq"] = as_int(d[key], key)
    return o


def read_training_args(d: Mapping[str, Any], file: Any = None, plan_keys: Any = frozenset()):
    """A ``TrainingArguments``/``SFTConfig`` JSON as a :class:`~vramplan.interop.reading.Reading`: the fields of
    :func:`from_training_args_json`, plan keys written beside them (``model``, ``method``, ``rank``, ``seq``,
    ``gpu``...) on top, and an optimizer name vramplan does not model named in ``ignored`` (checked as AdamW).

    Raises:
        ForeignConfigError: a value of the wrong type, naming its key.
    """
    from .reading import Reading

    optim = d.get("optim")
    unknown = isinstance(optim, str) and str(getattr(optim, "value", optim)) not in TRAINER_OPTIMS
    o = from_training_args_json({k: v for k, v in d.items() if not (unknown and k == "optim")})
    plan = {str(k).replace("-", "_"): v for k, v in d.items()
            if isinstance(k, str) and k.replace("-", "_") in plan_keys and k != "optim"}
    model = plan.pop("model", None)
    if model is not None and not isinstance(model, str):
        raise ForeignConfigError("model", f"must name a model, got {brief(model)}")
    o.update(plan)
    r = Reading("training-args", model, o)
    if unknown:
        r.options["optim"] = None
        r.ignored.append(f"optim {optim} (optimizer not modelled: checked as adamw)")
    return r


#: plan keys this reader sets -> the TrainingArguments keys they come from (errors name the user's key)
KEY_SOURCES = {"batch": "per_device_train_batch_size", "seq": "max_seq_length", "precision": "bf16",
               "grad_ckpt": "gradient_checkpointing", "optim": "optim"}
