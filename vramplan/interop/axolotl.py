"""axolotl training YAML (``axolotl train x.yml``) -> setup options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ForeignConfigError
from ..io import brief
from .hf import optim_from_trainer
from .util import truthy


def from_axolotl(d: Mapping[str, Any]) -> dict[str, Any]:
    """axolotl (``axolotl train x.yml``) keys -> plan keys (src/axolotl/utils/schemas)."""
    o: dict[str, Any] = {"model": d["base_model"]}
    adapter = d.get("adapter")
    adapter = str(adapter).lower() if adapter else None
    if adapter not in (None, "lora", "qlora"):
        raise ForeignConfigError("adapter", f"{brief(adapter)} is not modelled; use lora or qlora")
    four, eight = truthy(d.get("load_in_4bit", False)), truthy(d.get("load_in_8bit", False))
    if adapter is None:
        if four or eight:
            raise ForeignConfigError("load_in_4bit" if four else "load_in_8bit",
                       "full fine-tuning of a quantized model is not possible; set adapter: lora or qlora")
        o["method"] = "full"
    elif adapter == "qlora" or four or eight:
        o["method"] = "qlora"
        o["quant"] = "int8" if eight and not four else "nf4"
    else:
        o["method"] = "lora"
    if adapter is not None:
        for src, dst in (("lora_r", "rank"), ("lora_alpha", "alpha"), ("lora_dropout", "lora_dropout"),
                         ("lora_modules_to_save", "modules_to_save"), ("peft_use_dora", "dora")):
            if d.get(src) is not None:
                o[dst] = d[src]
        if truthy(d.get("lora_target_linear", False)):
            o["targets"] = "all-linear"
        elif d.get("lora_target_modules") is not None:
            o["targets"] = d["lora_target_modules"]
    if d.get("micro_batch_size") is not None:
        o["batch"] = d["micro_batch_size"]
    if d.get("sequence_len") is not None:
        o["seq"] = d["sequence_len"]
    bf16 = d.get("bf16")
    if isinstance(bf16, str) and bf16.lower() == "full":
        o["precision"] = "bf16-true"
    elif truthy(bf16) if bf16 is not None else False:
        o["precision"] = "bf16-mixed"
    elif truthy(d.get("fp16", False)):
        o["precision"] = "fp16-mixed"
    if d.get("gradient_checkpointing") is not None:
        o["grad_ckpt"] = truthy(d["gradient_checkpointing"])
    if truthy(d.get("flash_attention", False)):
        o["attn"] = "flash"
    elif truthy(d.get("eager_attention", False)):
        o["attn"] = "eager"
    elif truthy(d.get("sdp_attention", False)):
        o["attn"] = "sdpa"
    if d.get("optimizer") is not None:
        o["optim"] = optim_from_trainer(d["optimizer"], "optimizer")
    if truthy(d.get("chunked_cross_entropy", False)) or truthy(d.get("liger_fused_linear_cross_entropy", False)) \
            or truthy(d.get("cut_cross_entropy", False)):
        o["loss"] = "chunked"
    return o


#: plan keys this reader sets -> the axolotl keys they come from (errors name the user's key)
KEY_SOURCES = {"model": "base_model", "rank": "lora_r", "alpha": "lora_alpha", "lora_dropout": "lora_dropout",
               "modules_to_save": "lora_modules_to_save", "dora": "peft_use_dora", "targets": "lora_target_modules",
               "batch": "micro_batch_size", "seq": "sequence_len", "grad_ckpt": "gradient_checkpointing",
               "optim": "optimizer"}
