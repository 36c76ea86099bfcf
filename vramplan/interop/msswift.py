"""ms-swift -> setup options: ``swift sft --key value ...`` command lines (in a ``.sh`` file or as a string),
``swift sft CONFIG.yaml|json`` config files, and ``accelerate launch ... swift/cli/sft.py ...``.

Rules from modelscope/ms-swift at 3602360a (``swift/arguments/**``, ``swift/trainers/arguments.py``), cited
per rule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import CannotCheckError, ForeignConfigError
from ..io import brief
from .hf import TRAINER_OPTIMS
from .reading import Reading, bundled_dtype, deepspeed_options, finish, resolve_reference
from .util import as_int, truthy

#: ``--deepspeed NAME`` -> swift/config/NAME.json (swift/arguments/sft_args.py:251-268): their ZeRO stage and offload
SWIFT_DEEPSPEED: dict[str, dict[str, Any]] = {
    "zero0": {"strategy": "ddp", "offload": "none"},
    "zero1": {"strategy": "zero1", "offload": "none"},
    "zero2": {"strategy": "zero2", "offload": "none"},
    "zero3": {"strategy": "zero3", "offload": "none"},
    "zero2_offload": {"strategy": "zero2", "offload": "optimizer"},
    "zero3_offload": {"strategy": "zero3", "offload": "params"},
}

#: keys that mark a mapping as an ms-swift config (base_args.py, tuner_args.py, model_args.py)
SWIFT_KEYS = ("tuner_type", "train_type", "torch_dtype", "lora_rank", "target_modules", "max_length",
              "quant_method", "quant_bits", "attn_impl", "model_author", "model_name", "dataset")


def is_msswift(d: Mapping[str, Any]) -> bool:
    """``model:`` plus a key only ms-swift's arguments have (``tuner_type``, ``lora_rank``, ``attn_impl``...)."""
    keys = set(map(str, d))
    return isinstance(d.get("model"), str) and bool(keys & {"tuner_type", "train_type", "lora_rank", "attn_impl",
                                                             "quant_bits", "model_author", "torch_dtype"})


def _value(v: Any) -> Any:
    """A command-line value: a list of one element is that element."""
    if isinstance(v, list) and len(v) == 1:
        return v[0]
    return v


def read_msswift(args: Mapping[str, Any], file: str | os.PathLike[str] | None = None, *,
                 command: str = "sft", env: Mapping[str, str] | None = None,
                 launcher: Mapping[str, Any] | None = None, fmt: str = "msswift") -> Reading:
    """ms-swift arguments (command-line strings or a config's typed values) -> a :class:`Reading`.

    ``command`` is the ``swift`` subcommand (sft, pt, rlhf); ``env`` the variables the command runs with
    (``NPROC_PER_NODE``); ``launcher`` what an accelerate config decided (gpus, strategy, offload, grad_ckpt).

    Raises:
        CannotCheckError: ``swift rlhf``, LISA, a tuner or quantization vramplan does not model.
    """
    a = {str(k).lstrip("-").replace("-", "_"): _value(v) for k, v in args.items()}
    direct = env is None          # a config file read on its own: the launcher decides the GPU count
    env = env or {}
    model = a.get("model")
    if not isinstance(model, str) or not model:
        raise ForeignConfigError("model", f"must name a model, got {brief(model)}")
    r = Reading(fmt, model)
    o = r.options
    o["stack"] = "ms-swift"
    if command == "rlhf":
        kind = str(a.get("rlhf_type", "dpo")).lower()
        r.stage = kind
        raise CannotCheckError(f"swift rlhf --rlhf_type {kind} (reference model, chosen/rejected forwards) is not "
                               "modelled")
    if command not in ("sft", "pt"):
        raise CannotCheckError(f"swift {command} is not a training command vramplan models (sft, pt)")
    r.stage = command
    tuner = str(a.get("tuner_type", a.get("train_type", "lora"))).lower()   # base_args.py:93
    if tuner not in ("lora", "full", "qlora"):
        raise CannotCheckError(f"--tuner_type {brief(tuner)} is not modelled; lora and full are")
    lisa = a.get("lisa_activated_layers")
    if lisa is not None and as_int(lisa, "lisa_activated_layers") > 0:
        raise CannotCheckError(f"--lisa_activated_layers {lisa} (LISA: only {lisa} layers trainable at a time, "
                               "swift/trainers/arguments.py:207): partial full fine-tuning is not modelled")
    qm = a.get("quant_method")
    if qm is not None and str(qm).lower() not in ("bnb", "bitsandbytes"):
        raise CannotCheckError(f"--quant_method {brief(qm)} is not modelled; only bnb is")
    if qm is not None and tuner != "full":                           # quant_args.py:41-47, 116-121
        bits = as_int(a.get("quant_bits", 4), "quant_bits")
        o["method"] = "qlora"
        if bits == 8:
            o["quant"] = "int8"
        elif bits == 4:
            o["quant"] = str(a.get("bnb_4bit_quant_type", "nf4")).lower()
            o["double_quant"] = truthy(a.get("bnb_4bit_use_double_quant", True))
        else:
            raise ForeignConfigError("quant_bits", f"must be 4 or 8 with --quant_method bnb, got {brief(bits)}")
        o["kbit_prep"] = False     # ms-swift does not call prepare_model_for_kbit_training (docs/stacks.md)
    else:
        o["method"] = "full" if tuner == "full" else "lora"
        unused = [k for k in ("quant_bits", "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage",
                              "bnb_4bit_quant_type", "bnb_4bit_use_double_quant") if a.get(k) is not None]
        if unused:
            r.ignored.append(f"{' / '.join(unused)} (no effect without --quant_method: the base is not quantized)")
    if o["method"] != "full":                                        # tuner_args.py:126-135
        o["rank"] = as_int(a.get("lora_rank", 8), "lora_rank")
        o["alpha"] = a.get("lora_alpha", 32)
        o["lora_dropout"] = a.get("lora_dropout", 0.05)
        tm = a.get("target_modules", "all-linear")
        o["targets"] = "all-linear" if tm in ("all-linear", ["all-linear"]) else tm
        if a.get("target_regex"):                                    # tuner_args.py:201-202 replaces the list
            o["targets"], o["target_regex"] = None, a["target_regex"]
        if a.get("target_parameters"):                               # pipelines/train/tuner.py:204-205
            o["target_parameters"] = a["target_parameters"]
        # --lora_bias none|all is PEFT's bias (tuner_args.py:136, tuner.py:185), not its lora_bias
        o["bias"] = str(a.get("lora_bias") or "none").lower()
        init = str(a.get("init_weights", "true")).lower()            # tuner_args.py:152, tuner.py:190
        if init in ("lora-ga", "loftq") or init.startswith(("eva", "corda")):
            r.ignored.append(f"init_weights {init} (an initialization pass before training: not modelled)")
        mts = a.get("modules_to_save")
        o["modules_to_save"] = mts if mts else None
        if a.get("use_dora") is not None:
            o["dora"] = truthy(a["use_dora"])
    o["batch"] = as_int(a.get("per_device_train_batch_size", 1), "per_device_train_batch_size")  # arguments.py:129
    if a.get("max_length") is not None and str(a["max_length"]).lower() != "none":
        o["seq"] = as_int(a["max_length"], "max_length")
    else:
        o["seq"] = None
        r.undecided["seq"] = ("no --max_length: ms-swift uses the model's max_model_len (base_args.py:196-197), "
                              "which vramplan does not take from an alias; pass --seq")
    dtype = a.get("torch_dtype")                                     # model_args.py:120-143
    if dtype is None:
        dtype = bundled_dtype(model)
    half = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
            "float32": "32", "fp32": "32"}.get(str(dtype).lower()) if dtype is not None else None
    o["grad_ckpt"] = truthy(a.get("gradient_checkpointing", True))  # trainers/arguments.py:134
    o["gpus"] = None
    o["strategy"] = None
    o["offload"] = None
    if a.get("deepspeed"):
        name = str(a["deepspeed"]).strip()
        shipped = resolve_reference(f"swift/config/{name}.json", file) if name.lower() in SWIFT_DEEPSPEED else None
        # a name is swift/config/NAME.json: read from an ms-swift checkout when there is one, else the table
        ds = deepspeed_options(str(shipped) if shipped else name, file, "deepspeed", builtin=SWIFT_DEEPSPEED)
        o["strategy"], o["offload"] = ds["strategy"], ds["offload"]
        r.ignored += ds["ignored"]
        r.references += ds["references"]
    elif a.get("fsdp"):
        o["strategy"], o["offload"] = "fsdp", "none"
        if "offload" in str(a["fsdp"]).lower():
            o["offload"] = "params"
    if launcher:
        for k in ("gpus", "strategy", "offload"):
            if launcher.get(k) is not None:
                o[k] = launcher[k]
        if launcher.get("grad_ckpt"):
            o["grad_ckpt"] = True          # fsdp_activation_checkpointing checkpoints every wrapped layer
        r.ignored += launcher.get("ignored", [])
        r.references += launcher.get("references", [])
    if o["gpus"] is None and not direct:
        n = env.get("NPROC_PER_NODE")
        o["gpus"] = as_int(n, "NPROC_PER_NODE") if n not in (None, "") else 1   # one process without it
    if half is None:
        o["precision"] = None
        r.undecided["precision"] = (f"no --torch_dtype: ms-swift takes the dtype from {model}'s config.json, which "
                                    "is not bundled; pass --torch_dtype")
    elif half == "32":
        o["precision"] = "32-true"
    elif o["method"] == "full" and o["strategy"] not in ("zero1", "zero2", "zero3"):
        o["precision"] = f"{half}-true"      # the model is loaded in torch_dtype; nothing upcasts it
    elif o["method"] != "full" and str(a.get("lora_dtype") or "").lower() in ("bfloat16", "bf16", "float16", "fp16"):
        o["precision"] = f"{half}-true"      # --lora_dtype keeps the adapters 16-bit (swift/tuners/peft.py:147-160)
    else:
        o["precision"] = f"{half}-mixed"     # fp32 adapters (swift/tuners/peft.py:147-160) or DeepSpeed masters
    impl = str(a.get("attn_impl") or "").lower()
    o["attn"] = "flash" if "flash" in impl else "eager" if impl == "eager" else "sdpa"
    liger = truthy(a.get("use_liger_kernel", False))
    o["loss"] = "chunked" if liger else "standard"                  # trainers/arguments.py:153
    if liger:
        r.ignored.append("use_liger_kernel RMSNorm/RoPE/SwiGLU kernels (activation memory: not modelled)")
    o["optim"] = "adamw"
    if truthy(a.get("use_galore", False)):                           # sft_args.py:212-216
        o["optim"] = None
        r.ignored.append("use_galore (GaLore optimizer"
                         + (", galore_optim_per_parameter" if truthy(a.get("galore_optim_per_parameter", False))
                            else "") + ": not modelled)")
    else:
        opt = a.get("optim") or a.get("optimizer")
        if opt is not None:
            if str(opt) in TRAINER_OPTIMS:
                o["optim"] = TRAINER_OPTIMS[str(opt)]
            else:
                o["optim"] = None
                r.ignored.append(f"optimizer {opt} (not modelled)")
    r.packing = truthy(a.get("packing", False))
    return finish(r)
