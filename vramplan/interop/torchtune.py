"""torchtune recipe configs (``tune run RECIPE --config X.yaml``) -> setup options.

Rules from pytorch/torchtune at bd2a0fc7 (``recipes/*.py``, ``torchtune/models/*/_model_builders.py``,
``torchtune/modules/peft/lora.py``, ``torchtune/modules/loss``), cited per rule.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..errors import CannotCheckError, ForeignConfigError
from ..io import brief
from .reading import Reading, finish
from .util import as_int, truthy

#: torchtune attention module names -> Hugging Face names (torchtune's output_proj is HF o_proj)
_ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
#: apply_lora_to_mlp: w1/w2/w3 = HF gate_proj/down_proj/up_proj
_MLP = ("gate_proj", "down_proj", "up_proj")
#: optimizer components -> vramplan optimizers
_OPTIMS = {"torch.optim.AdamW": "adamw", "torch.optim.Adam": "adamw", "bitsandbytes.optim.PagedAdamW8bit":
           "paged-adamw-8bit", "bitsandbytes.optim.PagedAdamW": "paged-adamw", "bitsandbytes.optim.AdamW8bit":
           "adamw-8bit", "bitsandbytes.optim.PagedAdamW32bit": "paged-adamw", "torch.optim.SGD": "sgd"}
#: loss components that never materialise the full logits (modules/loss/cross_entropy_loss.py:19-36)
_CHUNKED = ("LinearCrossEntropyLoss", "CEWithChunkedOutputLoss", "ChunkedCrossEntropy")

_DOWNLOAD = re.compile(r"^#\s*tune download\s+(\S+)", re.M)
_RUN = re.compile(r"^#\s*tune run\s+(.*?)--config", re.M)


def is_torchtune(d: Mapping[str, Any]) -> bool:
    """A torchtune recipe config: a top-level section (``model``, ``policy_model``...) whose ``_component_`` is a
    ``torchtune.models`` builder."""
    return any(isinstance(v, Mapping) and str(v.get("_component_", "")).startswith("torchtune.models.")
               for v in d.values())


def _component(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    return str(v.get("_component_", "")) if isinstance(v, Mapping) else ""


def recipe_from_comment(text: str) -> tuple[str | None, int | None]:
    """The recipe and ``--nproc_per_node`` of the file's usage comment (``tune run [--nproc_per_node N] RECIPE
    --config ...``)."""
    m = _RUN.search(text)
    if not m:
        return None, None
    words = m.group(1).split()
    nproc = None
    recipe = None
    i = 0
    while i < len(words):
        w = words[i]
        if w.startswith("--"):
            key = w[2:].split("=")[0].replace("-", "_")
            val = w.split("=", 1)[1] if "=" in w else (words[i + 1] if i + 1 < len(words) else None)
            if key == "nproc_per_node" and val is not None and val.isdigit():
                nproc = int(val)
            i += 1 if "=" in w else 2
            continue
        recipe = w
        i += 1
    return recipe, nproc


def read_torchtune(d: Mapping[str, Any], file: str | os.PathLike[str] | None = None, text: str = "", *,
                   recipe: str | None = None, nproc: int | None = None) -> Reading:
    """A torchtune recipe config -> a :class:`Reading`. The model is the checkpoint of the file's usage comment
    (``tune download ID``); the recipe is ``recipe`` (``tune run``'s) or the comment's.

    Raises:
        CannotCheckError: DPO/PPO/KD recipes, or a builder whose checkpoint is not named.
    """
    builder = _component(d, "model")
    ids = _DOWNLOAD.findall(text)
    model = ids[0] if ids else None
    if recipe is None:
        recipe, _ = recipe_from_comment(text)       # its --nproc_per_node is a suggestion, not the file's
    r = Reading("torchtune", model)
    recipe = recipe or ""
    if "dpo" in recipe or "ppo" in recipe or "distill" in recipe or "grpo" in recipe:
        r.stage = "dpo" if "dpo" in recipe else "ppo" if "ppo" in recipe else "kd" if "distill" in recipe else "grpo"
        raise CannotCheckError(f"{recipe} recipe ({r.stage.upper()}: reference/reward/teacher models) is not modelled")
    if not recipe:
        raise CannotCheckError("no recipe: run it as `tune run RECIPE --config FILE` (the file's usage comment names "
                               "none), so single-device or distributed is unknown")
    if model is None:
        raise CannotCheckError(f"the checkpoint is not named (no `tune download` comment); builder {builder}")
    o = r.options
    o["stack"] = "torchtune"
    m = d.get("model")
    if not isinstance(m, Mapping):
        raise CannotCheckError("no model section (model._component_): not a fine-tuning recipe vramplan reads")
    name = builder.rsplit(".", 1)[-1]
    if "lora" in name:
        o["method"] = "qlora" if name.startswith("qlora") or truthy(m.get("quantize_base", False)) else "lora"
        if o["method"] == "qlora":
            o["quant"], o["double_quant"] = "nf4", True     # torchao NF4Tensor (modules/peft/lora.py:86)
            o["kbit_prep"] = False                          # no peft prepare_model_for_kbit_training
        o["rank"] = as_int(m.get("lora_rank", 8), "model.lora_rank")
        o["alpha"] = m.get("lora_alpha", 16)
        o["lora_dropout"] = m.get("lora_dropout", 0.0)             # _model_builders.py:83-92
        attn = m.get("lora_attn_modules") or []
        if not isinstance(attn, list):
            raise ForeignConfigError("model.lora_attn_modules", f"must be a list, got {brief(attn)}")
        targets = [_ATTN.get(str(t), str(t)) for t in attn]
        if truthy(m.get("apply_lora_to_mlp", False)):
            targets += list(_MLP)
        if truthy(m.get("apply_lora_to_output", False)):
            targets.append("lm_head")
        o["targets"] = targets
        o["modules_to_save"] = None
    else:
        o["method"] = "full"
    o["batch"] = as_int(d.get("batch_size", 1), "batch_size")
    tok = d.get("tokenizer") if isinstance(d.get("tokenizer"), Mapping) else {}
    ds = d.get("dataset") if isinstance(d.get("dataset"), Mapping) else {}
    r.packing = truthy(ds.get("packed", False))
    msl = tok.get("max_seq_len")
    if msl is None:
        o["seq"] = None
        r.undecided["seq"] = ("tokenizer.max_seq_len: null (no truncation: the longest sample sets it); pass --seq")
    else:
        o["seq"] = as_int(msl, "tokenizer.max_seq_len")
    # training.set_default_dtype(dtype) builds base and adapters in that dtype (lora_finetune_single_device.py:410)
    dtype = str(d.get("dtype", "bf16")).lower()
    o["precision"] = {"bf16": "bf16-true", "fp32": "32-true", "fp16": "fp16-true"}.get(dtype)
    if o["precision"] is None:
        raise ForeignConfigError("dtype", f"must be bf16, fp16 or fp32, got {brief(dtype)}")
    o["grad_ckpt"] = truthy(d.get("enable_activation_checkpointing", False))
    # training.OffloadActivations saved-tensor hooks (recipes/lora_finetune_single_device.py:446-449, 480-486)
    o["act_offload"] = truthy(d.get("enable_activation_offloading", False))
    # gemma2 attention is explicit matmul + soft-capping (models/gemma2/_attention.py): the scores are materialised
    o["attn"] = "eager" if ".gemma2." in builder else "sdpa"
    opt = _component(d, "optimizer")
    o["optim"] = _OPTIMS.get(opt)
    section = d.get("optimizer")
    if o["optim"] == "adamw" and not (isinstance(section, Mapping) and truthy(section.get("fused", False))):
        o["optim"] = "adamw-foreach"      # torch.optim.AdamW without fused=True: foreach, its CUDA default
    if o["optim"] is None:
        r.ignored.append(f"optimizer {opt or '(none)'} (not modelled)")
    # training.register_optim_in_bwd_hooks: each parameter stepped in its post-accumulate-grad hook
    # (recipes/full_finetune_single_device.py; LoRA recipes have no such key)
    o["optim_in_bwd"] = truthy(d.get("optimizer_in_bwd", False))
    loss = _component(d, "loss")
    # CEWithChunkedOutputLoss: the decoder returns 8 chunks, each upcast in the loss (modules/loss/
    # ce_chunked_output_loss.py:30-80); LinearCrossEntropyLoss projects + CE per chunk without full logits
    o["loss"] = ("torchtune-chunked" if "CEWithChunkedOutputLoss" in loss
                 else "chunked" if any(c in loss for c in _CHUNKED) else "standard")
    if truthy(d.get("compile", False)):
        r.ignored.append("compile: True (torch.compile fuses kernels and changes activation memory: not modelled)")
    if recipe.endswith("single_device"):
        o["gpus"], o["strategy"], o["offload"] = 1, None, None
    else:          # *_distributed: FSDP2 fully_shard, fsdp_cpu_offload default False (full_finetune_distributed.py:145)
        o["gpus"] = nproc
        o["strategy"] = "fsdp" if truthy(d.get("fsdp_reshard_after_forward", True)) else "fsdp-grad-op"
        o["offload"] = "params" if truthy(d.get("fsdp_cpu_offload", False)) else "none"
        if d.get("custom_sharded_layers"):
            r.ignored.append(f"custom_sharded_layers {d['custom_sharded_layers']} (sharded separately: changes only "
                             "when the embedding is gathered)")
    return finish(r)
