"""TRL 1.16.0: a tiny Llama through SFTTrainer's real model load, PEFT wrapping, QLoRA cast, checkpointing setup and
one training step on CPU, measured (issue 14 § 4). Writes JSON to its argument;
``benchmarks/frameworks/results/trl.json`` is its output and ``tests/estimate/test_stack_trl_cpu.py`` compares it
with ``--stack trl``.

Not a CI test: it needs trl and the releases it was read at. Run it in a private venv::

    python3.11 -m venv /tmp/xck-trl && . /tmp/xck-trl/bin/activate
    pip install torch==2.13.0
    pip install trl==1.16.0 transformers==5.24.0 peft==0.21.2 accelerate==1.16.0 bitsandbytes==0.50.2 datasets
    python benchmarks/frameworks/trl_step.py benchmarks/frameworks/results/trl.json

What runs, all TRL's and transformers' own code:

* ``trl.SFTTrainer(model=<checkpoint folder>, args=SFTConfig(...), train_dataset=<2 pre-tokenized rows>,
  peft_config=peft.LoraConfig(r=4, lora_alpha=4, target_modules="all-linear"))``: ``create_model_from_path``
  (trl 1.16.0 trainer/utils.py:1311-1370: ``dtype`` defaults to float32 when ``model_init_kwargs`` does not set it),
  ``get_peft_model`` (sft_trainer.py:870), ``enable_input_require_grads`` under checkpointing (:899-900), the QLoRA
  cast of every trainable parameter to bf16 (:902-911) and ``add_fused_lm_head`` (:1142-1147). QLoRA passes
  ``quantization_config=BitsAndBytesConfig(nf4, double quant, bf16 compute)`` as the trainer argument (:684-690).
* ``SFTConfig(use_cpu=True, per_device_train_batch_size=2, max_steps=1, ...)`` with TRL's defaults: ``bf16`` on
  (base_config.py:69-76, :112) and ``gradient_checkpointing=True`` (:62-67), which transformers 5.24 turns into
  ``activation_checkpointing`` (training_args.py:1533-1545) and ``Trainer.train`` enables (trainer.py:1502-1528).
* ``trainer.train()`` itself: its data collator, ``accelerator.prepare`` (CPU bf16 autocast), then the
  ``training_step`` (transformers trainer.py:2051-2128) replaced by the same body measured: ``model.train()``,
  ``_prepare_inputs``, ``compute_loss_context_manager`` + ``SFTTrainer.compute_loss`` (sft_trainer.py:1560-1611:
  ``model(**inputs, fused_lm_head=True)``, the loss from its log-probs) and the backward, which for an
  ``Accelerator`` without a grad scaler is ``loss.backward()`` (accelerate 1.16.0 accelerator.py:2740-2766).

Cases: LoRA and QLoRA, with TRL's default checkpointing (``gradient_checkpointing`` not passed) and with
``gradient_checkpointing=False``, each with
``model_init_kwargs={"dtype": "bfloat16"}`` (TRL's documented QLoRA/LoRA recipe) and with TRL's default float32
load (no ``dtype`` given). ``full_cases``: full fine-tuning (``peft_config=None``: no ``get_peft_model``, no
``enable_input_require_grads``, every parameter trains in the dtype it was loaded in), the same two loads, with and
without checkpointing.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _step import BATCH, RANK, SEQ, TINY_LLAMA, batch, compact, dump, params, record, step, tiny_checkpoint  # noqa: E402


def run(path: str, *, quantized: bool, grad_ckpt: bool, dtype: str | None, full: bool = False) -> dict:
    import datasets
    import peft
    import transformers
    import trl

    ids = batch(TINY_LLAMA["vocab_size"])["input_ids"].tolist()
    ds = datasets.Dataset.from_dict({"input_ids": ids})
    kw = {} if grad_ckpt else {"gradient_checkpointing": False}     # on: TRL's own default, not passed
    if dtype is not None:
        kw["model_init_kwargs"] = {"dtype": dtype}
    cfg = trl.SFTConfig(output_dir=tempfile.mkdtemp(prefix="trl-out-"), use_cpu=True, report_to=[],
                        per_device_train_batch_size=BATCH, max_steps=1, save_strategy="no", logging_steps=1,
                        max_length=SEQ, dataloader_num_workers=0, **kw)
    qc = None
    if quantized:
        qc = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    lc = peft.LoraConfig(r=RANK, lora_alpha=RANK, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = trl.SFTTrainer(model=path, args=cfg, train_dataset=ds, peft_config=None if full else lc,
                             quantization_config=qc)
    built = params(trainer.model)
    out: dict = {}

    def measured_step(model, inputs, num_items_in_batch=None):
        # transformers 5.24.0 Trainer.training_step (trainer.py:2051-2128), one process, no context parallelism
        model.train()
        inputs = trainer._prepare_inputs(inputs)
        out["inputs"] = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in inputs.items()
                         if isinstance(v, torch.Tensor)}
        base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        out["gradient_checkpointing"] = bool(base.is_gradient_checkpointing)

        def forward():
            with trainer.compute_loss_context_manager():
                return trainer.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)

        out["res"] = step(model, forward, autocast=False, n_layers=TINY_LLAMA["num_hidden_layers"])
        return torch.zeros(())

    trainer.training_step = measured_step
    trainer.train()
    res = compact(out.pop("res"))
    res.update(out)
    res["params"] = built
    res["native_amp"] = bool(trainer.accelerator.native_amp)
    res["mixed_precision"] = str(trainer.accelerator.mixed_precision)
    res["model_dtype_arg"] = dtype
    res["args"] = {"bf16": cfg.bf16, "gradient_checkpointing": cfg.gradient_checkpointing,
                   "activation_checkpointing": cfg.activation_checkpointing,
                   "gradient_checkpointing_kwargs": cfg.gradient_checkpointing_kwargs}
    # the CPU runs the fused head's torch path (kernels/chunked_logprob.py:48 _use_triton is False), every position
    # scored (trainer/utils.py:1640-1654 compact=False)
    from trl.kernels.chunked_logprob import _use_triton
    res["fused_lm_head_triton"] = bool(_use_triton(torch.device("cpu")))
    return res


def main() -> None:
    path = tiny_checkpoint(tempfile.mkdtemp(prefix="trl-tiny-"))
    out = record("trl", "trl", "datasets")
    torch.set_num_threads(1)
    for quantized in (False, True):
        for dtype in ("bfloat16", None):
            for gc in (True, False):
                name = f"{'qlora' if quantized else 'lora'}-{'bf16' if dtype else 'fp32load'}-{'gc' if gc else 'nogc'}"
                out["cases"][name] = run(path, quantized=quantized, grad_ckpt=gc, dtype=dtype)
    # full fine-tuning (no peft_config): the float32 load TRL defaults to and the bfloat16 one model_init_kwargs asks
    out["full_cases"] = {}
    for dtype in ("bfloat16", None):
        for gc in (True, False):
            name = f"full-{'bf16' if dtype else 'fp32load'}-{'gc' if gc else 'nogc'}"
            out["full_cases"][name] = run(path, quantized=False, grad_ckpt=gc, dtype=dtype, full=True)
    dump(out)


if __name__ == "__main__":
    main()
