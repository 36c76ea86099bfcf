"""The Python API: ``vramplan.plan(...)`` — the same result as ``vramplan plan``.

It accepts vramplan's own options and also the objects of a real training script — a peft ``LoraConfig``,
a transformers ``BitsAndBytesConfig`` and ``TrainingArguments`` — read by attribute (duck typing), so the
check costs no torch import::

    est = vramplan.plan("Qwen/Qwen3-14B", lora=peft_config, quantization_config=bnb_config,
                        training_args=args, seq=2048, gpu="rtx-4090")
    assert est.fit.fits
"""

from __future__ import annotations

from typing import Any

from .errors import SetupError
from .interop import TRAINER_OPTIMS, lora_from_peft, options_from_bnb, options_from_training_args
from .lora import LoraConfig

__all__ = ["TRAINER_OPTIMS", "lora_from_peft", "options_from_bnb", "options_from_training_args", "plan"]

def plan(model: Any, *, lora: Any = None, quantization_config: Any = None, training_args: Any = None,
         gpu: str | None = None, margin: float = 0.0, trust_remote_code: bool = False, mode: str = "analytic",
         sim_layers: str | int = "auto", **options: Any):
    """Estimate the memory of a setup; returns a :class:`vramplan.estimate.Estimate`.

    Args:
        model: a bundled name, a Hub id, a config.json path or model folder, or a
            :class:`vramplan.shapes.ModelSpec`.
        lora: a :class:`vramplan.lora.LoraConfig` or a ``peft.LoraConfig``.
        quantization_config: a transformers ``BitsAndBytesConfig`` (sets qlora / quant / double quant).
        training_args: transformers ``TrainingArguments`` (batch, precision, checkpointing, optimizer).
        gpu: a catalogue name or a size for the fit verdict; ``margin`` keeps that fraction free.
        mode: ``"analytic"`` (the formulas), ``"simulate"`` (run the step on meta tensors and track every
            allocation: :func:`vramplan.simulate.simulate`, same component names where they correspond) or
            ``"both"`` (the simulated Estimate, with ``extra["analytic"]`` and ``extra["comparison"]``; when
            the model cannot be simulated, the analytic Estimate with a warning).
        sim_layers: ``"auto"`` (two depths, extrapolated), ``"all"`` or a layer count (simulate modes).
        **options: the plan options by their Python names (method, quant, precision, batch, seq, grad_ckpt,
            attn, optim, loss, ...).

    Raises:
        SimulationError: ``mode="simulate"`` on a model that cannot run on meta tensors (names the op).
    """
    from .estimate import estimate
    from .profiles import resolve_gpu, resolve_model
    from .setup import Setup
    from .shapes.spec import ModelSpec

    spec = model if isinstance(model, ModelSpec) else resolve_model(str(model), trust_remote_code=trust_remote_code).spec
    opts: dict[str, Any] = {}
    if training_args is not None:
        opts.update(options_from_training_args(training_args))
    if quantization_config is not None:
        q = options_from_bnb(quantization_config)
        compute = q.pop("_compute", None)
        opts.update(q)
        if q.get("quant"):
            opts.setdefault("method", "qlora")
        if compute and "precision" not in opts:
            opts["precision"] = f"{compute}-mixed"
    opts.update(options)
    if lora is not None and not isinstance(lora, LoraConfig):
        lora = lora_from_peft(lora)
    if lora is not None:
        opts.setdefault("method", "lora")
    setup = Setup.create(lora=lora, **opts)
    g = resolve_gpu(gpu) if gpu is not None else None
    if mode != "analytic":             # issue 4: simulated step
        return _simulated(mode, spec, setup, g, margin, sim_layers)
    return estimate(spec, setup, g, margin)


def _simulated(mode: str, spec: Any, setup: Any, gpu: Any, margin: float, sim_layers: str | int):
    from dataclasses import replace

    from .errors import SimulationError
    from .estimate import estimate
    from .simulate import simulate

    if mode not in ("simulate", "both"):
        raise SetupError(f"mode {mode!r} is not one of: analytic, simulate, both")
    if mode == "simulate":
        return simulate(spec, setup, gpu, margin, sim_layers=sim_layers)
    analytic = estimate(spec, setup, gpu, margin)
    try:
        sim = simulate(spec, setup, gpu, margin, sim_layers=sim_layers)
    except SimulationError as exc:
        return replace(analytic, warnings=(*analytic.warnings, f"{exc} — analytic estimate only"))
    from .simulate.compare import compare_components

    return replace(sim, extra={**sim.extra, "analytic": analytic.to_dict(),
                               "comparison": compare_components(analytic, sim)})
