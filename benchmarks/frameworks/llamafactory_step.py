"""LLaMA-Factory 0.9.5: a tiny Llama through its real model build, LoRA/QLoRA injection and one training step on
CPU, measured (issue 14 § 4). Writes JSON to its argument; ``benchmarks/frameworks/results/llamafactory.json`` is its output and
``tests/estimate/test_stack_frameworks_cpu.py`` compares it with ``--stack llama-factory``.

Not a CI test: it needs llamafactory and the transformers/peft/trl releases it pins. Run it in a private venv::

    python3.11 -m venv /tmp/lf && . /tmp/lf/bin/activate
    pip install torch==2.13.0
    pip install transformers==5.6.0 peft==0.18.1 accelerate==1.11.0 trl==0.24.0 bitsandbytes==0.50.2
    pip install --no-deps llamafactory==0.9.5 && pip install omegaconf fire   # what its imports need
    # data/mm_plugin.py imports torchaudio (audio inputs only), which has no build for torch 2.13: an empty
    # module named torchaudio on PYTHONPATH stands in for it
    mkdir -p /tmp/stubs/torchaudio && touch /tmp/stubs/torchaudio/__init__.py
    PYTHONPATH=/tmp/stubs python benchmarks/frameworks/llamafactory_step.py \
        benchmarks/frameworks/results/llamafactory.json

What runs, all LLaMA-Factory's own code (llamafactory 0.9.5):

* ``hparams.ModelArguments`` / ``FinetuningArguments`` with the CLI's defaults (``lora_target: all``, rank and
  alpha set here to the tiny test's r = 4, ``compute_dtype`` bf16 as ``hparams/parser.py:512-513`` sets it for
  ``bf16: true``; ``quantization_bit: 4`` for QLoRA, whose ``BitsAndBytesConfig`` is built by
  ``model/model_utils/quantization.py:170-180``);
* ``model.load_model(tokenizer, model_args, finetuning_args, is_trainable=True)`` (``model/loader.py:131-241``):
  ``patch_config``, ``from_pretrained(torch_dtype="auto")``, ``patch_model`` → ``prepare_model_for_training``
  (``model/model_utils/checkpointing.py:143-185``: its own reentrant gradient checkpointing), ``init_adapter``
  (``model/adapter.py:313-325``: PEFT ``get_peft_model``, then every trainable parameter cast to fp32);
* the step: ``train.sft.trainer.CustomSeq2SeqTrainer`` built with ``hparams.TrainingArguments(bf16=True,
  use_cpu=True)``, the model prepared by its accelerator (CPU bf16 autocast and ``convert_outputs_to_fp32``, as
  ``Trainer._inner_training_loop`` prepares it), then ``trainer.compute_loss(model, batch)`` (→ transformers'
  ``Trainer.compute_loss``, the model's own ``ForCausalLMLoss``) and ``trainer.accelerator.backward(loss)``: the
  two halves of ``Trainer.training_step``.

Each case once with LLaMA-Factory's default checkpointing and once with ``disable_gradient_checkpointing: true``
(the per-layer saved tensors then show the layer's whole trace). ``cases``: LoRA and QLoRA; ``full_cases``:
``finetuning_type: full`` with ``bf16: true`` and no ``pure_bf16`` (LLaMA-Factory's defaults), whose
``init_adapter`` upcasts every trainable parameter to fp32 (``model/adapter.py:313-328`` ->
``_setup_full_tuning``, ``:38-54``: ``param.data = param.data.to(torch.float32)``), trained under the accelerator's
bf16 autocast; and ``pure_bf16: true`` without ``bf16`` (the web UI's compute type ``pure_bf16``,
``webui/runner.py:171-173``): nothing upcast (``adapter.py:319-320``), no autocast (``full-purebf16-*``).
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


def run(path: str, *, quantized: bool, grad_ckpt: bool, full: bool = False, pure_bf16: bool = False) -> dict:
    import transformers
    from llamafactory.hparams import FinetuningArguments, ModelArguments, TrainingArguments
    from llamafactory.model import load_model
    from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer

    margs = ModelArguments(model_name_or_path=path, disable_gradient_checkpointing=not grad_ckpt,
                           quantization_bit=4 if quantized else None)
    margs.compute_dtype = torch.bfloat16                     # hparams/parser.py:512-513 (bf16: true)
    margs.device_map = {"": torch.device("cpu")}             # hparams/parser.py:517 get_current_device() on CPU
    fargs = FinetuningArguments(stage="sft", finetuning_type="full" if full else "lora", lora_rank=RANK,
                                lora_alpha=RANK, pure_bf16=pure_bf16)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = load_model(tok, margs, fargs, is_trainable=True)
    built = params(model)
    out_dir = tempfile.mkdtemp(prefix="lf-out-")
    targs = TrainingArguments(output_dir=out_dir, bf16=not pure_bf16, use_cpu=True, report_to=[],
                              per_device_train_batch_size=BATCH)
    trainer = CustomSeq2SeqTrainer(model=model, args=targs, finetuning_args=fargs, processor=None,
                                   tokenizer=tok)
    prepared = trainer.accelerator.prepare(trainer.model)
    prepared.train()                                          # Trainer.training_step: model.train()
    inputs = batch(TINY_LLAMA["vocab_size"])
    res = step(prepared, lambda: trainer.compute_loss(prepared, inputs), autocast=False,
               n_layers=TINY_LLAMA["num_hidden_layers"])
    res = compact(res)
    res["params"] = built
    if full:
        res["gradient_checkpointing"] = bool(model.is_gradient_checkpointing)
    else:
        res["gradient_checkpointing"] = bool(getattr(model.base_model.model, "is_gradient_checkpointing", False)) \
            if hasattr(model, "base_model") else None
    res["use_reentrant_gc"] = bool(margs.use_reentrant_gc)
    if full:
        res["setup"] = {"method": "full", "grad_ckpt": not margs.disable_gradient_checkpointing,
                        "finetuning_type": fargs.finetuning_type, "pure_bf16": bool(fargs.pure_bf16),
                        "bf16": bool(targs.bf16), "compute_dtype": str(margs.compute_dtype).replace("torch.", "")}
    else:
        res["setup"] = {"method": "qlora" if quantized else "lora",
                        "grad_ckpt": not margs.disable_gradient_checkpointing,
                        "lora_dropout": fargs.lora_dropout, "lora_target": fargs.lora_target}
    res["native_amp"] = bool(trainer.accelerator.native_amp)
    return res


def main() -> None:
    path = tiny_checkpoint(tempfile.mkdtemp(prefix="lf-tiny-"))
    out = record("llamafactory", "llamafactory")
    torch.set_num_threads(1)
    lora_qlora_cases(out, run, path)
    # full fine-tuning with LLaMA-Factory's defaults for bf16: true (no pure_bf16): fp32 trainable parameters;
    # and the web UI's compute type pure_bf16 (webui/runner.py:171-173: pure_bf16 on, bf16 off): bf16 ones, no
    # autocast
    out["full_cases"] = {}
    for pure in (False, True):
        for gc in (True, False):
            out["full_cases"][f"full-{'purebf16-' if pure else ''}{'gc' if gc else 'nogc'}"] = run(
                path, quantized=False, grad_ckpt=gc, full=True, pure_bf16=pure)
    dump(out)


if __name__ == "__main__":
    main()
