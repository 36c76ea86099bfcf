"""The analytic estimator: every byte of one training (or inference) step, and which counter shows it.

``estimate(spec, setup)`` assembles, in this order:

1. the static structure (``structure.py``): placed weights and adapters (``weights.py``), the LoRA plan, one
   symbolic replay per distinct layer (``layers.py`` on ``graph.py``), cached so that sweeps are cheap;
2. the model states (``states.py``): weights, gradients, optimizer states (``optimizer.py``), autocast weight
   copies and one rank's share on several GPUs (``distributed.py``);
3. the activations at this batch and sequence length (``activations.py``), the loss (``logits.py``);
4. the step's timeline (``timeline.py::phase_peaks``) and the phase where the allocated total peaks, or the
   prefill and decode of inference (``inference.py``);
5. the components live at the peak, with their formulas, and the three counters: ``peak_allocated_bytes``
   (``torch.cuda.max_memory_allocated``), ``peak_reserved_bytes`` (``max_memory_reserved``),
   ``device_used_bytes`` (NVML / nvidia-smi; ``overhead.py``).

No I/O and no printing here; renderers read the :class:`~vramplan.estimate.result.Estimate`.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

from ..dtypes import BYTES, alloc
from ..lora import PEFT_TABLE_VERSION
from ..setup import Setup
from ..shapes.spec import ModelSpec
from ..units import GiB
from . import distributed, overhead
from .inference import inference_bytes
from .logits import loss_formula
from .result import BreakdownError, Component, Estimate
from .states import ModelStates, model_states
from .structure import CATEGORY, Structure
from .timeline import PHASES, ActTerms, peak_of, phase_peaks


def _fmt(n: int) -> str:
    return f"{n:,} B ({n / GiB:.3f} GiB)"


# -------------------------------------------------------------------------------------------- estimate
def estimate(spec: ModelSpec, setup: Setup, gpu=None, margin: float = 0.0, *, detail: bool = True) -> Estimate:
    """Estimate the memory of one step of ``setup`` on ``spec``; ``gpu`` (a :class:`vramplan.profiles.Gpu`)
    adds the fit verdict with ``margin`` (a fraction of capacity kept free)."""
    d = model_states(spec, setup)
    st = d.structure
    b, s = setup.batch, setup.seq
    comps: dict[str, list] = {}

    def add(name: str, n: int, formula: str, counter: str = "allocated") -> None:
        if n:
            if name in comps:
                comps[name][0] += n
            else:
                comps[name] = [n, formula, counter]

    for name, nb, formula in d.weight_comps:
        add(name, nb, formula)
    static_weights = d.static_weights

    if not setup.training:
        return _inference(spec, setup, st, comps, static_weights, gpu, margin)

    rank = d.rank
    a = d.activations.at(b, s)
    peaks = phase_peaks(d.timeline, a)
    peak, phase = peak_of(peaks)
    candidates = dict(zip(PHASES, peaks[:4], strict=True))
    if not detail:   # sweeps: the counters and the phase only, same numbers as the detailed estimate
        return _finish(spec, setup, st, {}, peak, phase, candidates, d.opt_paged, gpu, margin, rank, detail=False)
    _itemize(spec, setup, st, d, a, phase, peaks[4], add)
    check_breakdown(comps, peak, phase)
    buf_load = rank.buffer_bytes("load") if rank is not None else 0
    phases = {"load": static_weights + overhead.CUBLAS_WORKSPACE_BYTES + buf_load, **candidates}
    return _finish(spec, setup, st, comps, peak, phase, phases, d.opt_paged, gpu, margin, rank)


def _itemize(spec: ModelSpec, setup: Setup, st: Structure, d: ModelStates, a: ActTerms, phase: str, at_start: bool,
             add) -> None:
    """The components live at the ``phase`` peak, each a term of :func:`~.timeline.phase_peaks` with its
    formula (the weights are already added)."""
    sa, rank, ts = d.compute, d.rank, d.timeline
    T, bss = setup.batch * setup.seq, setup.batch * setup.seq * setup.seq
    n_layers = spec.num_layers
    ckpt = setup.grad_ckpt
    cublas = overhead.CUBLAS_WORKSPACE_BYTES
    grad_formula = rank.grad_formula if rank is not None else _grad_formula(st, d.trainable_numel)
    logits_formula = loss_formula(spec, T, sa.logits_dtype, setup.compute_dtype, setup.loss == "chunked")
    add("optimizer/states", d.opt_gpu, d.opt_formula)
    if rank is not None:
        for name, nb, formula in rank.buffers[phase]:
            add(name, nb, formula)
    add("buffers/cublas_workspace", cublas, "cuBLAS workspace through the caching allocator: ':4096:8' = 32 MiB + "
        "1 MiB cuBLASLt (aten/src/ATen/cuda/CublasHandlePool.cpp)")

    def layer_activations() -> None:
        if ckpt:
            add("activations/checkpoint_inputs", a.layer_acts,
                f"gradient checkpointing saves each layer's input: {n_layers} layers × tokens {T:,} × hidden "
                f"{spec.hidden_size} × {BYTES[sa.resid_dtype]} B ({sa.resid_dtype} residual stream) = "
                f"{_fmt(a.layer_acts)}; torch.utils.checkpoint (non-reentrant) via transformers "
                "GradientCheckpointingLayer")
            return
        act_cat: dict[str, int] = defaultdict(int)
        counts: dict[int, int] = defaultdict(int)
        distinct = {id(tr): tr for tr in sa.layer_traces}
        for tr in sa.layer_traces:
            counts[id(tr)] += 1
        for k_id, n in counts.items():
            for k, v in distinct[k_id].by_category(T, bss).items():
                act_cat[k] += v * n
        for k, v in sorted(act_cat.items()):
            add(k, v, _act_formula(k, sa, T, bss, n_layers))

    casts_live = {"forward": ts.casts, "backward": ts.casts_backward}.get(
        phase, ts.casts_backward + (ts.casts_layer if ckpt else 0))
    if (phase in ("forward", "backward") or (phase == "backward (layers)" and at_start)) and casts_live:
        add("buffers/autocast_weight_casts", casts_live,
            f"autocast caches a {setup.compute_dtype} copy of each fp32 trainable matmul weight for the whole "
            "forward and autograd saves it for backward (aten/src/ATen/autocast_mode.cpp cached_cast): "
            f"2 B × {sum(p.numel for p in st.placements if p.trainable):,} params")
    if phase in ("forward", "backward"):
        layer_activations()
        add("activations/head", a.head_saved, _head_formula(sa, T, bss, spec))
        add("logits/log_softmax", a.logits_saved, logits_formula)
        if phase == "forward":
            tmp = max(a.loss_fwd_tmp, a.fwd_tmp + a.dequant)
            add("logits/forward_temporaries" if tmp == a.loss_fwd_tmp else "buffers/layer_temporaries", tmp,
                logits_formula if tmp == a.loss_fwd_tmp else "largest set of a layer's short-lived tensors in forward")
        else:
            add("logits/loss_gradients", a.loss_bwd_tmp, logits_formula)
    elif phase == "backward (layers)":
        if at_start:
            layer_activations()
            if ckpt:
                add("activations/recomputed_layer", a.recompute + a.fwd_tmp,
                    "one layer's activations recomputed in backward (checkpointing)")
            add("activations/head", a.head_saved, _head_formula(sa, T, bss, spec))
            add("gradients/trainable", ts.grad_head + ts.grad_layers // max(n_layers, 1), "gradients produced so far")
        else:
            add("activations/remaining", (a.resid if ckpt else a.first_layer_acts) + a.recompute,
                "activations of the first layer, last to be freed")
            add("buffers/autocast_weight_casts", ts.casts_layer, "autocast copies of one layer's weights")
            add("gradients/trainable", ts.grad_head + ts.grad_layers, grad_formula)
        add("buffers/backward_working_set", a.bwd_ws,
            "gradients of one op's outputs and inputs while it runs backward, plus a dequantized weight")
    else:  # optimizer
        add("gradients/trainable", ts.grads_step, grad_formula)
        add("buffers/optimizer_step", ts.opt_tmp, "optimizer step temporaries")


def _inference(spec: ModelSpec, setup: Setup, st: Structure, comps: dict, static_weights: int, gpu, margin: float):
    """Prefill of ``seq - new_tokens`` prompt tokens and decoding to ``seq``: weights + KV cache + the prefill's
    transient working set under ``torch.no_grad`` (nothing saved)."""
    b, s = setup.batch, setup.seq
    kv_dtype = setup.compute_dtype
    layers = spec.num_layers
    kv, work, logits = inference_bytes(spec, st, b, s, setup.new_tokens, kv_dtype)
    cublas = overhead.CUBLAS_WORKSPACE_BYTES
    comps["kv_cache"] = [kv, f"2 (K,V) × {layers} layers × batch {b} × seq {s} × kv heads {spec.num_kv_heads} × "
                             f"head_dim {spec.head_dim} × {BYTES[kv_dtype]} B (transformers DynamicCache)",
                         "allocated"]
    comps["activations/prefill_working_set"] = [work, "one layer's tensors during the prefill under no_grad "
                                                      "(upper bound: all alive at once)", "allocated"]
    comps["logits/last_token"] = [logits, "logits of the last position, fp32 upcast for sampling", "allocated"]
    comps["buffers/cublas_workspace"] = [cublas, "cuBLAS workspace (CublasHandlePool.cpp)", "allocated"]
    peak = sum(v[0] for v in comps.values())
    phases = {"load": static_weights + cublas, "prefill": peak, "decode": peak - work}
    return _finish(spec, setup, st, comps, peak, "prefill", phases, 0, gpu, margin)


def _finish(spec: ModelSpec, setup: Setup, st: Structure, comps: dict, peak: int, phase: str, phases: dict,
            paged: int, gpu, margin: float, rank: distributed.RankStates | None = None,
            detail: bool = True) -> Estimate:
    frag = overhead.allocator_overhead_bytes(peak)
    arch = getattr(gpu, "architecture", "") if gpu is not None else ""
    uses_bnb = overhead.uses_bitsandbytes(setup)
    ctx = overhead.cuda_context_bytes(arch, uses_bnb)
    if not detail:
        outside_bytes = sum(c.bytes for c in rank.device) if rank is not None else 0
        reserved = peak + frag
        device = reserved + ctx + paged + outside_bytes
        fit = overhead.fit_verdict(gpu, device, margin) if gpu is not None else None
        return Estimate(model=spec.name, setup=setup, params_total=st.params_total,
                        params_trainable=st.params_trainable, components=(), peak_phase=phase,
                        peak_allocated_bytes=peak, peak_reserved_bytes=reserved, device_used_bytes=device,
                        phases=phases, assumptions=(), fit=fit)
    components = [Component(k, v[0], v[1], v[2]) for k, v in comps.items()]
    components.append(Component("overhead/allocator", frag,
                                f"reserved beyond allocated: max(64 MiB, {overhead.ALLOCATOR_FRAGMENTATION:.0%} of "
                                "peak allocated) — uncalibrated (segment rounding and fragmentation, "
                                "c10/cuda/CUDACachingAllocator.cpp)", "reserved"))
    components.append(Component("overhead/cuda_context", ctx,
                                f"CUDA context + kernels ({arch or 'unknown architecture'})"
                                + (" + bitsandbytes library" if uses_bnb else "")
                                + " as nvidia-smi shows it — uncalibrated (vramplan/estimate/overhead.py)", "device"))
    if paged:
        components.append(Component("optimizer/paged_states", paged,
                                    "paged optimizer states in CUDA unified memory: outside the torch allocator, "
                                    "resident on the GPU while there is room (evicted to host RAM under pressure)",
                                    "device"))
    outside = list(rank.device) if rank is not None else []     # NCCL buffers: outside the torch allocator
    components += outside
    reserved = peak + frag
    device = reserved + ctx + paged + sum(c.bytes for c in outside)
    trainable, total = st.params_trainable, st.params_total
    fit = overhead.fit_verdict(gpu, device, margin) if gpu is not None else None
    return Estimate(
        model=spec.name, setup=setup, params_total=total, params_trainable=trainable,
        components=tuple(sorted(components, key=lambda c: (c.group, -c.bytes))), peak_phase=phase,
        peak_allocated_bytes=peak, peak_reserved_bytes=reserved, device_used_bytes=device,
        phases=phases, assumptions=tuple(assumptions(spec, setup, st) + (rank.assumptions if rank else [])),
        warnings=tuple(warnings_for(spec, setup) + (rank.warnings if rank else [])),
        fit=fit, versions=_versions(), extra=rank.extra(setup) if rank is not None else {})


def check_breakdown(comps: dict[str, list], peak: int, phase: str) -> None:
    """The allocated components are the parts of the phase's peak, itemized: they must sum to it exactly.

    Raises:
        BreakdownError: when they do not (a bug in the itemization, never a user error).
    """
    total = sum(v[0] for v in comps.values() if v[2] == "allocated")
    if total != peak:
        raise BreakdownError(f"internal error: the allocated components at the {phase!r} peak sum to {total:,} B, "
                             f"the peak is {peak:,} B (difference {peak - total:+,} B); please report it")


# ----------------------------------------------------------------------------------------- explanations
def _grad_formula(st: Structure, numel: int) -> str:
    dts = ", ".join(sorted({t.dtype for t in st.trainables}))
    return f"one gradient per trainable element ({numel:,}) in the parameter's dtype ({dts})"


def _act_formula(comp: str, st: Structure, T: int, bss: int, n_layers: int) -> str:
    cat = {v: k for k, v in CATEGORY.items()}.get(comp, "other")
    tr = st.layer_traces[-1] if st.layer_traces else None
    if tr is None:
        return ""
    items = [f"{s.saved_by[0]} [{s.dtype}, {alloc(s.nbytes(T, bss)):,} B]" for s in tr.saved if s.category == cat]
    return (f"Σ over {n_layers} layers of tensors autograd saves in the {cat} part of a layer (tokens {T:,}); last layer: "
            + "; ".join(items))


def _head_formula(st: Structure, T: int, bss: int, spec: ModelSpec) -> str:
    items = [f"{s.saved_by[0]} [{s.dtype}, {alloc(s.nbytes(T, bss)):,} B]" for s in st.head.saved]
    return "final norm and lm_head: " + ("; ".join(items) if items else "nothing saved")


def assumptions(spec: ModelSpec, setup: Setup, st: Structure) -> list[str]:
    a = [
        f"precision {setup.precision}: "
        + ("autocast to " + setup.compute_dtype + " with fp32 trainable weights (HF Trainer bf16/fp16=True)"
           if setup.autocast else "no autocast; every tensor in " + setup.compute_dtype),
        f"base weights loaded in {setup.base_dtype}" + (" (fp32 masters for full fine-tuning)"
                                                        if setup.method == "full" and setup.mixed else ""),
        "HF Trainer loop: model outputs (bf16 logits) are dropped before backward; zero_grad(set_to_none=True)",
        f"attention: {setup.attn}" + (" (flash / memory-efficient kernel: O(seq) saved tensors)"
                                      if setup.attn != "eager" else " (scores materialized: O(seq²))"),
        "optimizer states counted from the second step on (they persist after the first step)",
        "no padding (every sequence exactly --seq tokens), no packed-sequence masks",
    ]
    if setup.quantized and setup.training and setup.kbit_prep:
        a.append("prepare_model_for_kbit_training: non-quantized parameters upcast to fp32 (embeddings, norms, "
                 "lm_head), residual stream in fp32, gradient checkpointing on by default")
    if spec.is_moe:
        a.append("MoE: transformers >= 5 fused expert weights are not nn.Linear, so bitsandbytes leaves them "
                 "unquantized; activations assume perfectly balanced routing (top-k rows per token)")
    if setup.optim.startswith("paged"):
        a.append("paged optimizer states live in CUDA unified memory: not in torch's allocated/reserved counters, "
                 "counted in device_used while resident")
    if st.plan is not None and st.plan.default_source is not None:
        used = st.plan.targets_used
        a.append(f"LoRA default targets for model_type {spec.model_type!r} "
                 f"({used if isinstance(used, str) else ', '.join(used)}) "
                 f"from {st.plan.default_source}: vramplan's mirrored table (peft {PEFT_TABLE_VERSION}) lacks it")
    if spec.model_type in ("bloom",):
        a.append("bloom's ALiBi attention materializes the scores (eager-like) whatever --attn says")
    return a


def warnings_for(spec: ModelSpec, setup: Setup) -> list[str]:
    w = []
    if spec.max_position_embeddings and setup.seq > spec.max_position_embeddings:
        w.append(f"--seq {setup.seq} exceeds the model's max_position_embeddings {spec.max_position_embeddings}")
    if not setup.training and (setup.gpus > 1 or setup.strategy != "ddp"):
        w.append(f"--method inference on --gpus {setup.gpus} --strategy {setup.strategy}: estimated as one full "
                 "replica per GPU (data parallel); sharded inference is not modelled")
    return w


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour the formulas follow.

    Read from the ``*.dist-info`` folder names on ``sys.path`` (no imports, and cheaper than
    ``importlib.metadata``, which costs ~0.1 s to import on a cold start).
    """
    import os
    import sys

    from ..version import __version__

    wanted = {"torch": None, "transformers": None, "peft": None, "bitsandbytes": None}
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):
                pkg, _, rest = name[: -len(".dist-info")].partition("-")
                key = pkg.lower().replace("_", "-")
                if key in wanted and wanted[key] is None:
                    wanted[key] = rest
        if all(wanted.values()):
            break
    return {"vramplan": __version__, **{k: v or "not installed" for k, v in wanted.items()}}
