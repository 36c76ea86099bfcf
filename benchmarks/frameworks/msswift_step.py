"""ms-swift 4.6.0: a tiny Llama through its real model build (``swift sft``'s pipeline), LoRA/QLoRA injection and
one training step on CPU, measured (issue 14 § 4). Writes JSON to its argument; ``benchmarks/frameworks/results/msswift.json`` is
its output and ``tests/estimate/test_stack_frameworks_cpu.py`` compares it with ``--stack ms-swift``.

Not a CI test: it needs ms-swift and the transformers/peft/trl releases it allows. Run it in a private venv::

    python3.11 -m venv /tmp/swift && . /tmp/swift/bin/activate
    pip install torch==2.13.0
    pip install "transformers==5.19.*" "peft==0.20.*" "trl==0.29.*" accelerate bitsandbytes==0.50.2 "datasets<4.8.5"
    pip install --no-deps ms-swift==4.6.0 modelscope && pip install <what its imports ask for, see the report>
    python benchmarks/frameworks/msswift_step.py benchmarks/frameworks/results/msswift.json

What runs, all ms-swift's own code (ms-swift 4.6.0):

* ``pipelines.train.sft.SwiftSft(SftArguments(...))`` with ``swift sft``'s defaults except the rank and alpha
  (r = alpha = 4, the tiny test's), ``torch_dtype bfloat16`` and, for QLoRA, ``quant_method bnb, quant_bits 4``:
  ``args.get_model_processor()`` loads the model (``model/register.py``), ``TunerMixin.prepare_model``
  (``pipelines/train/tuner.py:374-407``: ``prepare_adapter`` → ``Swift.prepare_model`` → PEFT, then fp16
  trainable parameters upcast);
* the trainer ``TrainerFactory.get_trainer_cls(args)`` (``trainers/seq2seq_trainer.py Seq2SeqTrainer``) built as
  ``SwiftSft.run`` builds it: its ``__init__`` applies ``_fix_gradient_checkpointing`` (reentrant on one
  process, ``trainers/mixin.py:940-968``); ``_prepare_gradient_checkpointing`` runs as ``train()`` runs it
  (``mixin.py:970-1001``, ``:1022-1026``: checkpointing, then ``enable_input_require_grads``); the model prepared by its
  accelerator (CPU bf16 autocast and ``convert_outputs_to_fp32``); then ``trainer.compute_loss(model, batch)``
  (its own: ``trainers/seq2seq_trainer.py:126-252``) and ``trainer.accelerator.backward(loss)``, the two halves
  of ``Trainer.training_step`` (with its ``_prepare_inputs`` and ``template.forward_context``).

Cases (``cases``): LoRA and QLoRA, with ms-swift's default ``lora_dropout 0.05`` and with 0 (the exact comparison: on
CPU the unfused dropout saves an input-dtype noise tensor where CUDA's ``native_dropout`` saves a bool mask), each
with its default checkpointing and with ``gradient_checkpointing false``. ``full_cases``: full fine-tuning with
ms-swift's own dtype (``torch_dtype`` not given), with and without checkpointing. ``prompt_cases``: LoRA, QLoRA and
full fine-tuning on rows whose first ``PROMPT`` labels are masked, 2 rows and 1, with and without checkpointing:
``use_logits_to_keep`` (on by default for a text model) computes the logits from the first supervised label on.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _step import BATCH, RANK, TINY_LLAMA, batch, compact, dump, params, record, step, tiny_checkpoint  # noqa: E402

PROMPT = 12       # masked prompt labels per sequence in the use_logits_to_keep cases (of _step.SEQ = 32)


def tiny_dataset() -> str:
    """``SftArguments`` refuses an empty ``dataset`` (swift/arguments/sft_args.py:221): one local messages row. The
    step below feeds its own batch; the dataset is only read, never trained on."""
    import json
    path = os.path.join(tempfile.mkdtemp(prefix="swift-data-"), "train.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "t3 t4"},
                                         {"role": "assistant", "content": "t5"}]}) + "\n")
    return path


def prompt_batch(rows: int, prompt: int) -> dict[str, torch.Tensor]:
    """``rows`` sequences of ``_step.batch`` whose first ``prompt`` labels are masked (-100), as ms-swift's
    templates mask the prompt of an SFT row (``template/base.py``: labels -100 outside the assistant turns)."""
    b = {k: v[:rows].clone() for k, v in batch(TINY_LLAMA["vocab_size"]).items()}
    b["labels"][:, :prompt] = -100
    return b


def run(path: str, *, quantized: bool, grad_ckpt: bool, dropout: float | None, rows: int = BATCH,
        prompt: int = 0, full: bool = False) -> dict:
    from swift.arguments import SftArguments
    from swift.pipelines.train.sft import SwiftSft
    from swift.trainers import TrainerFactory

    kw = dict(model=path, model_type="llama", template="llama", tuner_type="full" if full else "lora", lora_rank=RANK,
              lora_alpha=RANK, output_dir=tempfile.mkdtemp(prefix="swift-out-"), gradient_checkpointing=grad_ckpt,
              report_to=["none"], dataset=[tiny_dataset()], bf16=True, use_cpu=True, per_device_train_batch_size=rows)
    if not full:
        kw["torch_dtype"] = "bfloat16"    # full fine-tuning takes ms-swift's default: the checkpoint's dtype
    if dropout is not None:
        kw["lora_dropout"] = dropout
    if quantized:
        kw.update(quant_method="bnb", quant_bits=4)
    args = SftArguments(**kw)
    torch.manual_seed(0)
    sft = SwiftSft(args)
    model = sft.prepare_model(args, sft.model, template=sft.template)
    built = params(model)
    trainer = TrainerFactory.get_trainer_cls(args)(model=model, args=args.training_args, template=sft.template,
                                                   train_dataset=None, eval_dataset=None)
    # SwiftMixin.train (trainers/mixin.py:1022-1026) enables checkpointing before Trainer.train:
    # _prepare_gradient_checkpointing (mixin.py:970-1001): dynamic_gradient_checkpointing, then
    # gradient_checkpointing_enable (reentrant, _fix_gradient_checkpointing) and enable_input_require_grads
    trainer._prepare_gradient_checkpointing(trainer.template.get_base_model(trainer.model))
    res_gc = bool(getattr(trainer.template.get_base_model(trainer.model), "is_gradient_checkpointing", False))
    prepared = trainer.accelerator.prepare(trainer.model)
    prepared.train()                                          # Trainer.training_step: model.train()
    # Seq2SeqTrainer._prepare_inputs (trainers/seq2seq_trainer.py:100-124): logits_to_keep from the first
    # supervised label (mixin.py:1271-1293; with no masked prompt every label is supervised: all positions) and
    # compute_loss_func
    inputs = trainer._prepare_inputs(prompt_batch(rows, prompt))

    def forward():
        with trainer.template.forward_context(trainer.model, inputs):   # Seq2SeqTrainer.training_step
            return trainer.compute_loss(prepared, dict(inputs))

    res = step(prepared, forward, autocast=False, n_layers=TINY_LLAMA["num_hidden_layers"])
    keep = inputs.get("logits_to_keep")
    # an int (a suffix of every row) or, for one row, a bool mask over the positions (mixin.py:1280-1289)
    res["logits_to_keep"] = keep.tolist() if isinstance(keep, torch.Tensor) else keep
    res["logits_to_keep_kept"] = int(keep.sum()) if isinstance(keep, torch.Tensor) else keep
    res["use_logits_to_keep"] = trainer.args.use_logits_to_keep
    res["rows"], res["prompt"] = rows, prompt
    res = compact(res)
    res["params"] = built
    res["setup"] = {"method": "full" if full else "qlora" if quantized else "lora", "grad_ckpt": bool(args.gradient_checkpointing),
                    "lora_dropout": args.lora_dropout, "target_modules": sorted(args.target_modules)}
    res["torch_dtype"] = str(args.torch_dtype).replace("torch.", "")
    res["gradient_checkpointing"] = res_gc
    res["use_reentrant"] = getattr(torch.utils.checkpoint, "_old_checkpoint", None) is not None
    res["native_amp"] = bool(trainer.accelerator.native_amp)
    return res


def main() -> None:
    path = tiny_checkpoint(tempfile.mkdtemp(prefix="swift-tiny-"))
    out = record("ms-swift", "swift")
    torch.set_num_threads(1)
    for quantized in (False, True):
        for dropout in (None, 0.0):
            for gc in (True, False):
                name = f"{'qlora' if quantized else 'lora'}-{'default' if dropout is None else 'dropout0'}-" \
                       f"{'gc' if gc else 'nogc'}"
                out["cases"][name] = run(path, quantized=quantized, grad_ckpt=gc, dropout=dropout)
    # full fine-tuning with ms-swift's own dtype (torch_dtype not given: the checkpoint's, bf16): the weights are
    # trained in bf16 under bf16 autocast, no fp32 masters (model/model_meta.py:295-298, pipelines/train/tuner.py:
    # 408-410)
    out["full_cases"] = {f"full-{'gc' if gc else 'nogc'}": run(path, quantized=False, grad_ckpt=gc, dropout=None,
                                                               full=True) for gc in (True, False)}
    # a masked prompt of PROMPT tokens: use_logits_to_keep (its default for a text model) computes the logits from
    # the first supervised label on, a suffix for several rows, a bool mask for one (mixin.py:1271-1293)
    out["prompt"] = PROMPT
    out["prompt_cases"] = {}
    for method in ("lora", "qlora", "full"):
        for rows in (BATCH, 1):
            for gc in (True, False):
                out["prompt_cases"][f"{method}-b{rows}-{'gc' if gc else 'nogc'}"] = run(
                    path, quantized=method == "qlora", grad_ckpt=gc, dropout=0.0, rows=rows, prompt=PROMPT,
                    full=method == "full")
    dump(out)


if __name__ == "__main__":
    main()
