"""axolotl 0.21.0: a tiny Llama through its real model loader, LoRA/QLoRA injection and one training step on CPU,
measured (issue 14 § 4). Writes JSON to its argument; ``benchmarks/frameworks/results/axolotl.json`` is its output and
``tests/estimate/test_stack_axolotl_cpu.py`` compares it with ``--stack axolotl``.

Not a CI test: it needs axolotl. The wheel declares Python >= 3.12; its loader and trainer builder import on 3.11::

    . /tmp/xck-axo/bin/activate   # torch 2.13.0 CPU, transformers 5.20.1, peft 0.21.2, trl 1.14.1,
                                  # accelerate 1.15.0, bitsandbytes 0.50.2, datasets 5.0.1
    pip install --no-deps --ignore-requires-python axolotl-0.21.0-py3-none-any.whl
    pip install addict posthog evaluate wandb pillow numba colorama   # what its imports need
    python benchmarks/frameworks/axolotl_step.py benchmarks/frameworks/results/axolotl.json

What runs, all axolotl's own code: a config dict as a user YAML gives it (``adapter: lora`` / ``qlora`` with
``load_in_4bit``, ``lora_target_linear: true``, ``bf16: auto``, answered as a bf16 GPU answers it (on a CPU axolotl
resolves it to fp16), ``gradient_checkpointing`` on or off),
``utils.config.validate_config`` + ``normalize_config``, ``loaders.load_tokenizer``, ``loaders.ModelLoader(cfg,
tok).load()`` (from_pretrained, ``_configure_embedding_dtypes``: gradient checkpointing,
``prepare_model_for_kbit_training`` for 4-bit, the cast back to ``torch_dtype``; then ``load_adapter``), the trainer
from ``core.builders.HFCausalTrainerBuilder``, the model prepared by its accelerator, then
``trainer.compute_loss(model, batch)`` and ``trainer.accelerator.backward(loss)``: the two halves of
``Trainer.training_step``. Cases: LoRA and QLoRA with and without checkpointing (``cases``), and full fine-tuning
(no ``adapter``) with and without (``full_cases``).
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _step import (  # noqa: E402
    BATCH,
    RANK,
    SEQ,
    TINY_LLAMA,
    batch,
    compact,
    dump,
    lora_qlora_cases,
    params,
    record,
    step,
    tiny_checkpoint,
)


def user_config(path: str, out_dir: str, *, quantized: bool, grad_ckpt: bool, full: bool = False) -> dict:
    cfg = {"base_model": path, "tokenizer_type": "AutoTokenizer", "adapter": "qlora" if quantized else "lora",
           "lora_r": RANK, "lora_alpha": RANK, "lora_target_linear": True, "bf16": "auto", "tf32": False,
           "gradient_checkpointing": grad_ckpt, "micro_batch_size": BATCH, "gradient_accumulation_steps": 1,
           "num_epochs": 1, "learning_rate": 1e-4, "sequence_len": SEQ, "output_dir": out_dir,
           "datasets": [{"path": "unused", "type": "alpaca"}], "optimizer": "adamw_torch", "save_safetensors": True}
    if quantized:
        cfg["load_in_4bit"] = True
    if full:                         # no adapter: a full fine-tune (examples/llama-2/fft_optimized.yml)
        for k in ("adapter", "lora_r", "lora_alpha", "lora_target_linear"):
            del cfg[k]
    return cfg


def run(path: str, *, quantized: bool, grad_ckpt: bool, full: bool = False) -> dict:
    import axolotl.utils.config as axo_config
    from axolotl.loaders import ModelLoader, load_tokenizer
    from axolotl.utils.config import normalize_config, validate_config
    from axolotl.utils.dict import DictDefault

    # bf16: auto asks is_torch_bf16_gpu_available() (utils/config/__init__.py:165-176): answer as a bf16 GPU
    # (Ampere or later) does; on this CPU it answers False and axolotl would pick fp16.
    axo_config.is_torch_bf16_gpu_available = lambda: True
    out_dir = tempfile.mkdtemp(prefix="axo-out-")
    cfg = validate_config(DictDefault(user_config(path, out_dir, quantized=quantized, grad_ckpt=grad_ckpt,
                                                  full=full)))
    normalize_config(cfg)
    tok = load_tokenizer(cfg)
    torch.manual_seed(0)
    model, _ = ModelLoader(cfg, tok).load()
    built = params(model)
    res_cfg = {"method": cfg.adapter or "full", "grad_ckpt": bool(cfg.gradient_checkpointing),
               "lora_dropout": cfg.lora_dropout, "torch_dtype": str(cfg.torch_dtype), "bf16": cfg.bf16,
               "load_in_4bit": bool(cfg.load_in_4bit)}
    trainer = None
    try:
        from axolotl.core.builders import HFCausalTrainerBuilder
        class OnCPU(HFCausalTrainerBuilder):
            def _configure_precision_settings(self, training_args_kwargs: dict):
                super()._configure_precision_settings(training_args_kwargs)   # core/builders/base.py:318-326
                training_args_kwargs["use_cpu"] = True     # the only change: TrainingArguments' CPU switch

        builder = OnCPU(cfg, model, tok)
        trainer = builder.build(total_num_steps=1)
    except Exception as e:  # noqa: BLE001 - reported in the JSON, the step then runs without the builder
        res_cfg["trainer_builder_error"] = f"{type(e).__name__}: {e}"[:300]
    model.train()
    inputs = batch(TINY_LLAMA["vocab_size"])
    if trainer is not None:
        if trainer.args.gradient_checkpointing and not getattr(model, "is_gradient_checkpointing", True):
            # what Trainer.train() does before the first step (transformers 5.20.1 trainer.py:1500-1511): a full
            # fine-tune's checkpointing starts here (the loader enables it for adapters only, loaders/model.py:634)
            gc_kwargs = dict(trainer.args.gradient_checkpointing_kwargs or {})
            gc_kwargs.pop("every_n_layers", None)
            gc_kwargs.pop("offload", None)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs or None)
        prepared = trainer.accelerator.prepare(trainer.model)
        prepared.train()
        res = step(prepared, lambda: trainer.compute_loss(prepared, inputs), autocast=False,
                   n_layers=TINY_LLAMA["num_hidden_layers"])
        res_cfg["native_amp"] = bool(trainer.accelerator.native_amp)
        res_cfg["trainer"] = type(trainer).__name__
    else:
        res = step(model, lambda: model(**inputs).loss, autocast=True, n_layers=TINY_LLAMA["num_hidden_layers"])
    res = compact(res)
    res["params"] = built
    base = model.base_model.model if hasattr(model, "peft_config") else model
    res["gradient_checkpointing"] = bool(getattr(base, "is_gradient_checkpointing", False))
    res["setup"] = res_cfg
    return res


def main() -> None:
    path = tiny_checkpoint(tempfile.mkdtemp(prefix="axo-tiny-"))
    out = record("axolotl", "axolotl")
    torch.set_num_threads(1)
    lora_qlora_cases(out, run, path)
    # full fine-tuning with bf16: auto -> torch_dtype bfloat16 (utils/config/__init__.py:194-199): the model is
    # loaded and trained in bf16 (loaders/model.py:959-960), the Trainer's bf16 autocast over it
    out["full_cases"] = {f"full-{'gc' if gc else 'nogc'}": run(path, quantized=False, grad_ckpt=gc, full=True)
                         for gc in (True, False)}
    dump(out)


if __name__ == "__main__":
    main()
