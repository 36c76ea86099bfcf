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
    "adamw_torch": "adamw-foreach", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "adamw_apex_fused": "adamw",
    "adamw_bnb_8bit": "adamw-8bit", "adamw_8bit": "adamw-8bit", "paged_adamw_32bit": "paged-adamw",
    "paged_adamw_8bit": "paged-adamw-8bit", "adafactor": "adafactor", "sgd": "sgd", "lion_32bit": "lion",
    "paged_lion_32bit": "lion",
}


class UnmodelledFieldWarning(UserWarning):
    """A field of another tool's config that changes memory and that vramplan does not model (the estimate goes on
    without it), or a field vramplan does not know."""


#: peft 0.21.2 ``LoraConfig`` fields (``peft/tuners/lora/config.py``; ``PeftConfig`` in ``peft/config.py``) read
#: into :class:`~vramplan.lora.LoraConfig` options: PEFT field -> option name
PEFT_LORA_READ: dict[str, str] = {
    "r": "rank", "lora_alpha": "alpha", "target_modules": "targets", "exclude_modules": "exclude_modules",
    "lora_dropout": "lora_dropout", "bias": "bias", "modules_to_save": "modules_to_save",
    "layers_to_transform": "layers_to_transform", "layers_pattern": "layers_pattern",
    "rank_pattern": "rank_pattern", "alpha_pattern": "alpha_pattern", "use_dora": "dora",
    "trainable_token_indices": "trainable_tokens", "lora_bias": "lora_bias", "target_parameters": "target_parameters"}

#: peft 0.21.2 ``LoraConfig`` fields that do not change training memory, and why
PEFT_LORA_NEUTRAL: dict[str, str] = {
    "task_type": "the model head PEFT wraps; the model is loaded for causal LM here",
    "peft_type": "checked to be LORA", "auto_mapping": "bookkeeping", "peft_version": "bookkeeping",
    "base_model_name_or_path": "names the model (read as model where a reader takes it)",
    "revision": "which checkpoint revision", "inference_mode": "read: True trains nothing (see below)",
    "use_rslora": "scaling lora_alpha/sqrt(r) instead of lora_alpha/r: no tensor changes",
    "fan_in_fan_out": "how a Conv1D weight is laid out: same shapes",
    "megatron_core": "used only with megatron_config", "runtime_config": "ephemeral GPU offload at load time only",
    "qalora_group_size": "used only with use_qalora", "modules_to_tie": "derived by ensure_weight_tying",
    "target_modules_to_tie": "derived by ensure_weight_tying"}

#: peft 0.21.2 ``LoraConfig`` fields that change memory and are not modelled: field -> (its default, what)
PEFT_LORA_UNMODELLED: dict[str, tuple[Any, str]] = {
    "megatron_config": (None, "Megatron tensor-parallel LoRA layers"),
    "loftq_config": ({}, "LoftQ quantizes the base weights itself"),
    "eva_config": (None, "EVA initialization runs a data pass (SVD of layer inputs) before training"),
    "corda_config": (None, "CorDA initialization runs a data pass before training"),
    "lora_ga_config": (None, "LoRA-GA initialization runs gradient passes before training"),
    "velora_config": (None, "VeLoRA stores compressed activations instead of the adapters' inputs"),
    "alora_invocation_tokens": (None, "aLoRA applies the adapters only after the invocation tokens"),
    "use_qalora": (False, "QA-LoRA pools lora_A's inputs (smaller lora_A)"),
    "monteclora_config": (None, "MonteCLoRA adds variational sampling parameters"),
    "layer_replication": (None, "layer replication adds layers (and their adapters and activations)"),
    "use_bdlora": (None, "BD-LoRA block-diagonal adapters have fewer parameters"),
    "arrow_config": (None, "Arrow routing over several adapters"),
    "kasa_config": (None, "KaSA adds a trainable singular-value diagonal per adapter"),
    "ensure_weight_tying": (False, "ties the adapters of tied layers (embedding and output head share them)"),
}

#: ``init_lora_weights`` values (peft 0.21.2) that leave the training step as plain LoRA (PiSSA and OLoRA rewrite
#: the base weights in place, same shapes); the others (eva, corda, lora_ga: a data pass before training; mica:
#: lora_B frozen; loftq: quantizes the base) warn
_NEUTRAL_INITS = (True, False, "gaussian", "orthogonal", "olora", "pissa")


def _neutral_init(init: Any) -> bool:
    return init in _NEUTRAL_INITS or (isinstance(init, str) and init.lower().startswith("pissa_niter_"))


def _fields_of(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, Mapping):
        return {str(k): v for k, v in cfg.items()}
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_")} if hasattr(cfg, "__dict__") else {}


def peft_lora_options(cfg: Any, where: str = "LoraConfig") -> tuple[dict[str, Any], list[str]]:
    """The LoRA options of a ``peft.LoraConfig`` (an object read by attribute, or its ``adapter_config.json``
    mapping), as plan-file values by option name, and one line per field that changes memory but is not
    modelled, or that peft 0.21.2 does not have (never dropped silently).

    Raises:
        ForeignConfigError: a value of the wrong type, naming its field.
    """
    f = _fields_of(cfg)
    get = f.get if f else (lambda k, d=None: getattr(cfg, k, d))
    o: dict[str, Any] = {}
    if get("r") is not None:
        o["rank"] = get("r")
    if get("lora_alpha") is not None:
        o["alpha"] = get("lora_alpha")
    tm = get("target_modules")
    if isinstance(tm, str):
        o["targets" if tm.lower() == "all-linear" else "target_regex"] = ["all-linear"] if tm.lower() == "all-linear" \
            else tm
    elif tm is not None:
        o["targets"] = sorted(tm) if isinstance(tm, (set, frozenset)) else list(tm)
    ex = get("exclude_modules")
    if isinstance(ex, str):
        o["exclude_regex"] = ex
    elif ex:
        o["exclude_modules"] = sorted(ex) if isinstance(ex, (set, frozenset)) else list(ex)
    ltt = get("layers_to_transform")
    if ltt is not None:
        o["layers_to_transform"] = [ltt] if isinstance(ltt, int) and not isinstance(ltt, bool) else ltt
    for peft_name in ("lora_dropout", "bias", "modules_to_save", "layers_pattern", "rank_pattern", "alpha_pattern",
                      "use_dora", "trainable_token_indices", "lora_bias", "target_parameters"):
        v = get(peft_name)
        if v is not None and v != {} and v != []:
            o[PEFT_LORA_READ[peft_name]] = v
    notes: list[str] = []
    if str(getattr(get("peft_type"), "value", get("peft_type")) or "LORA").upper() != "LORA":
        notes.append(f"{where}.peft_type {get('peft_type')} is not LORA: read as LoRA")
    if get("inference_mode") is True:
        notes.append(f"{where}.inference_mode=True: PEFT trains nothing (the adapters are frozen); checked as "
                     "training them")
    init = get("init_lora_weights", True)
    if not _neutral_init(init):
        what = {"mica": "MiCA freezes lora_B (fewer trainable parameters than counted)",
                "loftq": "LoftQ quantizes the base weights itself"}.get(str(init).lower(),
                                                                      "its initialization pass (SVD or data) is not "
                                                                      "modelled; the training step is plain LoRA")
        notes.append(f"{where}.init_lora_weights={init!r}: {what}")
    for name, (default, what) in PEFT_LORA_UNMODELLED.items():
        v = get(name, default)
        if v is not None and v != default and v != {} and v is not False:
            notes.append(f"{where}.{name}: {what} -- not modelled")
    known = set(PEFT_LORA_READ) | set(PEFT_LORA_NEUTRAL) | set(PEFT_LORA_UNMODELLED) | {"init_lora_weights"}
    for name in sorted(set(f) - known):
        notes.append(f"{where}.{name}: not a peft 0.21.2 LoraConfig field -- not modelled")
    return o, notes


def lora_from_peft(cfg: Any) -> LoraConfig:
    """A :class:`LoraConfig` from a ``peft.LoraConfig`` (or anything with its attributes, or its
    ``adapter_config.json`` mapping). Each field that changes memory but is not modelled is an
    :class:`UnmodelledFieldWarning` (:func:`peft_lora_options` returns them as lines)."""
    import warnings

    from ..options import options_of

    options, notes = peft_lora_options(cfg)
    for note in notes:
        warnings.warn(note, UnmodelledFieldWarning, stacklevel=2)
    fields = {o.name: o.field for o in options_of(LoraConfig)}
    kw = {fields[k]: v for k, v in options.items()}
    if isinstance(kw.get("targets"), list):
        kw["targets"] = tuple(kw["targets"])
    return LoraConfig(**kw)


#: plan keys :func:`read_adapter_config` sets -> the adapter_config.json keys they come from (errors name the
#: user's key)
ADAPTER_KEY_SOURCES: dict[str, str] = {**{v: k for k, v in PEFT_LORA_READ.items()},
                                       "target_regex": "target_modules", "exclude_regex": "exclude_modules",
                                       "model": "base_model_name_or_path"}


def read_adapter_config(d: Mapping[str, Any], file: Any = None):
    """A PEFT ``adapter_config.json`` (``LoraConfig.save_pretrained``) as a
    :class:`~vramplan.interop.reading.Reading`: ``method lora``, the LoRA options, the model from
    ``base_model_name_or_path``, and the fields not modelled in ``ignored``.

    Raises:
        CannotCheckError: an adapter type other than LoRA (``peft_type``).
    """
    from ..errors import CannotCheckError
    from .reading import Reading

    peft_type = str(d.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        raise CannotCheckError(f"peft_type {brief(d.get('peft_type'))}: only LoRA adapters are modelled")
    options, notes = peft_lora_options(d, "adapter_config")
    model = d.get("base_model_name_or_path")
    if model is not None and not isinstance(model, str):
        raise ForeignConfigError("base_model_name_or_path", f"must name a model, got {brief(model)}")
    # an adapter's config names no data: the batch and the sequence length are the run's (check's --batch/--seq)
    return Reading("peft-adapter", model, {"method": "lora", **options, "batch": None, "seq": None}, ignored=notes,
                   undecided={"batch": "adapter_config.json names no batch size; pass --batch",
                              "seq": "adapter_config.json names no sequence length; pass --seq"})


def _dtype_name(d: Any) -> str:
    return str(d).replace("torch.", "") if d is not None else ""


#: transformers 5.23 ``BitsAndBytesConfig`` fields (``transformers/utils/quantization_config.py``) that do not change
#: memory as vramplan models it, and why
BNB_NEUTRAL: dict[str, str] = {
    "quant_method": "always bitsandbytes here", "load_in_4bit": "read", "load_in_8bit": "read",
    "_load_in_4bit": "read", "_load_in_8bit": "read", "bnb_4bit_quant_type": "read",
    "bnb_4bit_use_double_quant": "read", "bnb_4bit_compute_dtype": "read (the autocast dtype)",
    "llm_int8_skip_modules": "read (quant_skip)",
    "bnb_4bit_quant_storage": "the element type the packed 4-bit bytes are stored as (uint8 or a float type for "
                              "FSDP): the same bytes",
    "llm_int8_threshold": "the int8 outlier threshold: outlier columns run in 16 bits inside the matmul"}


def bnb_notes(cfg: Any) -> list[str]:
    """One line per ``BitsAndBytesConfig`` field that changes memory but is not modelled, or that transformers
    does not have."""
    f = _fields_of(cfg)
    get = f.get if f else (lambda k, d=None: getattr(cfg, k, d))
    notes = []
    if get("llm_int8_has_fp16_weight") is True:
        notes.append("BitsAndBytesConfig.llm_int8_has_fp16_weight=True keeps 16-bit weights beside the int8 ones "
                     "(int8 training) -- not modelled")
    if get("llm_int8_enable_fp32_cpu_offload") is True:
        notes.append("BitsAndBytesConfig.llm_int8_enable_fp32_cpu_offload=True puts modules on the CPU in fp32 "
                     "(device_map) -- not modelled")
    known = set(BNB_NEUTRAL) | {"llm_int8_has_fp16_weight", "llm_int8_enable_fp32_cpu_offload"}
    notes += [f"BitsAndBytesConfig.{k}: not a transformers BitsAndBytesConfig field -- not modelled"
              for k in sorted(set(f) - known)]
    return notes


def options_from_bnb(cfg: Any) -> dict[str, Any]:
    """Setup options from a transformers ``BitsAndBytesConfig``: the quantization, double quant and compute
    dtype (``_compute``), and ``llm_int8_skip_modules`` as ``quant_skip``. A field that changes memory but is
    not modelled is an :class:`UnmodelledFieldWarning` (:func:`bnb_notes`)."""
    import warnings

    for note in bnb_notes(cfg):
        warnings.warn(note, UnmodelledFieldWarning, stacklevel=2)
    skip = getattr(cfg, "llm_int8_skip_modules", None) if not isinstance(cfg, Mapping) \
        else cfg.get("llm_int8_skip_modules")
    if isinstance(skip, str):
        skip = [skip]
    if skip is not None and not (isinstance(skip, (list, tuple)) and all(isinstance(x, str) for x in skip)):
        raise SetupError(f"BitsAndBytesConfig.llm_int8_skip_modules must be a list of module names, got {brief(skip)}")
    extra: dict[str, Any] = {"quant_skip": tuple(skip)} if skip else {}
    if getattr(cfg, "load_in_4bit", False):
        out: dict[str, Any] = {"quant": str(getattr(cfg, "bnb_4bit_quant_type", "fp4")),
                               "double_quant": bool(getattr(cfg, "bnb_4bit_use_double_quant", False))}
        cd = _dtype_name(getattr(cfg, "bnb_4bit_compute_dtype", None))
        if cd in ("float16", "half"):
            out["_compute"] = "fp16"
        elif cd == "bfloat16":
            out["_compute"] = "bf16"
        return {**out, **extra}
    if getattr(cfg, "load_in_8bit", False):
        return {"quant": "int8", **extra}
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
