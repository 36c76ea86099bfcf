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

    ``when``: ``"always"``, or ``"quantized"`` (only with a 4/8-bit base, e.g. LitGPT's paged AdamW).
    """

    option: str
    value: Any
    source: str
    when: str = "always"


@dataclass(frozen=True)
class Unmodelled:
    """A behaviour of the stack that moves memory and that the estimate does not follow yet.

    ``when``: ``"always"``, ``"training"``, ``"quantized"`` (QLoRA) or ``"lora"`` (LoRA or QLoRA).
    """

    what: str
    source: str
    when: str = "training"


@dataclass(frozen=True)
class Stack:
    name: str
    title: str
    release: str                        # the release whose source the entries were read from
    defaults: tuple[Default, ...] = ()
    unmodelled: tuple[Unmodelled, ...] = ()
    cross_checked: bool = False         # whether its real code was run against the estimate (issue 14, item 4)
    notes: tuple[str, ...] = field(default=())

    def defaults_for(self, quantized: bool) -> dict[str, Default]:
        """The defaults that apply to a setup with (or without) a quantized base, by option name."""
        return {d.option: d for d in self.defaults if d.when == "always" or (d.when == "quantized" and quantized)}


_KBIT = "prepare_model_for_kbit_training is not called"

STACKS: Mapping[str, Stack] = {s.name: s for s in (
    Stack("hf", "HF Trainer + PEFT (the PEFT QLoRA recipe)", "transformers 5.24.0, peft 0.21.2",
          cross_checked=True,
          notes=("the estimator's reference stack: tests/estimate/test_activations_vs_torch.py and the simulation "
                 "run its real code on CPU",)),
    Stack("trl", "TRL SFTTrainer", "trl 1.16.0", defaults=(
        Default("kbit_prep", False, f"{_KBIT} since trl 0.26.0 (trl 1.16.0 trainer/sft_trainer.py: no call)"),
        Default("grad_ckpt", True, "SFTConfig.gradient_checkpointing=True since trl 0.22.0 "
                                   "(trl 1.16.0 trainer/base_config.py:62-67)"),
        Default("loss", "chunked", "the loss goes through a fused LM head, no batch x seq x vocab logits, since "
                                   "trl 1.15.0 (trl 1.16.0 trainer/sft_trainer.py:1125-1147); modelled as vramplan's "
                                   "chunked loss"),
    ), unmodelled=(
        Unmodelled("QLoRA adapters cast to bf16 after get_peft_model (the estimate keeps fp32 adapters under "
                   "autocast)", "trl 1.16.0 trainer/sft_trainer.py:846-857", "quantized"),
        Unmodelled("the fused LM head's 4,096 x 32,768 tile differs from the chunked loss's chunk",
                   "trl 1.16.0 trainer/utils.py:1548-1698, kernels/chunked_logprob.py:31"),
    )),
    Stack("ms-swift", "ms-swift (swift sft)", "ms-swift 4.6.0", defaults=(
        Default("kbit_prep", False, f"{_KBIT} (ms-swift 4.6.0: no call in the package; pipelines/train/tuner.py:"
                                    "403-407 only upcasts trainable fp16 parameters)"),
        Default("grad_ckpt", True, "gradient_checkpointing defaults to true (ms-swift 4.6.0 "
                                   "trainers/arguments.py:135)"),
    )),
    Stack("llama-factory", "LLaMA-Factory (llamafactory-cli train)", "llamafactory 0.9.5", defaults=(
        Default("kbit_prep", False, f"{_KBIT}; its own prepare_model_for_training upcasts nothing by default "
                                    "(llamafactory 0.9.5 model/model_utils/checkpointing.py:143-185)"),
        Default("grad_ckpt", True, "disable_gradient_checkpointing defaults to false (llamafactory 0.9.5 "
                                   "hparams/model_args.py:145)"),
    )),
    Stack("axolotl", "axolotl (axolotl train)", "axolotl 0.21.0", defaults=(
        Default("kbit_prep", False, "prepare_model_for_kbit_training is called, then norms, embeddings and head "
                                    "are cast back to bf16: at steady state no fp32 copies and a bf16 residual "
                                    "stream (axolotl 0.21.0 loaders/model.py:606-646, :1407-1468)"),
        Default("grad_ckpt", False, "gradient_checkpointing defaults to off and is what it passes to "
                                    "prepare_model_for_kbit_training(use_gradient_checkpointing=...) (axolotl "
                                    "0.21.0 utils/schemas/config.py:641-676)"),
    ), unmodelled=(
        Unmodelled("the load-time fp32 upcast of the norms before they are cast back",
                   "axolotl 0.21.0 loaders/model.py:1407-1448", "quantized"),
    )),
    Stack("torchtune", "torchtune (tune run)", "torchtune 0.6.1", defaults=(
        Default("kbit_prep", False, "no PEFT: nothing upcast (torchtune 0.6.1 recipes/lora_finetune_single_device.py"
                                    ":431 set_default_dtype(bf16))"),
        Default("precision", "bf16-true", "dtype: bf16 builds base and adapters in bf16, no autocast (torchtune "
                                          "0.6.1 recipes/lora_finetune_single_device.py:431 set_default_dtype; "
                                          "measured on CPU, docs/stacks.md)"),
        Default("grad_ckpt", True, "enable_activation_checkpointing: True in the shipped LoRA/QLoRA configs "
                                   "(torchtune 0.6.1 recipes/configs; the recipe default is off, "
                                   "recipes/lora_finetune_single_device.py:161-185)"),
    ), unmodelled=(
        Unmodelled("QLoRA quantizes with torchao's NF4Tensor, not bitsandbytes (a different layout and no saved "
                   "input)", "torchtune 0.6.1 modules/peft/lora.py (LoRALinear quantize_base), torchao NF4Tensor", "quantized"),
        Unmodelled("CEWithChunkedOutputLoss (8 chunks upcast to fp32 one at a time) lowers the loss's backward "
                   "peak; the estimate uses the standard loss", "torchtune 0.6.1 modules/loss/ce_chunked_output_loss.py:30-80"),
        Unmodelled("K and V are expanded to every query head before attention (+2 x tokens x (heads - kv_heads) x "
                   "head_dim x 2 B per layer)", "torchtune 0.6.1 modules/attention.py:285-300", "always"),
    )),
    Stack("litgpt", "LitGPT (litgpt finetune)", "litgpt 0.5.13", defaults=(
        Default("kbit_prep", False, "no PEFT: nothing upcast (litgpt 0.5.13 finetune/lora.py)"),
        Default("grad_ckpt", False, "no activation checkpointing on one GPU (litgpt 0.5.13 finetune/lora.py:522-543)"),
        Default("optim", "paged-adamw", "--quantize always uses bitsandbytes' PagedAdamW, 32-bit (litgpt 0.5.13 "
                                        "finetune/lora.py:218-233)", "quantized"),
        Default("precision", "bf16-true", "--quantize accepts only bf16-true (litgpt 0.5.13 finetune/lora.py:131)",
                "quantized"),
    ), unmodelled=(
        Unmodelled("BitsandbytesPrecision quantizes every nn.Linear, the output head included (measured on CPU)",
                   "lightning 2.6.6 fabric/plugins/precision/bitsandbytes.py:425-448", "quantized"),
        Unmodelled("its default bf16-mixed keeps the frozen base in fp32 (about 4 B per frozen parameter)",
                   "lightning 2.6.6 fabric/plugins/precision/amp.py (autocast only); litgpt 0.5.13 finetune/lora.py:131", "lora"),
        Unmodelled("the logits (128-token chunks) stay alive through backward", "litgpt 0.5.13 finetune/lora.py:355-359"),
        Unmodelled("K and V are expanded to every query head before attention", "litgpt 0.5.13 model.py:533-539", "always"),
    )),
    Stack("unsloth", "Unsloth (FastLanguageModel + TRL)", "unsloth 2026.10.9", defaults=(
        Default("kbit_prep", False, "its own prepare_model_for_training upcasts nothing frozen (unsloth_zoo "
                                    "2026.10.9 training_utils.py:403-458)"),
        Default("grad_ckpt", True, "use_gradient_checkpointing='unsloth' (unsloth 2026.10.9 models/llama.py:4579)"),
        Default("optim", "adamw-8bit", "Unsloth's patched TRL configs default to adamw_8bit (unsloth 2026.10.9 models/rl.py:3310-3325)"),
        Default("loss", "chunked", "fused cross-entropy, no batch x seq x vocab logits (unsloth 2026.10.9 models/llama.py:2087-2124)"),
    ), unmodelled=(
        Unmodelled("checkpointed layer inputs are offloaded to CPU (the estimate keeps them on the GPU: an upper "
                   "bound)", "unsloth_zoo 2026.10.9 gradient_checkpointing.py:598-640"),
        Unmodelled("its fused cross-entropy sizes chunks to min(4 GiB, half of free memory)",
                   "unsloth_zoo 2026.10.9 fused_losses/cross_entropy_loss.py:225-303"),
        Unmodelled("patched modules are compiled, which changes which tensors are saved", "unsloth 2026.10.9 kernels/",
                   "always"),
    )),
)}

STACK_NAMES: tuple[str, ...] = tuple(STACKS)


def applies(u: Unmodelled, *, training: bool, quantized: bool, lora: bool) -> bool:
    """Whether an unmodelled behaviour concerns a setup (QLoRA-only behaviours do not concern a bf16 LoRA)."""
    return {"always": True, "training": training, "quantized": training and quantized,
            "lora": training and lora and not quantized}[u.when]
