"""axolotl training YAML (``axolotl train x.yml``) -> setup options.

Rules from axolotl-ai-cloud/axolotl at 067b021c (``src/axolotl/utils/schemas/*.py``,
``utils/config/__init__.py``, ``loaders/model.py``, ``loaders/adapter.py``), cited per rule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import CannotCheckError, ForeignConfigError
from ..io import brief
from .hf import TRAINER_OPTIMS
from .reading import Reading, deepspeed_options, finish
from .util import as_int, truthy

#: axolotl keys forwarded to PEFT's LoraConfig -> vramplan LoRA options (loaders/adapter.py:140-200 at 067b021c,
#: schemas/peft.py:53-124); axolotl always passes bias="none" (adapter.py:198)
PEFT_KEYS = {"lora_target_parameters": "target_parameters", "lora_rank_pattern": "rank_pattern",
             "lora_alpha_pattern": "alpha_pattern", "peft_layers_to_transform": "layers_to_transform",
             "peft_layers_pattern": "layers_pattern", "peft_trainable_token_indices": "trainable_tokens"}
#: axolotl PEFT keys that change memory and are not modelled (adapter.py:140-164)
_PEFT_UNMODELLED = {"peft_layer_replication": "layers replicated with their own adapters",
                    "peft_ensure_weight_tying": "tied layers share their adapters"}


def _peft_keys(d: Mapping[str, Any], o: dict[str, Any], r: Reading) -> None:
    """The PEFT ``LoraConfig`` fields axolotl forwards beyond rank, alpha, dropout and targets."""
    for key, name in PEFT_KEYS.items():
        v = d.get(key)
        if v is not None and v != [] and v != {}:
            o[name] = [v] if key == "lora_target_parameters" and isinstance(v, str) else v
    ex = d.get("lora_exclude_modules")        # getattr(cfg, "lora_exclude_modules", None) or None (adapter.py:197)
    if ex:
        o["exclude_regex" if isinstance(ex, str) else "exclude_modules"] = ex
    for key, what in _PEFT_UNMODELLED.items():
        if truthy(d.get(key) or False):
            r.ignored.append(f"{key} ({what}: not modelled)")
    init = d.get("peft_init_lora_weights")
    if init not in (None, True, False) and str(init).lower() not in ("true", "false", "gaussian", "orthogonal"):
        r.ignored.append(f"peft_init_lora_weights {init} (its initialization pass is not modelled; the step is "
                         "plain LoRA)")
    peft = d.get("peft")
    if isinstance(peft, Mapping) and isinstance(peft.get("loftq_config"), Mapping) \
            and peft["loftq_config"].get("loftq_bits"):
        r.ignored.append("peft.loftq_config (LoftQ quantizes the base itself: not modelled)")
    if d.get("peft_autocast_adapter_dtype") is not None and not truthy(d["peft_autocast_adapter_dtype"]):
        o["adapter_dtype"] = "compute"        # get_peft_model(autocast_adapter_dtype=False): base-dtype adapters


#: optimizer names axolotl takes that vramplan does not model (torchao low-bit AdamW and others)
_TORCHAO = {"adamw_torch_4bit": "torchao 4-bit states", "adamw_torch_8bit": "torchao 8-bit states"}


def _words(v: Any) -> list[str]:
    """A list value as strings (a scalar is one item)."""
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def _optimizer(d: Mapping[str, Any], r: Reading) -> str | None:
    name = d.get("optimizer")
    if name is None:
        return "adamw"             # TrainingArguments default adamw_torch_fused
    if not isinstance(name, str):
        raise ForeignConfigError("optimizer", f"must be an optimizer name such as adamw_torch, got {brief(name)}")
    if name in TRAINER_OPTIMS:
        return TRAINER_OPTIMS[name]
    why = _TORCHAO.get(name, "not in vramplan's --optim list")
    r.ignored.append(f"optimizer {name} ({why}: optimizer not modelled)")
    return None


def read_axolotl(d: Mapping[str, Any], file: str | os.PathLike[str] | None = None) -> Reading:
    """axolotl keys -> a :class:`Reading`.

    Raises:
        CannotCheckError: ``rl`` (DPO, KTO, ...), ``reward_model``, ``context_parallel_size`` > 1, full
            fine-tuning of ``unfrozen_parameters`` only.
        ForeignConfigError: a value that cannot be read, naming its key.
    """
    model = d.get("base_model")
    if not isinstance(model, str) or not model:
        raise ForeignConfigError("base_model", f"must name a model, got {brief(model)}")
    r = Reading("axolotl", model)
    o = r.options
    o["stack"] = "axolotl"
    if d.get("rl"):
        r.stage = str(d["rl"]).lower()
        raise CannotCheckError(f"rl: {r.stage} (TRL {r.stage.upper()} trainer via axolotl: chosen/rejected forwards "
                               "and reference log-probs) is not modelled")
    if truthy(d.get("reward_model", False)) or truthy(d.get("process_reward_model", False)):
        r.stage = "rm"
        raise CannotCheckError("reward_model: a sequence-classification head on pairwise batches (TRL "
                               "RewardTrainer) is not modelled")
    cp = d.get("context_parallel_size")
    if cp is not None and as_int(cp, "context_parallel_size") > 1:
        raise CannotCheckError(f"context_parallel_size: {cp} (each sequence split over {cp} ranks) is not modelled"
                               + ("; nor tiled_mlp" if truthy(d.get("tiled_mlp", False)) else ""))
    r.stage = "pt" if d.get("pretraining_dataset") else "sft"
    adapter = d.get("adapter")
    adapter = str(adapter).lower() if adapter else None
    if adapter not in (None, "lora", "qlora"):
        raise CannotCheckError(f"adapter {brief(adapter)} is not modelled; lora and qlora are")
    if adapter is None and d.get("unfrozen_parameters"):
        raise CannotCheckError("unfrozen_parameters: full fine-tuning of the matching parameters only "
                               "(utils/freeze.py freeze_layers_except): partial training is not modelled")
    four, eight = truthy(d.get("load_in_4bit", False)), truthy(d.get("load_in_8bit", False))
    if adapter is None:
        if four or eight:
            raise ForeignConfigError("load_in_4bit" if four else "load_in_8bit",
                                     "full fine-tuning of a quantized model is not possible; set adapter: lora or qlora")
        o["method"] = "full"
    elif four or (adapter == "qlora" and not eight):
        o["method"], o["quant"], o["double_quant"] = "qlora", "nf4", True      # loaders/model.py:712-738
    elif eight:
        o["method"], o["quant"] = "qlora", "int8"                              # loaders/model.py:740-752
    else:
        o["method"] = "lora"
    if adapter is not None:
        for src, dst in (("lora_r", "rank"), ("lora_alpha", "alpha")):
            if d.get(src) is not None:
                o[dst] = as_int(d[src], src)
        o["lora_dropout"] = d.get("lora_dropout") if d.get("lora_dropout") is not None else 0.0  # schemas/peft.py:80
        mts = d.get("lora_modules_to_save")
        o["modules_to_save"] = mts if mts else None
        if d.get("peft_use_dora") is not None:
            o["dora"] = truthy(d["peft_use_dora"])
        if truthy(d.get("lora_target_linear", False)):          # loaders/adapter.py:54-71, 171-182
            o["targets"] = "all-linear"
        elif d.get("lora_target_modules") is not None:
            o["targets"] = d["lora_target_modules"]
        if d.get("unfrozen_parameters"):
            r.ignored.append(f"unfrozen_parameters ({', '.join(_words(d['unfrozen_parameters']))[:80]}: "
                             "parameters trained beside the adapter: not modelled)")
        _peft_keys(d, o, r)
    o["batch"] = as_int(d.get("micro_batch_size", 1), "micro_batch_size")       # schemas/training.py:77
    o["seq"] = as_int(d.get("sequence_len", 512), "sequence_len")               # schemas/config.py:665
    # bf16: auto -> True on a bf16 GPU (utils/config/__init__.py:156-167), model loaded in that dtype
    # (loaders/model.py:611-612): a full fine-tune is bf16 throughout; LoRA adapters fp32 (PEFT autocast).
    # `bf16: full` only adds bf16_full_eval (core/builders/base.py:273-274).
    bf16 = d.get("bf16")
    half = "bf16" if (bf16 is not None and truthy(bf16)) else "fp16" if truthy(d.get("fp16", False)) else "32"
    if half == "32":
        o["precision"] = "32-true"
    elif o["method"] == "full":
        o["precision"] = f"{half}-true"
    else:
        o["precision"] = f"{half}-mixed"
    gc = d.get("gradient_checkpointing", False)
    if isinstance(gc, str) and gc.strip().lower() == "offload":
        o["grad_ckpt"] = True
        r.ignored.append("gradient_checkpointing: offload (CPU-offloaded checkpoints: not modelled)")
    else:
        o["grad_ckpt"] = truthy(gc)
    if d.get("activation_offloading"):
        r.ignored.append(f"activation_offloading: {d['activation_offloading']} (activations offloaded to CPU: "
                         "not modelled)")
    impl = str(d.get("attn_implementation") or "").lower()
    if "flash" in impl or truthy(d.get("flash_attention", False)):
        o["attn"] = "flash"
    elif impl == "eager" or truthy(d.get("eager_attention", False)):
        o["attn"] = "eager"
    else:
        o["attn"] = "sdpa"
    o["optim"] = _optimizer(d, r)
    plugins = " ".join(_words(d.get("plugins")))
    chunked = ("CutCrossEntropyPlugin" in plugins or truthy(d.get("cut_cross_entropy", False))
               or truthy(d.get("liger_fused_linear_cross_entropy", False))
               or truthy(d.get("chunked_cross_entropy", False)))
    o["loss"] = "chunked" if chunked else "standard"
    liger = [k for k in ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm",
                         "liger_swiglu") if truthy(d.get(k, False))]
    if liger:
        r.ignored.append(f"{' / '.join(liger)} (Liger kernels change activation memory: not modelled)")
    kernels = [k for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel") if truthy(d.get(k, False))]
    if kernels:
        r.ignored.append(f"{'/'.join(kernels)} (fused LoRA autograd functions save fewer activations: not modelled)")
    if truthy(d.get("flash_attn_fuse_mlp", False)):
        r.ignored.append("flash_attn_fuse_mlp: true (fused MLP kernel: not modelled)")
    if truthy(d.get("tiled_mlp", False)):
        r.ignored.append("tiled_mlp: true (MLP computed in tiles: not modelled)")
    mc = d.get("model_config")
    if isinstance(mc, Mapping) and truthy(mc.get("output_router_logits", False)):
        r.ignored.append("model_config.output_router_logits: true (router aux loss: negligible)")
    r.packing = truthy(d.get("sample_packing", False))
    o["gpus"] = int(as_int(d["ray_num_workers"], "ray_num_workers")) if truthy(d.get("use_ray", False)) \
        and d.get("ray_num_workers") is not None else None
    o["strategy"] = None
    o["offload"] = None
    if d.get("deepspeed"):
        ds = deepspeed_options(d["deepspeed"], file, "deepspeed")
        o["strategy"], o["offload"] = ds["strategy"], ds["offload"]
        r.ignored += ds["ignored"]
        r.references += ds["references"]
    fsdp = d.get("fsdp")
    fc = d.get("fsdp_config")
    if fsdp or (isinstance(fc, Mapping) and d.get("fsdp_version") is not None):
        if fc is not None and not isinstance(fc, Mapping):
            raise ForeignConfigError("fsdp_config", f"must be a mapping, got {brief(fc)}")
        fc = fc or {}
        words = " ".join(_words(fsdp))
        version = str(d.get("fsdp_version", fc.get("fsdp_version", 1)))
        if version == "2":
            reshard = fc.get("reshard_after_forward", fc.get("fsdp_reshard_after_forward", True))
            o["strategy"] = "fsdp" if truthy(reshard) else "fsdp-grad-op"
        else:
            ss = str(fc.get("fsdp_sharding_strategy", "")).lower()
            o["strategy"] = "fsdp-grad-op" if ("shard_grad_op" in words or ss == "shard_grad_op") else "fsdp"
        offload = fc.get("fsdp_offload_params", fc.get("offload_params", False)) or "offload" in words
        o["offload"] = "params" if truthy(offload) else "none"
    if o["method"] == "qlora":
        # prepare_model_for_kbit_training runs for 4/8-bit adapters except under qlora+FSDP, FSDP
        # cpu_ram_efficient_loading or ZeRO-3 (loaders/model.py:997-1023); where it runs, any adapter makes
        # should_convert_embedding_dtypes true (needs_fa2_dtype = bool(cfg.adapter or fsdp), axolotl 0.21.0
        # loaders/model.py:174-188, at 067b021c the same), so norms, embeddings and head are cast back to bf16
        # (:643-650) whatever the attention kernel: frozen weights end bf16, as axolotl's real step measured
        # (tests/estimate/test_stack_axolotl_cpu.py, sdpa)
        o["kbit_prep"] = False
        if adapter == "qlora" and (fsdp is not None or fc is not None):
            # ... except under qlora + FSDP, where nothing casts them back and the load-time fp32 upcast of norms,
            # embeddings and head stays (upcast_embeddings, loaders/model.py:612-624; at 067b021c FSDP skipped it)
            o["fp32_norms_embeddings"] = True
    if o["method"] == "full":
        # without an adapter the load-time fp32 upcast of norms, embeddings, head and .gate routers
        # (_convert_embedding_modules_dtype, loaders/model.py:607-624, :1446-1468) is cast back only for FSDP, an
        # attention kernel other than eager/sdpa (attn_needs_dtype_cast: utils/schemas/config.py:1606-1611,
        # enums.py:171; the legacy flags map to kernels, enums.py:128-135) or Cut Cross-Entropy (model.py:174-188)
        attn_cast = impl not in ("", "eager", "sdpa") or any(
            truthy(d.get(k, False)) for k in ("flash_attention", "flex_attention", "xformers_attention",
                                               "sage_attention"))
        cce = "CutCrossEntropyPlugin" in plugins or truthy(d.get("cut_cross_entropy", False))
        o["fp32_norms_embeddings"] = not (fsdp is not None or fc is not None or attn_cast or cce)
    return finish(r)


def from_axolotl(d: Mapping[str, Any]) -> dict[str, Any]:
    """axolotl (``axolotl train x.yml``) keys -> plan keys: :func:`read_axolotl`'s options."""
    r = read_axolotl(d)
    return {"model": r.model, **r.setup_options()}


#: plan keys this reader sets -> the axolotl keys they come from (errors name the user's key)
KEY_SOURCES = {**{v: k for k, v in PEFT_KEYS.items()}, "exclude_modules": "lora_exclude_modules",
               "exclude_regex": "lora_exclude_modules", "adapter_dtype": "peft_autocast_adapter_dtype",
               "model": "base_model", "rank": "lora_r", "alpha": "lora_alpha", "lora_dropout": "lora_dropout",
               "modules_to_save": "lora_modules_to_save", "dora": "peft_use_dora", "targets": "lora_target_modules",
               "batch": "micro_batch_size", "seq": "sequence_len", "grad_ckpt": "gradient_checkpointing",
               "optim": "optimizer"}
