"""TRL -> setup options: ``trl sft --config X.yaml`` (SFTConfig + ModelConfig keys), the alignment-handbook's
recipes (read with TRL v0.19.1, the last release that accepts their ``max_seq_length``), and the ``config.args``
of a recorded TRL run (string values, as given on the command line).

Rules from huggingface/trl at f2cd5771 (``trl/trainer/sft_config.py``, ``base_config.py``,
``model_config.py``, ``trl/scripts/sft.py``) and at v0.19.1 (accf7383) for the handbook, cited per rule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import CannotCheckError, ForeignConfigError
from ..io import brief
from .hf import TRAINER_OPTIMS
from .reading import Reading, finish
from .util import as_int, truthy

#: keys only TRL's SFTConfig / ModelConfig / ScriptArguments have (with ``model_name_or_path``)
TRL_KEYS = ("dataset_name", "dataset_mixture", "dataset_mixer", "use_peft", "max_seq_length", "lora_r",
            "lora_target_modules", "torch_dtype", "attn_implementation", "load_in_4bit", "use_bnb_nested_quant",
            "dataset_text_field", "completion_only_loss", "assistant_only_loss", "chat_template")
#: keys that make a TRL config a preference (DPO/ORPO/KTO) config, not SFT
_PREF_KEYS = ("beta", "max_prompt_length", "loss_type_dpo", "rpo_alpha", "ref_model_init_kwargs")


def is_trl(d: Mapping[str, Any]) -> bool:
    """``model_name_or_path`` plus a TRL-only key (``dataset_name``, ``use_peft``, ``max_seq_length``...) and no
    LLaMA-Factory-only key (``stage``, ``finetuning_type``, ``cutoff_len``, ``template``)."""
    keys = set(map(str, d))
    if "model_name_or_path" not in keys or keys & {"stage", "finetuning_type", "cutoff_len", "template",
                                                   "lora_target", "quantization_bit"}:
        return False
    return bool(keys & set(TRL_KEYS))


def _none(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() == "none")


def read_trl(d: Mapping[str, Any], file: str | os.PathLike[str] | None = None, *, version: str | None = None,
             fmt: str | None = None) -> Reading:
    """SFTConfig + ModelConfig keys -> a :class:`Reading`. ``version`` ``v0.19.1`` reads with that release's
    defaults (chosen by itself when the file uses ``max_seq_length``, which later releases refuse).

    Raises:
        CannotCheckError: a preference (DPO) config.
    """
    model = d.get("model_name_or_path")
    if not isinstance(model, str) or not model:
        raise ForeignConfigError("model_name_or_path", f"must name a model, got {brief(model)}")
    old = version == "v0.19.1" or (version is None and "max_seq_length" in d)
    r = Reading(fmt or ("trl-config" if old else "trl-cli-config"), model)
    o = r.options
    # the trl stack is TRL >= 0.26 (no kbit prep, fused LM head); v0.19.1 is the HF Trainer + PEFT recipe
    o["stack"] = "hf" if old else "trl"
    pref = [k for k in _PREF_KEYS if k in d]
    if pref:
        r.stage = "dpo"
        raise CannotCheckError(f"{', '.join(pref)}: a preference-optimization (DPO) config; chosen+rejected forwards "
                               "and reference log-probs are not modelled")
    peft = truthy(d.get("use_peft", False))                          # model_config.py:103
    four, eight = truthy(d.get("load_in_4bit", False)), truthy(d.get("load_in_8bit", False))
    if (four or eight) and not peft:
        raise ForeignConfigError("load_in_4bit" if four else "load_in_8bit",
                                 "full fine-tuning of a quantized model is not possible; set use_peft: true")
    if peft and four:
        o["method"], o["quant"] = "qlora", str(d.get("bnb_4bit_quant_type", "nf4")).lower()
        # use_bnb_nested_quant default False (trl/trainer/utils.py@v0.19.1:912-920, model_config.py)
        o["double_quant"] = truthy(d.get("use_bnb_nested_quant", False))
        # v0.19.1: SFTTrainer._prepare_peft_model calls prepare_model_for_kbit_training
        # (sft_trainer.py@v0.19.1:554-582); no longer since trl 0.26.0 (vramplan/stacks.py, the trl stack)
        o["kbit_prep"] = old
    elif peft and eight:
        o["method"], o["quant"], o["kbit_prep"] = "qlora", "int8", old
    else:
        o["method"] = "lora" if peft else "full"
    if peft:                                                         # model_config.py:107-118
        o["rank"] = as_int(d.get("lora_r", 16), "lora_r")
        o["alpha"] = d.get("lora_alpha", 32)
        o["lora_dropout"] = d.get("lora_dropout", 0.05)
        tm = d.get("lora_target_modules")
        o["targets"] = tm if tm else None
        mts = d.get("lora_modules_to_save")
        o["modules_to_save"] = mts if mts else None
        # get_peft_config (trainer/utils.py:254-275): target_parameters and use_dora reach LoraConfig too;
        # bias is always "none", use_rslora only scales
        if d.get("lora_target_parameters"):
            o["target_parameters"] = d["lora_target_parameters"]
        if not _none(d.get("use_dora")):
            o["dora"] = truthy(d["use_dora"])
    o["batch"] = as_int(d.get("per_device_train_batch_size", 8), "per_device_train_batch_size")  # transformers
    seq_key = "max_seq_length" if "max_seq_length" in d else "max_length"
    seq = d.get(seq_key, 1024)                                       # sft_config.py:205-207
    if _none(seq):
        o["seq"] = None
        r.undecided["seq"] = f"{seq_key}: None (no truncation: the longest sample sets it); pass --seq"
    else:
        o["seq"] = as_int(seq, seq_key)
    # ModelConfig dtype default float32 (model_config.py:89, sft.py:78); the handbook honours torch_dtype
    dtype = d.get("dtype", d.get("torch_dtype"))
    dtype = "float32" if _none(dtype) or str(dtype).lower() == "auto" and not old else str(dtype).lower()
    bf16 = truthy(d["bf16"]) if not _none(d.get("bf16")) else not truthy(d.get("fp16", False))  # base_config.py:105
    half = "bf16" if bf16 else "fp16" if truthy(d.get("fp16", False)) else None
    weights = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16"}.get(dtype, "fp32")
    if weights == "fp32":
        o["precision"] = f"{half}-mixed" if half else "32-true"
    elif o["method"] == "full":
        o["precision"] = f"{weights}-true"     # bf16 weights: autocast changes nothing, no fp32 masters
    else:
        o["precision"] = f"{weights}-mixed"    # PEFT fp32 adapters on the 16-bit base
    gc = d.get("gradient_checkpointing")
    o["grad_ckpt"] = truthy(gc) if not _none(gc) else not old        # base_config.py:61-66 (True at HEAD)
    impl = str(d.get("attn_implementation") or "").lower()
    o["attn"] = "flash" if "flash" in impl else "eager" if impl == "eager" else "sdpa"
    opt = d.get("optim")
    o["optim"] = "adamw"
    if not _none(opt):
        if str(opt) in TRAINER_OPTIMS:
            o["optim"] = TRAINER_OPTIMS[str(opt)]
        else:
            o["optim"] = None
            r.ignored.append(f"optim {opt} (optimizer not modelled)")
    liger = truthy(d.get("use_liger_kernel", False))
    if liger:
        r.ignored.append("use_liger_kernel RMSNorm/RoPE/SwiGLU kernels (activation memory: not modelled)")
    loss_type = str(d.get("loss_type") or "").lower()
    if old:
        o["loss"] = "chunked" if liger else "standard"               # no chunked loss in v0.19.1
    else:                                                            # sft_config.py:334-336
        o["loss"] = "chunked" if liger or loss_type in ("", "none", "chunked_nll") else "standard"
    r.packing = truthy(d.get("packing", False))
    o["gpus"] = None
    o["strategy"] = None
    o["offload"] = None
    return finish(r)


def is_trl_args_json(d: Mapping[str, Any]) -> bool:
    """A recorded TRL run: ``config: {method, args: {...}}``."""
    c = d.get("config")
    return isinstance(c, Mapping) and isinstance(c.get("args"), Mapping) and "method" in c


def read_trl_args_json(d: Mapping[str, Any], file: str | os.PathLike[str] | None = None) -> Reading:
    """``config.args`` of a recorded TRL run (``trl <method>`` arguments as strings) -> a :class:`Reading`; one
    GPU when ``env.gpu`` names one card."""
    c = d["config"]
    method = str(c.get("method", "sft")).lower()
    if method != "sft":
        raise CannotCheckError(f"trl {method} is not modelled; only sft is")
    r = read_trl(c["args"], file, version="head", fmt="trl-args-json")
    env = d.get("env")
    if isinstance(env, Mapping) and isinstance(env.get("gpu"), str):
        r.options["gpus"] = 1
    return r
