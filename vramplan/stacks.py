"""Training stacks as data: what each framework does by default that changes memory, with its source.

``--stack NAME`` (a :class:`~vramplan.setup.Setup` option) names the framework the run is launched with. A stack
gives defaults to the options it decides (a flag given on the command line still wins) and lists what it does
that the estimator does not model yet, which every estimate for that stack reports as a warning, never silence.
The research behind every value, with file and line at the release read, is ``docs/stacks.md``; each entry here
cites the same source in one line.

This module is data: it imports nothing from the package, so :mod:`vramplan.setup` can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Default:
    """An option value a stack uses when the option is not given.

    ``when``: ``"always"``, ``"quantized"`` (only with a 4/8-bit base, e.g. LitGPT's paged AdamW),
    ``"unquantized"`` (only with a 16-bit base, e.g. LitGPT's fp32 frozen base under bf16-mixed) or ``"full"``
    (full fine-tuning only, e.g. torchtune's optimizer_in_bwd). ``gpus``: ``"any"``, ``"single"`` (one GPU) or
    ``"multi"`` (more than one, e.g. LitGPT's FSDP strategies). Of two defaults of one option that both apply,
    the later one wins.
    """

    option: str
    value: Any
    source: str
    when: str = "always"
    gpus: str = "any"

    def applies(self, *, quantized: bool, full: bool, gpus: int) -> bool:
        return _matches(self.when, self.gpus, quantized=quantized, full=full, gpus=gpus)


@dataclass(frozen=True)
class Refusal:
    """A setup the stack refuses to launch (its code raises): ``when`` and ``gpus`` as in :class:`Default`."""

    what: str
    source: str
    when: str = "always"
    gpus: str = "any"

    def applies(self, *, quantized: bool, full: bool, gpus: int) -> bool:
        return _matches(self.when, self.gpus, quantized=quantized, full=full, gpus=gpus)


@dataclass(frozen=True)
class Accepts:
    """The values of one option that the stack's code can run: any other is refused with a one-line error.

    ``when`` and ``gpus`` as in :class:`Default`; ``only_if`` narrows it to setups where another option has one
    value, e.g. ``("quant", "int8")`` for what only its int8 path demands.
    """

    option: str
    values: tuple[Any, ...]
    what: str                   # what its code does, e.g. "quantizes its base with torchao's to_nf4 only"
    source: str
    when: str = "quantized"
    gpus: str = "any"
    only_if: tuple[str, Any] | None = None

    def rejects(self, value_of: Mapping[str, Any], *, quantized: bool, full: bool, gpus: int) -> bool:
        """Whether a setup (its option values by field name) has a value outside :attr:`values` here."""
        return (_matches(self.when, self.gpus, quantized=quantized, full=full, gpus=gpus)
                and (self.only_if is None or value_of[self.only_if[0]] == self.only_if[1])
                and value_of[self.option] not in self.values)


def _matches(when: str, on: str, *, quantized: bool, full: bool, gpus: int) -> bool:
    if on not in ("any", "single", "multi") or when not in ("always", "quantized", "unquantized", "full"):
        raise ValueError(f"unknown condition when={when!r} gpus={on!r}")
    return ((when == "always" or when == ("quantized" if quantized else "unquantized") or (when == "full" and full))
            and (on == "any" or on == ("multi" if gpus > 1 else "single")))


@dataclass(frozen=True)
class Unmodelled:
    """A behaviour of the stack that moves memory and that the estimate does not follow yet.

    ``when``: ``"always"``, ``"training"``, ``"quantized"`` (QLoRA) or ``"lora"`` (LoRA or QLoRA).
    """

    what: str
    source: str
    when: str = "training"
    gpus: str = "any"           # as in Default: "any", "single" or "multi"


@dataclass(frozen=True)
class Stack:
    name: str
    title: str
    release: str                        # the release whose source the entries were read from
    defaults: tuple[Default, ...] = ()
    unmodelled: tuple[Unmodelled, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    #: option values its code can run (e.g. torchtune's QLoRA is NF4 only): another value is refused
    accepts: tuple[Accepts, ...] = ()
    cross_checked: bool = False         # whether its real code was run against the estimate (issue 14, item 4)
    #: the parts of its code that were run against the estimate's rules on CPU, when not the whole step
    checked_parts: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    #: its LoRA weights come from PEFT's get_peft_model, whose autocast_adapter_dtype=True (the default, peft
    #: 0.21.2 mapping_func.py:110, tuners_utils.py:628-641) makes bf16/fp16 adapters fp32 whatever the precision;
    #: False where the framework builds its own adapters in the model's dtype (torchtune, LitGPT)
    peft_adapters: bool = True
    #: it trains through the HF Trainer, whose default ``optim`` follows the transformers release (versions.CHANGES)
    hf_trainer: bool = True
    #: the library that stores and runs nf4 base weights: "bnb" (bitsandbytes Linear4bit) or "torchao" (its
    #: NF4Tensor and linear_nf4: torchtune's LoRALinear(quantize_base=True))
    nf4_kernel: str = "bnb"
    #: full fine-tuning loads the checkpoint in its own dtype and upcasts only the trainable parameters to fp32, so
    #: frozen parts (a vision tower under --train-vision) stay 16-bit where the HF Trainer's fp32 load makes them fp32
    frozen_in_checkpoint_dtype: bool = False
    #: its adapter loader calls model.enable_input_require_grads() whatever the setup, so the residual stream
    #: entering layer 0 requires grad and layer 0 saves what a frozen embedding's output would not need
    input_requires_grad: bool = False
    #: its model builders register the rotary cos/sin table as a buffer on the device at init: one fp32 table per
    #: model at the builder's max_seq_len (the checkpoint's max_position_embeddings), resident through training
    #: (torchtune 0.6.1 modules/position_embeddings.py:46-67, models/llama3_1/_position_embeddings.py:62-101,
    #: models/qwen2/_positional_embeddings.py:51-66; one rope shared by every layer,
    #: models/llama3_1/_component_builders.py:85, :208); measured (tests/estimate/test_stack_torchtune_cpu.py)
    rope_cache: bool = False
    #: its RMSNorm is ``F.rms_norm(x.float(), weight=scale).to(x.dtype)``: the 16-bit scale multiplies the fp32
    #: normalized rows and the cast comes after, so a trainable scale's multiply saves the fp32 rows (T x H x 4 B)
    #: where LlamaRMSNorm's ``weight * hidden.to(dtype)`` saves the 16-bit cast (torchtune 0.6.1
    #: modules/rms_norm.py:38-43); measured (tests/estimate/test_stack_torchtune_cpu.py, full_cases)
    rms_norm_fp32_scale: bool = False
    #: the model runs from Lightning Fabric's ``_FabricModule``, whose forward casts every floating output to
    #: ``torch.get_default_dtype()`` (``precision.convert_output``): the logits the loss sees and the loop keeps are
    #: fp32 in every precision (lightning 2.6.6 fabric/wrappers.py:130-141; plugins/precision/half.py:62-63,
    #: amp.py:71-72, bitsandbytes.py:156-157); measured (tests/estimate/test_stack_litgpt_cpu.py)
    fp32_model_output: bool = False
    #: the model is LitGPT's own GPT: RMSNorm multiplies by ``weight.float()`` in fp32 (litgpt 0.5.13
    #: model.py:1315-1322), LoRALinear feeds lora_A its input uncast (lora.py:165-172), and LoRA on some of q/k/v
    #: goes through zero_pad's index_copy_ (lora.py:288-326); measured (tests/estimate/test_stack_litgpt_cpu.py)
    litgpt_model: bool = False
    #: a quantized base's input embedding is swapped for a bitsandbytes ``StableEmbedding`` (an nn.Embedding + a
    #: LayerNorm(hidden)) after the trainable flags are set and after the optimizer is built over
    #: model.parameters(): the new weight and LayerNorm require grad but the optimizer neither steps nor zeroes
    #: them (their .grad persists from the first backward), its param_groups keep the replaced embedding alive, and
    #: layer 0's input requires grad (litgpt 0.5.13 finetune/lora.py:217-230; bitsandbytes 0.50.2 nn/modules.py
    #: StableEmbedding); measured (tests/estimate/test_stack_litgpt_cpu.py)
    stable_embedding: bool = False

    def defaults_for(self, quantized: bool, full: bool = False, gpus: int = 1) -> dict[str, Default]:
        """The defaults that apply to a setup, by option (the later of two for one option wins)."""
        return {d.option: d for d in self.defaults if d.applies(quantized=quantized, full=full, gpus=gpus)}

    def refusal_for(self, quantized: bool, full: bool = False, gpus: int = 1) -> Refusal | None:
        """What the stack's code raises for such a setup, or ``None`` when it launches."""
        return next((r for r in self.refusals if r.applies(quantized=quantized, full=full, gpus=gpus)), None)

    def rejected(self, value_of: Mapping[str, Any], *, quantized: bool, full: bool = False,
                 gpus: int = 1) -> Accepts | None:
        """The first :class:`Accepts` that a setup (its option values by field name) breaks, or ``None``."""
        return next((a for a in self.accepts if a.rejects(value_of, quantized=quantized, full=full, gpus=gpus)),
                    None)


_KBIT = "prepare_model_for_kbit_training is not called"

STACKS: Mapping[str, Stack] = {s.name: s for s in (
    Stack("hf", "HF Trainer + PEFT (the PEFT QLoRA recipe)", "transformers 5.24.0, peft 0.21.2",
          cross_checked=True,
          notes=("the estimator's reference stack: tests/estimate/test_activations_vs_torch.py and the simulation "
                 "run its real code on CPU",)),
    Stack("trl", "TRL SFTTrainer", "trl 1.16.0",
          checked_parts=("the fused LM head's saved tensors and peak (tests/estimate/test_loss_kinds_frameworks.py)",
                         "SFTTrainer's LoRA and QLoRA step on CPU, bf16 and float32 loads, with and without its "
                         "checkpointing: parameter dtypes, trainable counts, per-layer saved bytes and gradients "
                         "exact; whole-forward saves with pinned differences (tests/estimate/test_stack_trl_cpu.py)",
                         "SFTTrainer's full fine-tuning step on CPU, float32 and bfloat16 loads, with and without its "
                         "checkpointing: parameters, gradients, per-layer, head and whole-forward saves "
                         "(tests/estimate/test_stack_full_ft_cpu.py)"),
          defaults=(
        Default("kbit_prep", False, f"{_KBIT} since trl 0.26.0 (trl 1.16.0 trainer/sft_trainer.py: no call)"),
        Default("grad_ckpt", True, "SFTConfig.gradient_checkpointing=True since trl 0.22.0 "
                                   "(trl 1.16.0 trainer/base_config.py:62-67)"),
        Default("frozen_dtype", "fp32", "SFTTrainer(model=<name or path>) loads in float32 unless "
                                        "model_init_kwargs sets dtype; trl sft's ModelConfig.dtype defaults to "
                                        "float32 (trl 1.16.0 trainer/utils.py:1332, sft_trainer.py:541-547, "
                                        "model_config.py:89-95); measured (tests/estimate/test_stack_trl_cpu.py); "
                                        "--frozen-dtype compute states dtype=bfloat16"),
        Default("loss", "trl-fused", "add_fused_lm_head(outputs=(log_probs, entropy, is_top1)): tiles of min(N, "
                                     "4,096) tokens x 32,768 columns, no batch x seq x vocab logits, since trl 1.15.0 "
                                     "(trl 1.16.0 trainer/sft_trainer.py:1142-1147, :1611; trainer/utils.py:1548-1698; "
                                     "kernels/chunked_logprob.py:31, :347)"),
        Default("adapter_dtype", "compute", "QLoRA: every trainable parameter but DoRA's magnitude is cast to bf16 "
                                            "after get_peft_model (trl 1.16.0 trainer/sft_trainer.py:902-911)",
                "quantized"),
    ), unmodelled=(
        Unmodelled("the CPU/torch path of the fused LM head makes about seven more fp32 tiles; the estimate follows "
                   "the CUDA Triton path", "trl 1.16.0 trainer/utils.py:1548-1698", "training"),
        Unmodelled("under its float32 load the 4-bit base is quantized from fp32 (QuantState.dtype fp32): each "
                   "dequantization makes an fp32 weight that autocast casts to bf16 (--quant-state-dtype cannot "
                   "state fp32)", "trl 1.16.0 trainer/utils.py:1332", "quantized"),
    )),
    Stack("ms-swift", "ms-swift (swift sft)", "ms-swift 4.6.0",
          checked_parts=("its model build, LoRA/QLoRA injection, Seq2SeqTrainer loss and backward on a tiny Llama on "
                         "CPU: parameters, per-layer and whole-forward saved tensors, checkpoint inputs, gradients; "
                         "--tuner_type full in the checkpoint's bf16 (tests/estimate/test_stack_frameworks_cpu.py)",
                         "use_logits_to_keep with masked prompts, LoRA, QLoRA and full (tests/estimate/"
                         "test_logits_to_keep.py)"),
          defaults=(
        Default("targets", "all-linear", "target_modules=['all-linear'] (ms-swift 4.6.0 swift/arguments/"
                                         "tuner_args.py:126)"),
        Default("lora_dropout", 0.05, "lora_dropout=0.05 (ms-swift 4.6.0 swift/arguments/tuner_args.py:135)"),
        Default("kbit_prep", False, f"{_KBIT} (ms-swift 4.6.0: no call in the package; pipelines/train/tuner.py:"
                                    "403-407 only upcasts trainable fp16 parameters)"),
        Default("grad_ckpt", True, "gradient_checkpointing defaults to true (ms-swift 4.6.0 "
                                   "trainers/arguments.py:135)"),
        Default("train_vision", "none", "freeze_vit=True, freeze_aligner=True (ms-swift 4.6.0 swift/arguments/"
                                        "tuner_args.py:123-124); all-linear becomes get_multimodal_target_regex over "
                                        "the trained parts only (swift/pipelines/train/tuner.py:92-104, swift/utils/"
                                        "transformers_utils.py:208-260); full: _init_multimodal_full freezes them "
                                        "(tuner_args.py:204-220)"),
        Default("precision", "bf16-true", "full fine-tuning trains the checkpoint's bf16 weights: torch_dtype unset "
                                          "is the config's (ms-swift 4.6.0 model/model_meta.py:295-298), nothing "
                                          "upcasts them (pipelines/train/tuner.py:401-410: only fp16 trainables), and "
                                          "bf16=True's autocast (arguments/base_args/model_args.py:129-140) adds no "
                                          "copy to bf16 weights: no fp32 masters, bf16 gradients and AdamW states; "
                                          "measured (tests/estimate/test_stack_frameworks_cpu.py)", "full"),
        Default("logits_to_keep", True, "use_logits_to_keep=None turns on when the model's forward takes "
                                        "logits_to_keep (a multimodal model only under transformers >= 5): the "
                                        "logits start at the first supervised label, so --prompt-tokens shrinks them "
                                        "(ms-swift 4.6.0 trainers/arguments.py:165, trainers/mixin.py:213-225, "
                                        ":1271-1293, trainers/seq2seq_trainer.py:110-112); measured "
                                        "(tests/estimate/test_logits_to_keep.py)"),
    )),
    # frozen_in_checkpoint_dtype: torch_dtype="auto" (llamafactory 0.9.5 model/loader.py:155), then only trainable
    # parameters upcast to fp32 (model/adapter.py:38-54 _setup_full_tuning, :313-328)
    Stack("llama-factory", "LLaMA-Factory (llamafactory-cli train)", "llamafactory 0.9.5",
          frozen_in_checkpoint_dtype=True,
          checked_parts=("its model build, LoRA/QLoRA injection, CustomSeq2SeqTrainer loss and backward on a tiny "
                         "Llama on CPU: parameters, per-layer and whole-forward saved tensors, checkpoint inputs, "
                         "gradients (tests/estimate/test_stack_frameworks_cpu.py)",
                         "finetuning_type full (bf16: true, and pure_bf16) with and without checkpointing: parameters, "
                         "gradients, per-layer, head and whole-forward saves (tests/estimate/test_stack_full_ft_cpu.py)"),
          defaults=(
        Default("targets", "all-linear", "lora_target='all': the leaf name of every Linear but lm_head "
                                         "(llamafactory 0.9.5 hparams/finetuning_args.py:81-83, model/model_utils/"
                                         "misc.py:28-52 find_all_linear_modules)"),
        Default("kbit_prep", False, f"{_KBIT}; its own prepare_model_for_training upcasts nothing by default "
                                    "(llamafactory 0.9.5 model/model_utils/checkpointing.py:143-185)"),
        Default("grad_ckpt", True, "disable_gradient_checkpointing defaults to false (llamafactory 0.9.5 "
                                   "hparams/model_args.py:145)"),
        Default("train_vision", "none", "freeze_vision_tower=True, freeze_multi_modal_projector=True (llamafactory "
                                        "0.9.5 hparams/finetuning_args.py:527-534); lora_target=all drops the frozen "
                                        "parts (model/model_utils/misc.py:28-48, visual.py:173-211; adapter.py:"
                                        "206-213); full: _setup_full_tuning freezes them (adapter.py:38-54)"),
    )),
    # input_requires_grad: load_adapter always calls model.enable_input_require_grads() (axolotl 0.21.0
    # loaders/adapter.py:526-527); measured (tests/estimate/test_stack_axolotl_cpu.py)
    Stack("axolotl", "axolotl (axolotl train)", "axolotl 0.21.0", input_requires_grad=True,
          checked_parts=("its config validation, ModelLoader, load_adapter, AxolotlTrainer loss and backward on a tiny "
                         "Llama on CPU, LoRA/QLoRA and full fine-tuning with and without gradient checkpointing: "
                         "parameters, per-layer and whole-forward saves, gradients "
                         "(tests/estimate/test_stack_axolotl_cpu.py)",),
          defaults=(
        Default("kbit_prep", False, "prepare_model_for_kbit_training is called, then norms, embeddings and head "
                                    "are cast back to bf16: at steady state no fp32 copies and a bf16 residual "
                                    "stream (axolotl 0.21.0 loaders/model.py:1436-1444 the call, :606-646, :1407-1468)"),
        Default("grad_ckpt", False, "gradient_checkpointing defaults to off and is what it passes to "
                                    "prepare_model_for_kbit_training(use_gradient_checkpointing=...) (axolotl "
                                    "0.21.0 utils/schemas/config.py:641-676)"),
        Default("precision", "bf16-true", "full fine-tuning trains the weights in torch_dtype (bf16: auto on a bf16 "
                                          "GPU, utils/config/__init__.py:163-200), loaded so "
                                          "(loaders/model.py:959-960), no fp32 masters: bf16 gradients and AdamW "
                                          "states; the Trainer's bf16 autocast runs over it (axolotl 0.21.0)",
                "full"),
        Default("fp32_norms_embeddings", True, "full fine-tuning keeps the load-time fp32 upcast of the embeddings, "
                                               "head, norms and .gate routers: should_convert_embedding_dtypes is "
                                               "false without an adapter, FSDP, a flash/flex attention kernel or "
                                               "Cut Cross-Entropy (axolotl 0.21.0 loaders/model.py:174-188, "
                                               ":607-650, :1446-1468); measured "
                                               "(tests/estimate/test_stack_axolotl_cpu.py)", "full"),
    ), unmodelled=(
        Unmodelled("the load-time fp32 upcast of the norms before they are cast back",
                   "axolotl 0.21.0 loaders/model.py:1407-1448", "quantized"),
    )),
    Stack("torchtune", "torchtune (tune run)", "torchtune 0.6.1", peft_adapters=False, hf_trainer=False,
          nf4_kernel="torchao", rope_cache=True, rms_norm_fp32_scale=True,
          checked_parts=("its LoRA/QLoRA single-device recipe step on CPU (LoRAFinetuneRecipeSingleDevice.setup from the "
                         "shipped llama3_1 8B configs, _loss_step and backward, with and without activation "
                         "checkpointing): parameters as built, per-layer and whole-forward saves, checkpoint inputs, "
                         "gradients, the RoPE cache buffer (tests/estimate/test_stack_torchtune_cpu.py)",
                         "its full single-device recipe (llama3_1/8B_full_single_device.yaml; PagedAdamW8bit, "
                         "PagedAdamW and fused AdamW, optimizer_in_bwd on and off, with and without checkpointing): "
                         "parameters, gradients, every optimizer state, saves (tests/estimate/test_stack_torchtune_cpu.py)",
                         "CEWithChunkedOutputLoss", "OffloadActivations", "register_optim_in_bwd_hooks "
                         "(tests/estimate/test_loss_kinds_frameworks.py, test_act_offload*.py, test_optim_in_bwd*.py)",
                         "QLoRA's torchao NF4Tensor storage, linear_nf4's saved tensors and dequantization peak "
                         "(tests/estimate/test_torchao_nf4.py)"),
          defaults=(
        Default("kbit_prep", False, "no PEFT: nothing upcast (torchtune 0.6.1 recipes/lora_finetune_single_device.py"
                                    ":431 set_default_dtype(bf16))"),
        Default("precision", "bf16-true", "dtype: bf16 builds base and adapters in bf16, no autocast (torchtune "
                                          "0.6.1 recipes/lora_finetune_single_device.py:431 set_default_dtype; "
                                          "measured on CPU, docs/stacks.md)"),
        Default("grad_ckpt", True, "enable_activation_checkpointing: True in the shipped LoRA/QLoRA configs "
                                   "(torchtune 0.6.1 recipes/configs; the recipe default is off, "
                                   "recipes/lora_finetune_single_device.py:161-185)"),
        Default("loss", "torchtune-chunked", "CEWithChunkedOutputLoss in 133 of 153 shipped configs, every SFT one "
                                             "(torchtune 0.6.1 recipes/configs/llama3_1/8B_lora_single_device.yaml:70-71, "
                                             "8B_qlora_single_device.yaml:69-70); the recipe sets the chunked output "
                                             "and deletes the logits before backward "
                                             "(recipes/lora_finetune_single_device.py:300-302, :656-659)"),
        Default("kv_expand", True, "k.unsqueeze(2).expand(...).flatten(1, 2) before SDPA (torchtune 0.6.1 "
                                   "modules/attention.py:285-300)"),
        Default("optim_in_bwd", True, "optimizer_in_bwd: True in 15 full-finetune single-device/low-memory configs of "
                                      "torchtune 0.6.1, e.g. recipes/configs/llama3_1/8B_full_single_device.yaml:66; "
                                      "no LoRA recipe has it; every config that sets it is single-device or "
                                      "low-memory", "full", gpus="single"),
        Default("optim", "paged-adamw", "full_finetune_single_device: bitsandbytes.optim.PagedAdamW in 10 of the 17 "
                                        "configs that run it (e.g. recipes/configs/qwen2_5/7B_full_single_device.yaml, "
                                        "llama2/7B_full_low_memory.yaml); the Llama 3 ones (llama3/8B, llama3_1/8B, "
                                        "llama3_2/1B, 3B, 11B vision) use PagedAdamW8bit (--optim paged-adamw-8bit), "
                                        "qwen2/0.5B and qwen2_5/0.5B fused torch AdamW (torchtune 0.6.1 recipes/"
                                        "configs; tests/estimate/test_stack_torchtune_cpu.py full_configs)", "full",
                gpus="single"),
        Default("strategy", "fsdp", "the *_distributed recipes shard with FSDP2: fully_shard on every layers.i, "
                                    "then the root (torchtune 0.6.1 recipes/lora_finetune_distributed.py:472-484, "
                                    "full_finetune_distributed.py:583-596; training/_distributed.py:519-568 "
                                    "shard_model)", gpus="multi"),
        Default("fsdp_units", "root", "shard_model: fully_shard on every layers.i, then on the root holding "
                                      "tok_embeddings, norm and output, all reshard_after_forward=True: the root is "
                                      "resharded when forward returns and gathered again for backward (the estimate "
                                      "keeps it gathered: an upper bound) (torchtune 0.6.1 training/_distributed.py:"
                                      "519-568; torch 2.13 _fully_shard/_fsdp_state.py:395-420); measured on 2 gloo "
                                      "ranks (tests/estimate/test_fsdp_units.py)", gpus="multi"),
    ), accepts=(
        Accepts("quant", ("nf4",), "quantizes its QLoRA base with torchao's to_nf4 only (LoRALinear(quantize_base="
                "True), FrozenNF4Linear)", "torchtune 0.6.1 modules/peft/lora.py:74-78, modules/low_precision/"
                "nf4_linear.py; models/*/_component_builders.py"),
        Accepts("double_quant", (True,), "stores NF4 scales quantized again: to_nf4(weight) with torchao's "
                "scaler_block_size=256, which no builder lets a config change",
                "torchao 0.10.0 dtypes/nf4tensor.py:988-990 to_nf4; torchtune 0.6.1 modules/peft/lora.py:74-78"),
        Accepts("quant_blocksize", (64,), "quantizes in 64-value blocks: to_nf4's block_size=64, which no builder "
                "lets a config change", "torchao 0.10.0 dtypes/nf4tensor.py:988-990 to_nf4; torchtune 0.6.1 "
                "models/llama3_1/_component_builders.py"),
    ), unmodelled=(
        Unmodelled("a config's custom_sharded_layers (['tok_embeddings', 'output'] in 7 of its 71 distributed "
                   "configs) make the embedding and the head units of their own, resharded after forward; the "
                   "estimate keeps them in the root unit (an upper bound)",
                   "torchtune 0.6.1 training/_distributed.py:470-568 get_shard_conditions, shard_model", "training",
                   gpus="multi"),
    )),
    Stack("litgpt", "LitGPT (litgpt finetune)", "litgpt 0.5.13", peft_adapters=False, hf_trainer=False,
          fp32_model_output=True, litgpt_model=True, stable_embedding=True,
          checked_parts=("BitsandbytesPrecision's quantized head", "K/V expansion", "the fp32 frozen base under "
                         "autocast", "chunked_cross_entropy (tests/estimate/test_quant_head.py, test_kv_expand.py, "
                         "test_litgpt_frozen_fp32.py, test_loss_kinds_frameworks.py)",
                         "finetune/full.py's unchunked logits and loss (tests/estimate/test_litgpt_full_logits.py)",
                         "finetune/lora.py's whole step on a tiny Llama on CPU: Fabric bf16-mixed and bf16-true LoRA, "
                         "BitsandbytesPrecision nf4 QLoRA, with and without parallelize_fn's checkpointing, all "
                         "targets and the default query + value: parameters, per-layer and whole-forward saves, "
                         "gradients, kept logits (tests/estimate/test_stack_litgpt_cpu.py)"),
          defaults=(
        Default("kbit_prep", False, "no PEFT: nothing upcast (litgpt 0.5.13 finetune/lora.py)"),
        Default("grad_ckpt", False, "no activation checkpointing on one GPU (litgpt 0.5.13 finetune/lora.py:164, "
                                    "full.py:116: strategy 'auto')", gpus="single"),
        Default("grad_ckpt", True, "every Block checkpoint-wrapped on more than one GPU (litgpt 0.5.13 finetune/"
                                   "lora.py:522-528 parallelize_fn(activation_checkpointing=True); full.py:108-114 "
                                   "activation_checkpointing_policy={Block})", gpus="multi"),
        Default("strategy", "fsdp", "ModelParallelStrategy(parallelize_fn): fully_shard on every Block and the root, "
                                    "FSDP2 (litgpt 0.5.13 finetune/lora.py:152-162, :522-541)", gpus="multi"),
        Default("fsdp_units", "root", "parallelize_fn: fully_shard on every Block, then fully_shard(model) with "
                                      "reshard_after_forward unset: the root (wte, ln_f, lm_head) is not resharded "
                                      "after forward and is freed at the end of backward (litgpt 0.5.13 finetune/"
                                      "lora.py:522-541; torch 2.13 _fully_shard/_fsdp_state.py:203-207, :395-420); "
                                      "measured on 2 gloo ranks (tests/estimate/test_fsdp_units.py)", gpus="multi"),
        Default("strategy", "fsdp1", "FSDPStrategy(auto_wrap_policy={Block}), FULL_SHARD (litgpt 0.5.13 finetune/"
                                     "full.py:107-114; lightning 2.6.6 fabric/strategies/fsdp.py:151)", "full",
                gpus="multi"),
        Default("optim", "paged-adamw", "--quantize always uses bitsandbytes' PagedAdamW, 32-bit (litgpt 0.5.13 "
                                        "finetune/lora.py:218-233)", "quantized"),
        Default("optim", "adamw-foreach", "optimizer='AdamW' -> torch.optim.AdamW(model.parameters()) with no fused "
                                          "flag: foreach on CUDA (litgpt 0.5.13 finetune/lora.py:231, full.py:160, "
                                          "utils.py:636-653 instantiate_torch_optimizer)", "unquantized"),
        Default("precision", "bf16-true", "--quantize refuses the default bf16-mixed: the README's QLoRA config "
                                          "sets precision: bf16-true (litgpt 0.5.13 finetune/lora.py:131-143)",
                "quantized"),
        Default("double_quant", False, "--quantize bnb.nf4, as the README's QLoRA config writes it: _NF4Linear, "
                                       "compress_statistics=False; bnb.nf4-dq is --double-quant (litgpt 0.5.13 "
                                       "README quantize: bnb.nf4; lightning 2.6.6 fabric/plugins/precision/"
                                       "bitsandbytes.py:401-407)", "quantized"),
        Default("quant_head", True, "BitsandbytesPrecision replaces every nn.Linear, the head included: litgpt 0.5.13 "
                                    "finetune/lora.py:149 passes no ignore_modules (lightning 2.6.6 fabric/plugins/"
                                    "precision/bitsandbytes.py:425-448 _convert_layers); measured on CPU "
                                    "(tests/estimate/test_quant_head.py)", "quantized"),
        Default("quant_state_dtype", "fp16", "_Linear4bit.quantize casts to fp16 first whatever the precision "
                                             "(lightning 2.6.6 fabric/plugins/precision/bitsandbytes.py:336-351 "
                                             "weight.contiguous().to(dtype=torch.half))", "quantized"),
        Default("frozen_dtype", "fp32", "default precision bf16-mixed (litgpt 0.5.13 finetune/lora.py:131, utils.py:"
                                        "363-380 get_default_supported_precision(training=True)) only autocasts "
                                        "(lightning 2.6.6 fabric/plugins/precision/amp.py): the frozen base stays "
                                        "fp32; measured (tests/estimate/test_litgpt_frozen_fp32.py)", "unquantized"),
        Default("kv_expand", True, "k/v.repeat_interleave(q_per_kv, dim=1) before SDPA (litgpt 0.5.13 model.py:"
                                   "533-539); measured (tests/estimate/test_kv_expand.py)"),
        Default("loss", "litgpt-chunked", "model(input_ids, lm_head_chunk_size=128) + chunked_cross_entropy; the "
                                          "logits list lives through backward and optimizer.step() (litgpt 0.5.13 "
                                          "finetune/lora.py:355-366, adapter.py:304-307, utils.py:302-330, "
                                          "model.py:177-179)"),
        Default("loss", "litgpt-full", "full fine-tuning: model(input_ids) makes one batch x seq x vocab logits "
                                       "tensor, kept through backward; chunked_cross_entropy copies the shifted "
                                       "logits at batch > 1 and splits them into 128-row chunks (litgpt 0.5.13 "
                                       "finetune/full.py:282-284, utils.py:302-350); measured "
                                       "(tests/estimate/test_litgpt_full_logits.py)", "full"),
    ), accepts=(
        Accepts("quant", ("nf4", "fp4", "int8"), "--quantize takes bnb.nf4, bnb.nf4-dq, bnb.fp4, bnb.fp4-dq or "
                "bnb.int8-training only", "litgpt 0.5.13 finetune/lora.py:53"),
        Accepts("precision", ("bf16-true", "fp16-true", "32-true"), "refuses a quantized base under mixed precision "
                "(ValueError: 'Quantization and mixed precision is not supported')",
                "litgpt 0.5.13 finetune/lora.py:141-143"),
        Accepts("precision", ("fp16-true",), "runs bnb.int8-training in float16 only (ValueError: 'int8-training' "
                "only works with dtype=torch.float16)", "lightning 2.6.6 fabric/plugins/precision/bitsandbytes.py:"
                "86-88", only_if=("quant", "int8")),
        Accepts("quant_blocksize", (64,), "quantizes in bitsandbytes' default 64-value blocks: BitsandbytesPrecision "
                "passes no blocksize", "lightning 2.6.6 fabric/plugins/precision/bitsandbytes.py:393-407; "
                "bitsandbytes 0.50.2 nn/modules.py:230-231"),
    ), refusals=(
        Refusal("cannot train a quantized base on more than one GPU (NotImplementedError: 'Quantization is currently "
                "not supported for multi-GPU training')", "litgpt 0.5.13 finetune/lora.py:152-156", "quantized",
                gpus="multi"),
    ), unmodelled=(
        Unmodelled("--quantize's StableEmbedding (modelled: its trainable weight and LayerNorm, their never-zeroed "
                   "gradients, the replaced embedding the optimizer keeps, layer 0's input gradient) also saves "
                   "the token ids (int64) and its LayerNorm's input and mean/rstd (tokens x (hidden + 2) 16-bit), "
                   "and its backward makes a transient vocab x hidden gradient before accumulating it into .grad: "
                   "not counted; measured (tests/estimate/test_stack_litgpt_cpu.py)",
                   "litgpt 0.5.13 finetune/lora.py:217-230; bitsandbytes 0.50.2 nn/modules.py StableEmbedding",
                   "quantized"),
        Unmodelled("LoRA on query/key/value is one fused LoRAQKVLinear: under autocast one bf16 copy of its input "
                   "where the estimate counts one per adapted projection (bf16-mixed with the default query + "
                   "value: one tokens x hidden copy per layer fewer); measured "
                   "(tests/estimate/test_stack_litgpt_cpu.py)", "litgpt 0.5.13 lora.py:381-415", "lora"),
    )),
    Stack("unsloth", "Unsloth (FastLanguageModel + TRL)", "unsloth 2026.10.9", defaults=(
        Default("kbit_prep", False, "its own prepare_model_for_training upcasts nothing frozen (unsloth_zoo "
                                    "2026.10.9 training_utils.py:403-458)"),
        Default("grad_ckpt", True, "use_gradient_checkpointing='unsloth' (unsloth 2026.10.9 models/llama.py:4579)"),
        Default("optim", "adamw-8bit", "Unsloth's patched TRL configs default to adamw_8bit (unsloth 2026.10.9 models/rl.py:3310-3325)"),
        Default("loss", "chunked", "fused cross-entropy, no batch x seq x vocab logits (unsloth 2026.10.9 models/llama.py:2087-2124)"),
        Default("act_offload", True, "use_gradient_checkpointing='unsloth' offloads the checkpointed layer inputs "
                                     "(unsloth 2026.10.9 models/llama.py:4579; unsloth_zoo 2026.10.9 "
                                     "gradient_checkpointing.py:1305-1313, :1337-1560)"),
    ), unmodelled=(
        Unmodelled("its fused cross-entropy sizes chunks to min(4 GiB, half of free memory)",
                   "unsloth_zoo 2026.10.9 fused_losses/cross_entropy_loss.py:225-303"),
        Unmodelled("patched modules are compiled, which changes which tensors are saved", "unsloth 2026.10.9 kernels/",
                   "always"),
    )),
)}

STACK_NAMES: tuple[str, ...] = tuple(STACKS)


def applies(u: Unmodelled, *, training: bool, quantized: bool, lora: bool, gpus: int = 1) -> bool:
    """Whether an unmodelled behaviour concerns a setup (QLoRA-only behaviours do not concern a bf16 LoRA)."""
    return ({"always": True, "training": training, "quantized": training and quantized,
             "lora": training and lora and not quantized}[u.when]
            and u.gpus in ("any", "multi" if gpus > 1 else "single"))
