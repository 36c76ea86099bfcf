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

Several ranks (a :class:`~vramplan.profiler.options.Rank`): the Trainer takes its engine from the launcher's
environment as it does for a user (torchrun: DDP; ``accelerate launch`` with the generated config: FSDP2 or
DeepSpeed); the plain loop builds an ``Accelerator`` from the same environment and calls
``accelerator.prepare(model, optimizer)``, ``accelerator.autocast()`` and ``accelerator.backward(loss)``. Under
DeepSpeed ``accelerator.backward`` also runs the optimizer step (``DeepSpeedEngineWrapper.backward`` calls
``engine.step()``), so the ``backward`` phase includes it and ``optimizer`` is empty.

accelerate runs FSDP only on accelerators (on the CPU its distributed type is ``MULTI_CPU``, i.e. DDP over
gloo); :func:`emulate_fsdp_on_cpu` then switches the shared ``AcceleratorState`` to FSDP with the plugin
accelerate builds from the launch config, so that ``prepare`` runs the same ``fsdp2_prepare_model`` as on GPUs.
That is what lets the CPU tests run FSDP end to end.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
from typing import Any

from ..errors import SetupError
from .options import ProfileError
from .phases import PhaseTracker

#: vramplan optimizer name -> HF Trainer ``optim`` name (``transformers.training_args.OptimizerNames``).
TRAINER_OPTIM = {"adamw-foreach": "adamw_torch", "adamw-8bit": "adamw_bnb_8bit", "paged-adamw": "paged_adamw_32bit",
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

    # DeepSpeed has no autocast: bf16=True/fp16=True there only says which 16-bit dtype the engine casts the
    # model to (and must match the generated config's bf16/fp16 "enabled", which the Trainer checks).
    half = setup.autocast or (setup.strategy in DEEPSPEED_STAGES and setup.compute_dtype != "fp32")
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=setup.batch, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=1e-4, optim=trainer_optim(setup.optim, device_type),
        bf16=half and setup.compute_dtype == "bf16", fp16=half and setup.compute_dtype == "fp16",
        use_cpu=device_type == "cpu", report_to=[], logging_strategy="no", save_strategy="no",
        eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
        log_level="error", seed=0)


#: ``--strategy`` -> DeepSpeed ZeRO stage
DEEPSPEED_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}
FSDP_STRATEGIES = ("fsdp", "fsdp-grad-op")


def accelerator_mixed_precision(setup: Any) -> str:
    """accelerate's ``mixed_precision`` for ``setup`` (the same value the generated launch config holds):
    the autocast dtype under ``*-mixed``; for DeepSpeed the dtype its engine casts the model to; else ``no``."""
    if setup.strategy in DEEPSPEED_STAGES:
        return setup.compute_dtype if setup.compute_dtype != "fp32" else "no"
    return setup.compute_dtype if setup.autocast else "no"


def emulate_fsdp_on_cpu(accelerator: Any, setup: Any) -> bool:
    """On the CPU, switch accelerate's shared state to FSDP for an FSDP strategy (see the module docstring).

    The plugin is ``FullyShardedDataParallelPlugin()``, i.e. read from the ``FSDP_*`` variables that
    ``accelerate launch`` set from the generated config, with the run's mixed precision. Returns whether it
    switched (never on CUDA, where accelerate does it itself).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if setup.strategy not in FSDP_STRATEGIES or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # as AcceleratorState.__init__ does on GPUs: every later AcceleratorState() copies PartialState's value back
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def check_engine(accelerator: Any, setup: Any) -> None:
    """Raise when the launcher did not give the engine ``setup.strategy`` asks for (a config that did not reach
    the process would otherwise measure a different setup)."""
    from accelerate.utils import DistributedType

    dt = accelerator.state.distributed_type
    if setup.strategy in DEEPSPEED_STAGES:
        ok = dt == DistributedType.DEEPSPEED
    elif setup.strategy in FSDP_STRATEGIES:
        ok = dt == DistributedType.FSDP
    else:
        ok = dt not in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if not ok:
        raise ProfileError(f"--strategy {setup.strategy}: accelerate set up {dt} in this process; run it through "
                           "`vramplan profile --gpus N --strategy ...`, which launches it with the generated config")


def parallel_info(model: Any, accelerator: Any) -> dict[str, Any]:
    """What this rank holds after ``prepare``: the engine, the wrapper class and its own parameter storage (an
    FSDP2 ``DTensor``'s local shard, a ZeRO-3 parameter's ``ds_tensor`` partition, else the whole tensor), in
    bytes and as the CUDA caching allocator accounts it (each tensor rounded up to 512 B,
    :func:`vramplan.dtypes.alloc`) — the unit of the estimator's ``per_rank.model_states.weights``."""
    from ..dtypes import alloc

    local = trainable = local_alloc = 0
    for p in model.parameters():
        t = p
        if hasattr(p, "ds_tensor"):          # DeepSpeed ZeRO-3 partition
            t = p.ds_tensor
        elif hasattr(p, "to_local"):         # FSDP2 DTensor
            t = p.to_local()
        n = int(t.numel()) * int(t.element_size())
        local += n
        local_alloc += alloc(n)
        if p.requires_grad:
            trainable += n
    state = accelerator.state
    info: dict[str, Any] = {
        "engine": str(state.distributed_type).rsplit(".", 1)[-1], "backend": getattr(state, "backend", None),
        "wrapper": type(model).__name__, "world_size": int(accelerator.num_processes),
        "local_param_bytes": local, "local_param_alloc_bytes": local_alloc, "local_trainable_param_bytes": trainable}
    logging_data = getattr(model, "_get_ddp_logging_data", None)
    if callable(logging_data):
        # DDP's Reducer buckets (bytes each, as allocated when the model was wrapped)
        with contextlib.suppress(Exception):
            data = logging_data()
            info["ddp_bucket_bytes"] = [int(b) for b in str(data.get("bucket_sizes", "")).split(",") if b.strip()]
            info["ddp_bucket_cap_bytes"] = int(data["bucket_cap_bytes"])
            info["ddp_gradient_as_bucket_view"] = bool(data.get("gradient_as_bucket_view"))
    return info


class _ListDataset:
    """Rows of a list of batches, so the Trainer's DataLoader rebuilds exactly those batches."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(b["input_ids"].shape[0])]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def run_trainer(model: Any, setup: Any, device_type: str, n_steps: int, tracker: PhaseTracker,
                batches: list[dict[str, Any]], *, rank: Any = None, info: dict[str, Any] | None = None) -> None:
    """``Trainer(model, args, train_dataset).train()`` for ``n_steps`` optimizer steps, phases recorded.

    With ``rank`` the Trainer runs under the launcher's engine; ``info`` receives :func:`parallel_info` of the
    prepared model at the first step.
    """
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class PhaseCallback(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if rank is not None and info is not None and not info:
                info.update(parallel_info(trainer.model_wrapped, trainer.accelerator))
            tracker.step_begin(state.global_step)

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            tracker.begin("optimizer", state.global_step)

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            tracker.end()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            tracker.step_end(state.global_step - 1)     # global_step was incremented before this callback

    class ProfiledTrainer(Trainer):
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            if rank is not None:
                if emulate_fsdp_on_cpu(self.accelerator, setup):
                    self.is_fsdp_enabled = True
                check_engine(self.accelerator, setup)

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
              batches: list[dict[str, Any]], *, rank: Any = None, info: dict[str, Any] | None = None) -> None:
    """A bare loop: forward under autocast (mixed precision), ``loss.backward()``, ``optimizer.step()``.

    The optimizer is the one the Trainer would build for ``setup.optim`` (``Trainer.get_optimizer_cls_and_kwargs``)
    over the trainable parameters; no gradient clipping, no scheduler. With ``rank``: the same through
    accelerate (:func:`_run_plain_parallel`).
    """
    import torch
    from transformers import Trainer

    if rank is not None:
        _run_plain_parallel(model, setup, device, n_steps, tracker, batches, info if info is not None else {})
        return

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


def _run_plain_parallel(model: Any, setup: Any, device: Any, n_steps: int, tracker: PhaseTracker,
                        batches: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """The plain loop on one rank: ``Accelerator`` from the launcher's environment, the optimizer built on the
    trainable parameters, ``model, optimizer = accelerator.prepare(model, optimizer)`` (DDP wrap, FSDP2
    ``fully_shard`` units or the DeepSpeed engine), then forward under ``accelerator.autocast()``,
    ``accelerator.backward(loss)``, ``optimizer.step()``."""
    import torch
    from accelerate import Accelerator
    from transformers import Trainer

    device_type = torch.device(device).type
    with tempfile.TemporaryDirectory(prefix="vramplan-plain-") as tmp:
        args = training_arguments(setup, device_type, n_steps, tmp)
        opt_cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    accelerator = Accelerator(cpu=device_type == "cpu", mixed_precision=accelerator_mixed_precision(setup))
    emulate_fsdp_on_cpu(accelerator, setup)
    check_engine(accelerator, setup)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SetupError("the model has no trainable parameters for the plain loop (check --method/--targets)")
    optimizer = opt_cls(params, **opt_kwargs)
    del params
    model, optimizer = accelerator.prepare(model, optimizer)
    info.update(parallel_info(model, accelerator))
    model.train()
    try:
        for step in range(n_steps):
            tracker.step_begin(step)
            inputs = {k: v.to(accelerator.device, non_blocking=True) for k, v in batches[step].items()}
            with tracker.phase("forward", step):
                with accelerator.autocast():
                    loss = model(**inputs).loss
            del inputs
            with tracker.phase("backward", step):
                accelerator.backward(loss)
            del loss
            with tracker.phase("optimizer", step):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracker.step_end(step)
    finally:
        with contextlib.suppress(Exception):
            optimizer.optimizer.state.clear()
        del optimizer, model
        with contextlib.suppress(Exception):
            accelerator.free_memory()


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

