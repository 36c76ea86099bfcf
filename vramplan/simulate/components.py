"""The simulated step as an :class:`~vramplan.estimate.Estimate`, with the analytic estimator's names.

Component names where they correspond (documented in ``docs/simulation.md``):

=================================  ==================================================================
simulated component                what the tracker counted
=================================  ==================================================================
``weights/*``                      parameter storages by the estimator's roles (``weights/linear``,
                                   ``weights/embeddings``, ``weights/quantized`` = packed 4-bit/int8,
                                   ``weights/quant_constants`` = absmax, codes, offsets, SCB)
``adapters/*``                     LoRA A/B (``adapters/lora``), DoRA magnitudes, ``modules_to_save`` copies
``optimizer/states``               optimizer state tensors (created by a warm-up step, so the measured
                                   step is a steady-state one)
``gradients/trainable``            ``.grad`` storages (after AccumulateGrad)
``activations/<part>``             storages autograd saved for backward, by the module that saved them:
                                   ``attention``, ``mlp``, ``norms``, ``lora_inputs``, ``head``,
                                   ``checkpoint_inputs``, ``other`` (rotary tables, masks)
``activations/recomputed_layer``   a checkpointed layer's forward re-run during backward
``logits/log_softmax``             what the loss saved (fp32 log-probabilities, shifted labels)
``logits/temporaries``             short-lived tensors of the head and the loss (logits, upcasts, their
                                   gradients)
``buffers/autocast_weight_casts``  autocast's cached bf16/fp16 copies of fp32 trainable weights
``buffers/temporaries``            other short-lived tensors (op outputs, gradients in flight)
``buffers/kernel_workspace``       workspaces of CUDA kernels that the meta kernels do not allocate
                                   (flash-attention backward ``dq_accum``, ``softmax_d``, GQA expansion)
``buffers/inputs``, ``buffers/model``  input ids and labels; registered buffers (rotary ``inv_freq``)
``kv_cache``                       the KV cache (inference)
``buffers/cublas_workspace``       not simulated: the overhead model's constant (as in the analytic path)
``overhead/*``                     not simulated: the overhead model (``vramplan/estimate/overhead.py``)
=================================  ==================================================================
"""

from __future__ import annotations

from importlib import metadata

from ..errors import SimulationError
from ..estimate import overhead
from ..estimate.result import Component, Estimate
from ..estimate.states import rope_cache_item
from ..setup import Setup
from ..shapes.spec import ModelSpec
from ..units import GiB
from .extrapolate import Combined

WHAT = {
    "weights": "parameter storages of the model as built (transformers on meta)",
    "adapters": "PEFT adapter parameter storages",
    "optimizer/states": "optimizer state tensors after a warm-up step",
    "gradients/trainable": ".grad storages",
    "activations/recomputed_layer": "tensors of a checkpointed layer's forward re-run in backward",
    "logits/log_softmax": "tensors the loss saved for backward",
    "logits/temporaries": "short-lived tensors of the head and the loss",
    "buffers/autocast_weight_casts": "autocast's cached 16-bit copies of fp32 trainable weights",
    "buffers/temporaries": "short-lived op outputs and gradients in flight",
    "buffers/kernel_workspace": "CUDA kernel workspaces the meta kernels omit (flash-attention backward)",
    "buffers/inputs": "input ids and labels",
    "buffers/model": "registered buffers (rotary inv_freq)",
    "kv_cache": "KV cache tensors held by the transformers cache",
}


def _what(name: str) -> str:
    if name in WHAT:
        return WHAT[name]
    if name.startswith("activations/"):
        return f"storages autograd saved for backward in the {name.split('/', 1)[1]} part of the model"
    return WHAT.get(name.split("/", 1)[0], "simulated storages")


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("vramplan", "torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def check_supported(setup: Setup) -> None:
    """What the simulation does not cover yet raises :class:`SimulationError` (use the analytic path)."""
    if setup.gpus > 1 or setup.offload != "none":
        raise SimulationError(f"the simulation runs one GPU without sharding or offload (got --gpus {setup.gpus}, "
                              f"--strategy {setup.strategy}, --offload {setup.offload}); use --mode analytic")
    if setup.loss == "chunked":
        raise SimulationError("--loss chunked (Liger-Kernel fused linear cross-entropy) is not simulated: the "
                              "kernel is Triton, with no meta implementation; use --mode analytic")
    if setup.optim.startswith("paged"):
        raise SimulationError(f"--optim {setup.optim} keeps states in CUDA unified memory (cudaMallocManaged), "
                              "which has no meta equivalent; use --mode analytic")
    if setup.quantized and not setup.bnb:
        raise SimulationError(f"--mode simulate builds bitsandbytes bases only (nf4, fp4, int8); --quant {setup.quant} "
                              "is planned analytically: use --mode analytic")
    # the simulation runs the HF Trainer + PEFT step: what another stack's code does there is not run
    other = [flag for flag, on in (
        (f"--loss {setup.loss}", setup.loss not in ("standard", "chunked")),
        ("--act-offload", setup.act_offload), ("--optim-in-bwd", setup.optim_in_bwd),
        ("--kv-expand", setup.kv_expand), ("--quant-head", setup.quant_head),
        ("--quant-state-dtype fp16", setup.quant_state_dtype == "fp16"),
        ("--fp32-norms-embeddings", setup.fp32_norms_embeddings and setup.training),
        ("--logits-to-keep", setup.logits_to_keep and setup.prompt_tokens > 1)) if on]
    if other:
        raise SimulationError(f"{', '.join(other)}: the simulation runs transformers + peft's own step, not that "
                              "stack's code; use --mode analytic")


def to_estimate(spec: ModelSpec, setup: Setup, c: Combined, gpu=None, margin: float = 0.0) -> Estimate:
    """Assemble the Estimate of a simulated step (see the module docstring for the component names)."""
    seg = c.peak_segment()
    cublas = overhead.CUBLAS_WORKSPACE_BYTES
    comps: list[Component] = []
    where = f"{c.peak_phase} peak" + (f", in {seg.where}" if seg.where else "")
    how = ("extrapolated from " + " and ".join(str(d) for d in c.plan.depths) + f" simulated layers to "
           f"{c.plan.num_layers}") if c.plan.extrapolated else f"all {c.plan.num_layers} layers simulated"
    for name, b in sorted(seg.breakdown.items()):
        if b:
            comps.append(Component(name, b, f"simulated ({where}; {how}): {_what(name)}, each storage rounded "
                                            "to 512 B as the CUDA caching allocator does"))
    comps.append(Component("buffers/cublas_workspace", cublas,
                           "not simulated: cuBLAS workspace through the caching allocator, ':4096:8' = 32 MiB + "
                           "1 MiB cuBLASLt (overhead model, aten/src/ATen/cuda/CublasHandlePool.cpp)"))
    # the stack's resident buffers that the transformers model the simulation builds has not (torchtune's rope)
    rope = rope_cache_item(spec, setup)
    resident = 0
    if rope is not None:
        resident = rope[1]
        comps.append(Component(rope[0], rope[1], f"not simulated (the simulation builds the transformers model): "
                                                 f"{rope[2]}"))
    peak = c.peak_bytes + cublas + resident
    frag = overhead.allocator_overhead_bytes(peak)
    arch = getattr(gpu, "architecture", "") if gpu is not None else ""
    uses_bnb = overhead.uses_bitsandbytes(setup)
    ctx = overhead.cuda_context_bytes(arch, uses_bnb)
    comps.append(Component("overhead/allocator", frag,
                           f"not simulated: reserved beyond allocated, max(64 MiB, "
                           f"{overhead.ALLOCATOR_FRAGMENTATION:.0%} of peak allocated) — overhead model", "reserved"))
    comps.append(Component("overhead/cuda_context", ctx,
                           f"not simulated: CUDA context + kernels ({arch or 'unknown architecture'})"
                           + (" + bitsandbytes library" if uses_bnb else "") + " — overhead model", "device"))
    reserved = peak + frag
    device = reserved + ctx
    fit = overhead.fit_verdict(gpu, device, margin) if gpu is not None else None
    last = c.runs[-1]
    total, trainable = _param_counts(c)
    kernels: dict[str, int] = {}
    for r in c.runs:
        for k, v in r.kernels.items():
            kernels[k] = kernels.get(k, 0) + v
    sim = {
        "layers": "all" if not c.plan.extrapolated else list(c.plan.depths),
        "num_layers": c.plan.num_layers,
        "period": c.plan.period,
        "extrapolated": c.plan.extrapolated,
        "how": c.plan.reason,
        "seconds": round(sum(r.seconds for r in c.runs), 3),
        "ops": sum(r.ops for r in c.runs),
        "attention_kernels": kernels,
        "attn_implementation": last.attn_implementation,
        "peak_segment": seg.where,
        "saved_per_layer_bytes": c.saved_per_layer,
        "saved_bytes": c.saved,
        "gradients_bytes": c.gradients,
        "resident_bytes": c.static,
        "kv_cache_bytes": c.kv_cache,
    }
    assumptions = [
        "simulated: the model built on the meta device by transformers "
        f"{versions()['transformers']} (peft {versions()['peft']}, bitsandbytes {versions()['bitsandbytes']}), "
        "one step run on meta tensors under an allocation tracker",
        f"layers: {c.plan.reason}",
        "CUDA behaviour emulated: autocast's op policy and weight-cast cache, the SDPA backend CUDA picks "
        f"(used: {', '.join(f'{k} ×{v}' for k, v in sorted(kernels.items())) or 'none'}), flash-attention "
        "backward workspaces, host-side philox seeds",
        f"attention implementation: {last.attn_implementation}",
        "HF Trainer loop: outputs dropped before backward, fused AdamW, zero_grad(set_to_none=True); "
        "optimizer states from a warm-up step",
        "not simulated (overhead model): cuBLAS workspace, allocator fragmentation, CUDA context",
        *[f"note: {n}" for n in dict.fromkeys(n for r in c.runs for n in r.notes)],
    ]
    warnings = []
    if spec.max_position_embeddings and setup.seq > spec.max_position_embeddings:
        warnings.append(f"--seq {setup.seq} exceeds the model's max_position_embeddings "
                        f"{spec.max_position_embeddings}")
    phases = {k: v + cublas + resident for k, v in c.phases.items()}
    return Estimate(
        model=spec.name, setup=setup, params_total=total, params_trainable=trainable,
        components=tuple(sorted(comps, key=lambda x: (x.group, -x.bytes))), peak_phase=c.peak_phase,
        peak_allocated_bytes=peak, peak_reserved_bytes=reserved, device_used_bytes=device, phases=phases,
        assumptions=tuple(assumptions), warnings=tuple(warnings), fit=fit, versions=versions(),
        extra={"mode": "simulate", "simulation": sim})


def _param_counts(c: Combined) -> tuple[int, int]:
    counts = [(r.params_total, r.params_trainable) for r in c.runs]
    if len(counts) == 1:
        return counts[0]
    (t1, r1), (t2, r2) = counts
    x1, x2, x = c.runs[0].num_layers, c.runs[1].num_layers, c.plan.num_layers
    return t1 + (t2 - t1) * (x - x1) // (x2 - x1), r1 + (r2 - r1) * (x - x1) // (x2 - x1)


def gib(n: int) -> str:
    return f"{n / GiB:.3f} GiB"
