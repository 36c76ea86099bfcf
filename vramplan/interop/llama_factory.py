"""LLaMA-Factory training YAML (``llamafactory-cli train x.yaml``) -> setup options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ForeignConfigError
from ..io import brief
from .hf import optim_from_trainer
from .util import as_int, truthy


def from_llama_factory(d: Mapping[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory (``llamafactory-cli train x.yaml``) keys -> plan keys (src/llamafactory/hparams)."""
    o: dict[str, Any] = {"model": d["model_name_or_path"]}
    stage = d.get("stage", "sft")
    if stage not in ("sft", "pt"):
        raise ForeignConfigError("stage", f"stage {brief(stage)} is not modelled (it holds a reference or value "
                                                "model as well); only sft and pt are")
    ft = str(d.get("finetuning_type", "lora")).lower()
    if ft not in ("lora", "full"):
        raise ForeignConfigError("finetuning_type",
                   f"{brief(ft)} is not modelled (freeze trains a subset of layers); use lora or full")
    qbit = d.get("quantization_bit")
    if qbit is not None:
        if str(d.get("quantization_method", "bnb")).lower() not in ("bnb", "bitsandbytes"):
            raise ForeignConfigError("quantization_method",
                       f"{brief(d.get('quantization_method'))} is not modelled; only bitsandbytes (bnb) is")
        if ft == "full":
            raise ForeignConfigError("quantization_bit", "full fine-tuning of a quantized model is not "
                                                               "possible; use finetuning_type: lora")
        if as_int(qbit, "quantization_bit") not in (4, 8):
            raise ForeignConfigError("quantization_bit", f"must be 4 or 8, got {brief(qbit)}")
        o["method"] = "qlora"
        o["quant"] = "int8" if int(qbit) == 8 else str(d.get("quantization_type", "nf4")).lower()
        o["double_quant"] = truthy(d.get("double_quantization", True))
    else:
        o["method"] = ft
    if ft == "lora":
        for src, dst in (("lora_rank", "rank"), ("lora_alpha", "alpha"), ("lora_dropout", "lora_dropout"),
                         ("additional_target", "modules_to_save"), ("use_dora", "dora")):
            if d.get(src) is not None:
                o[dst] = d[src]
        tgt = d.get("lora_target", "all")
        o["targets"] = "all-linear" if str(tgt).strip().lower() == "all" else tgt
    if d.get("per_device_train_batch_size") is not None:
        o["batch"] = d["per_device_train_batch_size"]
    o["seq"] = d.get("cutoff_len", 2048)          # DataArguments.cutoff_len default
    if truthy(d.get("pure_bf16", False)):
        o["precision"] = "bf16-true"
    elif truthy(d.get("bf16", False)):
        o["precision"] = "bf16-mixed"
    elif truthy(d.get("fp16", False)):
        o["precision"] = "fp16-mixed"
    # model/model_utils/checkpointing.py: checkpointing is on unless disable_gradient_checkpointing
    o["grad_ckpt"] = not truthy(d.get("disable_gradient_checkpointing", False))
    attn = str(d.get("flash_attn", "auto")).lower()
    o["attn"] = {"fa2": "flash", "sdpa": "sdpa", "disabled": "eager", "auto": "sdpa"}.get(attn, "sdpa")
    if d.get("optim") is not None:
        o["optim"] = optim_from_trainer(d["optim"], "optim")
    if truthy(d.get("enable_liger_kernel", False)):
        o["loss"] = "chunked"
    return o


#: plan keys this reader sets -> the LLaMA-Factory keys they come from (errors name the user's key)
KEY_SOURCES = {"model": "model_name_or_path", "rank": "lora_rank", "alpha": "lora_alpha",
               "lora_dropout": "lora_dropout", "modules_to_save": "additional_target", "dora": "use_dora",
               "targets": "lora_target", "batch": "per_device_train_batch_size", "seq": "cutoff_len",
               "quant": "quantization_type", "double_quant": "double_quantization", "optim": "optim"}
