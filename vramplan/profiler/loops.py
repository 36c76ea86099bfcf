"""The loops that run the measured steps: HF ``Trainer`` (default), a plain PyTorch loop, and inference.

Trainer phases are captured without copying any of its loop:

* ``forward``: a ``Trainer`` subclass whose ``compute_loss`` runs inside the phase (the model call, the loss,
  autocast from ``compute_loss_context_manager`` and accelerate's wrapped forward);
* ``backward``: ``trainer.accelerator.backward`` wrapped on the instance (what ``training_step`` calls);
* ``optimizer``: a ``TrainerCallback`` — ``on_pre_optimizer_step`` to ``on_optimizer_step``, i.e. exactly
  ``self.optimizer.step()`` (the first call creates the optimizer state);
* step boundaries: ``on_step_begin``/``on_step_end``. Gradient clipping and ``model.zero_grad()`` fall between
  phases; the tracker folds their peaks into the step's.

Step indices are 0-based and count warmup steps (warmup ``w`` means steps ``0..w-1`` are not measured).
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
from typing import Any

from ..errors import SetupError
from .phases import PhaseTracker

#: vramplan optimizer name -> HF Trainer ``optim`` name (``transformers.training_args.OptimizerNames``).
TRAINER_OPTIM = {"adamw-8bit": "adamw_bnb_8bit", "paged-adamw": "paged_adamw_32bit",
                 "paged-adamw-8bit": "paged_adamw_8bit", "adafactor": "adafactor", "sgd": "sgd",
                 "lion": "lion_32bit"}


def trainer_optim(optim: str, device_type: str) -> str:
    """``adamw`` is the Trainer default: ``adamw_torch_fused`` on CUDA; ``adamw_torch`` on the CPU."""
    if optim == "adamw":
        return "adamw_torch_fused" if device_type == "cuda" else "adamw_torch"
    return TRAINER_OPTIM[optim]


def synthetic_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` batches of exactly ``batch`` x ``seq`` random tokens, labels = inputs (causal LM), on the CPU."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, seq), generator=g, dtype=torch.long)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def training_arguments(setup: Any, device_type: str, steps: int, output_dir: str) -> Any:
    """The ``TrainingArguments`` a user would write for ``setup`` (no logging, saving or evaluation)."""
    from transformers import TrainingArguments

    autocast = setup.autocast
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=setup.batch, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=1e-4, optim=trainer_optim(setup.optim, device_type),
        bf16=autocast and setup.compute_dtype == "bf16", fp16=autocast and setup.compute_dtype == "fp16",
        use_cpu=device_type == "cpu", report_to=[], logging_strategy="no", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
        log_level="error", seed=0)


class _ListDataset:
    """Rows of a list of batches, so the Trainer's DataLoader rebuilds exactly those batches."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(b["input_ids"].shape[0])]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def run_trainer(model: Any, setup: Any, device_type: str, n_steps: int, tracker: PhaseTracker,
                batches: list[dict[str, Any]]) -> None:
    """``Trainer(model, args, train_dataset).train()`` for ``n_steps`` optimizer steps, phases recorded."""
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class PhaseCallback(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            tracker.step_begin(state.global_step)

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            tracker.begin("optimizer", state.global_step)

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            tracker.end()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            tracker.step_end(state.global_step - 1)     # global_step was incremented before this callback

    class ProfiledTrainer(Trainer):
        def compute_loss(self, *args: Any, **kwargs: Any) -> Any:
            with tracker.phase("forward", self.state.global_step):
                return super().compute_loss(*args, **kwargs)

    with tempfile.TemporaryDirectory(prefix="vramplan-trainer-") as tmp:
        args = training_arguments(setup, device_type, n_steps, tmp)
        trainer = ProfiledTrainer(model=model, args=args, train_dataset=_ListDataset(batches),
                                  callbacks=[PhaseCallback()])
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        backward = trainer.accelerator.backward

        def profiled_backward(loss: Any, **kwargs: Any) -> Any:
            with tracker.phase("backward", trainer.state.global_step):
                return backward(loss, **kwargs)

        trainer.accelerator.backward = profiled_backward
        try:
            trainer.train()
        finally:
            trainer.accelerator.backward = backward
            # Drop the Trainer's references (optimizer state, model wrapper) before the runner frees memory.
            trainer.optimizer = None
            trainer.lr_scheduler = None
            trainer.model_wrapped = None
            trainer.model = None
            with contextlib.suppress(Exception):
                trainer.accelerator.free_memory()


def run_plain(model: Any, setup: Any, device: Any, n_steps: int, tracker: PhaseTracker,
              batches: list[dict[str, Any]]) -> None:
    """A bare loop: forward under autocast (mixed precision), ``loss.backward()``, ``optimizer.step()``.

    The optimizer is the one the Trainer would build for ``setup.optim`` (``Trainer.get_optimizer_cls_and_kwargs``)
    over the trainable parameters; no gradient clipping, no scheduler.
    """
    import torch
    from transformers import Trainer

    device_type = torch.device(device).type
    with tempfile.TemporaryDirectory(prefix="vramplan-plain-") as tmp:
        args = training_arguments(setup, device_type, n_steps, tmp)
        opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SetupError("the model has no trainable parameters for the plain loop (check --method/--targets)")
    optimizer = opt_cls(params, **opt_kwargs)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setup.compute_dtype)
    scaler = torch.amp.GradScaler(device_type) if setup.autocast and setup.compute_dtype == "fp16" else None

    def autocast() -> Any:
        if setup.autocast and dtype is not None:
            return torch.autocast(device_type=device_type, dtype=dtype)
        return contextlib.nullcontext()

    model.train()
    try:
        for step in range(n_steps):
            tracker.step_begin(step)
            inputs = {k: v.to(device, non_blocking=True) for k, v in batches[step].items()}
            with tracker.phase("forward", step):
                with autocast():
                    loss = model(**inputs).loss      # outputs (logits) are dropped here, as in the Trainer
            del inputs
            with tracker.phase("backward", step):
                (scaler.scale(loss) if scaler is not None else loss).backward()
            del loss
            with tracker.phase("optimizer", step):
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracker.step_end(step)
    finally:
        optimizer.state.clear()
        del optimizer, params


def run_inference(model: Any, setup: Any, device: Any, n_steps: int, tracker: PhaseTracker,
                  batches: list[dict[str, Any]]) -> None:
    """Prefill ``seq - new_tokens`` prompt tokens, then decode ``new_tokens`` one at a time with the KV cache.

    As ``generate`` does: ``torch.no_grad()``, ``use_cache=True`` (DynamicCache), greedy next token, and
    ``logits_to_keep=1`` so the prefill computes logits for the last position only.
    """
    import torch

    prompt = setup.seq - setup.new_tokens
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    extra: dict[str, Any] = {"logits_to_keep": 1} if keep else {}
    model.eval()
    with torch.no_grad():
        for step in range(n_steps):
            tracker.step_begin(step)
            ids = batches[step]["input_ids"][:, :prompt].to(device)
            with tracker.phase("prefill", step):
                out = model(input_ids=ids, use_cache=True, **extra)
                past = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
                del out
            if setup.new_tokens:
                with tracker.phase("decode", step):
                    for _ in range(setup.new_tokens):
                        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                        past = out.past_key_values
                        nxt = out.logits[:, -1:].argmax(-1)
                        del out
            del past, nxt, ids
            tracker.step_end(step)

