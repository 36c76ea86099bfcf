"""LLaMA-Factory training configs -> setup options: the flat YAML of ``llamafactory-cli train x.yaml`` (and the
same keys as ``--key value`` arguments) and the nested v1 YAML (``model:``, ``peft_config``, ``quant_config``,
``dist_config``; ``llamafactory-cli sft x.yaml``).

Rules from hiyouga/LLaMA-Factory at ff6d4d12 (``src/llamafactory/hparams/*.py``, ``model/adapter.py``,
``v1/config/*.py``, ``v1/plugins/**``), cited per rule; the corpus and its expected readings are in
``tests/data/configs`` (SOURCES.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..errors import CannotCheckError, ForeignConfigError
from ..io import brief
from .hf import TRAINER_OPTIMS, optim_from_trainer
from .reading import Reading, bundled_dtype, deepspeed_options, finish
from .util import as_int, truthy

#: LLaMA-Factory ``use_*`` optimizers (train/trainer_utils.py:200-498): replace AdamW; vramplan has none of them
_LF_OPTIMIZERS = {
    "use_galore": "GaLore projected optimizer states (galore_rank, galore_layerwise): optimizer not modelled",
    "use_apollo": "APOLLO channel-scaled low-rank optimizer: optimizer not modelled",
    "use_badam": "BAdam block-coordinate optimizer: gradients/optimizer states of one block only: not modelled",
    "use_adam_mini": "Adam-mini optimizer states: not modelled",
    "use_muon": "Muon optimizer: one momentum buffer per matrix: not modelled",
}

#: model ids that name a pre-quantized checkpoint (the quantization comes from its config.json,
#: model/model_utils/quantization.py:94-98, the PTQ branch): not bitsandbytes, not modelled
_PREQUANT = re.compile(r"(?i)(?:^|[-_/.])(awq|gptq|aqlm|exl2|hqq|eetq|fp8|gguf)(?:$|[-_/.])")


def prequantized(model: str) -> str | None:
    """``awq``/``gptq``/``aqlm``/... when the model id names a pre-quantized checkpoint, else ``None``."""
    m = _PREQUANT.search(str(model))
    return m.group(1).lower() if m else None


def _targets(value: Any) -> Any:
    if isinstance(value, str):
        items = [t.strip() for t in value.split(",") if t.strip()]
        if [t.lower() for t in items] == ["all"]:
            return "all-linear"
        return items
    if isinstance(value, list) and [str(t).lower() for t in value] == ["all"]:
        return "all-linear"
    return value


def read_llama_factory(d: Mapping[str, Any], file: str | os.PathLike[str] | None = None,
                       fmt: str = "llamafactory") -> Reading:
    """LLaMA-Factory flat keys (a YAML file or ``llamafactory-cli train --key value``) -> a :class:`Reading`.

    Raises:
        CannotCheckError: a stage other than sft/pt, freeze tuning or LLaMA Pro, a quantization other than
            bitsandbytes, a pre-quantized checkpoint.
        ForeignConfigError: a value that cannot be read, naming its key.
    """
    model = d.get("model_name_or_path")
    if not isinstance(model, str) or not model:
        raise ForeignConfigError("model_name_or_path", f"must name a model, got {brief(model)}")
    r = Reading(fmt, model)
    o = r.options
    o["stack"] = "llama-factory"
    stage = str(d.get("stage", "sft")).lower()         # finetuning_args.py:460
    r.stage = stage
    if stage not in ("sft", "pt"):
        what = {"dpo": "DPO (chosen+rejected forwards and reference log-probs)",
                "kto": "KTO (KL reference pass, mismatched pairs)", "rm": "a reward model (value head, pairs)",
                "ppo": "PPO (policy, reference, reward and value models)"}.get(stage, f"stage {brief(stage)}")
        raise CannotCheckError(f"stage {stage}: {what} is not modelled; only sft and pt are")
    ft = str(d.get("finetuning_type", "lora")).lower()     # finetuning_args.py:464
    if ft not in ("lora", "full"):
        raise CannotCheckError(f"finetuning_type {brief(ft)}: partial training (a subset of layers, "
                               "model/adapter.py:57-139) is not modelled; lora and full are")
    if truthy(d.get("use_llama_pro", False)):
        raise CannotCheckError("use_llama_pro: expanded blocks trained alone (model/adapter.py) are not modelled")
    pq = prequantized(model)
    if pq:
        raise CannotCheckError(f"pre-quantized {pq.upper()} checkpoint {brief(model)}: its quantization comes from "
                               "the model's config.json (model/model_utils/quantization.py:94-98); vramplan models "
                               "bitsandbytes only")
    qbit = d.get("quantization_bit")
    if qbit is not None:
        method = str(d.get("quantization_method", "bnb")).lower()
        if method not in ("bnb", "bitsandbytes"):
            raise CannotCheckError(f"quantization_method {brief(method)} is not modelled; only bitsandbytes (bnb) is")
        if ft == "full":
            raise ForeignConfigError("quantization_bit", "full fine-tuning of a quantized model is not possible; "
                                                         "use finetuning_type: lora")
        bits = as_int(qbit, "quantization_bit")
        if bits not in (4, 8):
            raise ForeignConfigError("quantization_bit", f"must be 4 or 8, got {brief(qbit)}")
        o["method"] = "qlora"
        o["quant"] = "int8" if bits == 8 else str(d.get("quantization_type", "nf4")).lower()
        if bits == 4:      # model_args.py:279-294
            o["double_quant"] = truthy(d.get("double_quantization", True))
        # LLaMA-Factory never calls prepare_model_for_kbit_training (model_utils/checkpointing.py:163-205)
        o["kbit_prep"] = False
    else:
        o["method"] = ft
    if ft == "lora":
        rank = as_int(d.get("lora_rank", 8), "lora_rank")          # finetuning_args.py:77
        o["rank"] = rank
        # lora_alpha unset = 2 * lora_rank (finetuning_args.py:587), not PEFT's 8
        o["alpha"] = d["lora_alpha"] if d.get("lora_alpha") is not None else 2 * rank
        o["lora_dropout"] = d.get("lora_dropout", 0.0)              # finetuning_args.py:73
        o["targets"] = _targets(d.get("lora_target", "all"))        # model/adapter.py:229-230
        add = d.get("additional_target")
        o["modules_to_save"] = _targets(add) if add else None
        if d.get("use_dora") is not None:
            o["dora"] = truthy(d["use_dora"])
    o["batch"] = as_int(d.get("per_device_train_batch_size", 8), "per_device_train_batch_size")   # transformers
    o["seq"] = as_int(d.get("cutoff_len", 2048), "cutoff_len")      # data_args.py:46-48
    # parser.py:640-643: pure_bf16 / bf16 / fp16 set the compute dtype; trainable params are upcast to fp32 unless
    # pure_bf16 or use_badam (model/adapter.py:337-349); under ZeRO-3 DeepSpeed keeps fp32 masters anyway
    # no flag: compute dtype = the model's config dtype (infer_optim_dtype, model/patcher.py:375-379), no autocast
    half = "bf16" if truthy(d.get("pure_bf16", False)) or truthy(d.get("bf16", False)) else \
        "fp16" if truthy(d.get("fp16", False)) else None
    flagged = half is not None
    if half is None:
        half = {"bfloat16": "bf16", "float16": "fp16"}.get(str(bundled_dtype(model)).lower())
    if half is not None and (truthy(d.get("pure_bf16", False)) or truthy(d.get("use_badam", False))):
        o["precision"] = f"{half}-true"
    elif half is not None and flagged:
        o["precision"] = f"{half}-mixed"
    else:
        o["precision"] = None
        r.undecided["precision"] = ("neither bf16, fp16 nor pure_bf16: LLaMA-Factory trains in the model's own "
                                    "dtype without autocast (infer_optim_dtype); write a plan file with precision")
    o["grad_ckpt"] = not truthy(d.get("disable_gradient_checkpointing", False))   # model_args.py:145
    attn = str(d.get("flash_attn", "auto")).lower()                 # model_utils/attention.py:65-66
    o["attn"] = {"fa2": "flash", "sdpa": "sdpa", "disabled": "eager", "eager": "eager"}.get(attn, "sdpa")
    opt = d.get("optim")
    o["optim"] = "adamw"
    for key, why in _LF_OPTIMIZERS.items():
        if truthy(d.get(key, False)):
            o["optim"] = None
            r.ignored.append(f"{key} ({why})")
    if o["optim"] is not None and opt is not None:
        if not isinstance(opt, str):
            raise ForeignConfigError("optim", f"must be an optimizer name such as adamw_torch, got {brief(opt)}")
        if opt in TRAINER_OPTIMS:
            o["optim"] = optim_from_trainer(opt, "optim")
        else:
            o["optim"] = None
            r.ignored.append(f"optim {opt} (optimizer not modelled)")
    o["loss"] = "chunked" if truthy(d.get("enable_liger_kernel", False)) else "standard"
    if truthy(d.get("use_unsloth", False)):
        r.ignored.append("use_unsloth (Unsloth kernels and offloaded checkpointing: not modelled)")
    r.packing = truthy(d["packing"]) if d.get("packing") is not None else stage == "pt"   # parser.py:645
    o["gpus"] = None
    o["strategy"] = None
    o["offload"] = None
    if d.get("deepspeed"):
        ds = deepspeed_options(d["deepspeed"], file, "deepspeed")
        o["strategy"], o["offload"] = ds["strategy"], ds["offload"]
        r.ignored += ds["ignored"]
        r.references += ds["references"]
    return finish(r)


def from_llama_factory(d: Mapping[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory (``llamafactory-cli train x.yaml``) keys -> plan keys: :func:`read_llama_factory`'s options."""
    r = read_llama_factory(d)
    return {"model": r.model, **r.setup_options()}


#: plan keys this reader sets -> the LLaMA-Factory keys they come from (errors name the user's key)
KEY_SOURCES = {"model": "model_name_or_path", "rank": "lora_rank", "alpha": "lora_alpha",
               "lora_dropout": "lora_dropout", "modules_to_save": "additional_target", "dora": "use_dora",
               "targets": "lora_target", "batch": "per_device_train_batch_size", "seq": "cutoff_len",
               "quant": "quantization_type", "double_quant": "double_quantization", "optim": "optim"}


# ------------------------------------------------------------------------------------------------ v1
#: top-level keys of the v1 schema (v1/config/model_args.py, training_args.py): ``model:`` plus any of these
#: LLaMA-Factory v1 ``LoraParams`` fields (v1/plugins/model_plugins/peft.py:32-63 at ff6d4d12)
V1_LORA_PARAMS = frozenset({"name", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "use_dora",
                            "modules_to_save", "adapter_name_or_path", "export_dir", "export_size",
                            "export_hub_model_id", "infer_dtype", "export_legacy_format"})
V1_PLUGIN_KEYS = ("peft_config", "quant_config", "dist_config", "kernel_config", "optim_config", "model_class",
                  "train_dataset")


def is_v1(d: Mapping[str, Any]) -> bool:
    """A LLaMA-Factory v1 nested config: a string ``model:`` and a ``*_config`` plugin key or ``train_dataset``
    (it also has ``output_dir``, but is not TrainingArguments)."""
    return isinstance(d.get("model"), str) and any(k in d for k in V1_PLUGIN_KEYS)


def _mapping(d: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, str):
        return {"name": v}
    if not isinstance(v, Mapping):
        raise ForeignConfigError(key, f"must be a mapping with a name, got {brief(v)}")
    return v


_V1_NOT_SFT = re.compile(r"(?i)(?:^|[^a-z])(dpo|kto|orpo|simpo|ppo|rm|reward|pref)(?:$|[^a-z])")


def read_llama_factory_v1(d: Mapping[str, Any], file: str | os.PathLike[str] | None = None,
                          stage: str | None = None) -> Reading:
    """LLaMA-Factory v1 nested YAML -> a :class:`Reading`. The stage is the launch command's
    (``llamafactory-cli sft|dpo|rm``, v1/launcher.py:31, 142-155), not the file's: without it, a dataset named
    for preference data (``v1_dpo_demo``) is not read as a confident sft.

    Raises:
        CannotCheckError: freeze tuning, a non-sft stage, a quantization other than bitsandbytes.
    """
    r = Reading("llamafactory-v1", str(d["model"]))
    o = r.options
    o["stack"] = "llama-factory"
    dataset = str(d.get("train_dataset", ""))
    if stage is None and _V1_NOT_SFT.search(os.path.basename(dataset)):
        raise CannotCheckError(f"train_dataset {brief(dataset)} is preference data: v1 takes the stage from the "
                               "command (llamafactory-cli dpo|rm ..., v1/launcher.py:148-151), and DPO/RM "
                               "(reference log-probs on chosen/rejected pairs) is not modelled")
    r.stage = stage or "sft"
    if r.stage != "sft":
        raise CannotCheckError(f"stage {r.stage} (llamafactory-cli {r.stage}): only sft is modelled")
    peft = _mapping(d, "peft_config")
    name = str(peft.get("name", "lora")).lower() if peft else None
    if name is not None and name != "lora":
        raise CannotCheckError(f"peft_config name {brief(name)}: partial fine-tuning (v1/plugins/model_plugins/"
                               "peft.py:66-80) is not modelled; lora and full (no peft_config) are")
    quant = _mapping(d, "quant_config")
    if quant is not None:
        qname = str(quant.get("name", "bnb")).lower()
        if qname not in ("bnb", "bitsandbytes", "auto"):
            raise CannotCheckError(f"quant_config name {brief(qname)} is not modelled; only bitsandbytes is")
        if peft is None:
            raise ForeignConfigError("quant_config", "full fine-tuning of a quantized model is not possible")
        bits = as_int(quant.get("quantization_bit", 4), "quant_config.quantization_bit")
        o["method"] = "qlora"
        o["quant"] = "int8" if bits == 8 else "nf4"                 # v1/plugins/model_plugins/quantization.py:38-56
        if bits == 4:
            o["double_quant"] = True
    else:
        o["method"] = "lora" if peft is not None else "full"         # v1/core/model_engine.py:204-207
    if peft is not None:                                            # v1/plugins/model_plugins/peft.py:32-63
        unknown = sorted(set(map(str, peft)) - V1_LORA_PARAMS)
        if unknown:                                                 # v1/utils/plugin.py:87-93 refuses them
            raise ForeignConfigError(f"peft_config.{unknown[0]}",
                                     f"is not a LoraParams field: LLaMA-Factory refuses unknown peft_config keys "
                                     f"(v1/utils/plugin.py:87-93); its fields are {', '.join(sorted(V1_LORA_PARAMS))}")
        rank = as_int(peft.get("r", 8), "peft_config.r")
        o["rank"] = rank
        o["alpha"] = peft.get("lora_alpha", 16)
        o["lora_dropout"] = peft.get("lora_dropout", 0.05)
        o["targets"] = _targets(peft.get("target_modules", "all"))
        # use_dora and modules_to_save reach LoraConfig (peft.py:186-196); use_rslora only scales
        o["dora"] = truthy(peft.get("use_dora", False))
        o["modules_to_save"] = peft.get("modules_to_save") or None
        if peft.get("adapter_name_or_path"):
            r.ignored.append("peft_config.adapter_name_or_path (training continues a saved adapter, whose own "
                             "rank and targets are not read: checked as peft_config's)")
    o["batch"] = as_int(d.get("micro_batch_size", 1), "micro_batch_size")   # v1/config/training_args.py:33-36
    o["seq"] = as_int(d.get("cutoff_len", 2048), "cutoff_len")
    # bf16 default true (training_args.py:61-64); full tuning: model.to(fp32) masters; LoRA: fp32 adapters
    o["precision"] = "bf16-mixed" if truthy(d.get("bf16", True)) else "32-true"
    o["grad_ckpt"] = truthy(d.get("enable_activation_checkpointing", True))  # training_args.py:73-76
    attn = str(d.get("flash_attn", "sdpa")).lower()
    o["attn"] = {"fa2": "flash", "flash_attention_2": "flash", "eager": "eager", "disabled": "eager"}.get(attn, "sdpa")
    o["loss"] = "standard"        # liger_kernel is applied with require_logits (model_engine.py:222-225)
    kernel = _mapping(d, "kernel_config")
    if kernel is not None and str(kernel.get("name", "auto")).lower() not in ("auto", "none"):
        r.ignored.append(f"kernel_config {kernel.get('name')} (RMSNorm/RoPE/SwiGLU kernels change activation "
                         "memory: not modelled)")
    optim = _mapping(d, "optim_config")
    o["optim"] = "adamw"                                            # v1/core/base_trainer.py:205-209
    if optim is not None:
        oname = str(optim.get("name", "adamw")).lower()
        if oname not in ("adamw", "adamw_torch"):
            o["optim"] = None
            r.ignored.append(f"optim_config {oname} (optimizer not modelled)")
    r.packing = str(d.get("batching_strategy", "normal")).lower() not in ("normal", "padding")
    o["gpus"] = None
    o["strategy"] = None
    o["offload"] = None
    dist = _mapping(d, "dist_config")
    if dist is not None:
        dname = str(dist.get("name", "")).lower()
        if dname in ("fsdp2", "fsdp"):                              # fsdp2.py:182-190, 222-310
            o["strategy"] = "fsdp" if truthy(dist.get("reshard_after_forward", True)) else "fsdp-grad-op"
            o["offload"] = "params" if truthy(dist.get("offload_params", False)) else "none"
        elif dname == "deepspeed":
            ds = deepspeed_options(dist.get("config_file", ""), file, "dist_config.config_file")
            o["strategy"], o["offload"] = ds["strategy"], ds["offload"]
            r.ignored += ds["ignored"]
            r.references += ds["references"]
        elif dname not in ("", "none", "ddp"):
            raise CannotCheckError(f"dist_config name {brief(dname)} is not modelled (fsdp2, deepspeed are)")
    return finish(r)
