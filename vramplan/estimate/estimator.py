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
from dataclasses import replace

from ..dtypes import BYTES, alloc
from ..lora import PEFT_TABLE_VERSION
from ..quantized import (
    KBIT_CHECKPOINTING,
    KBIT_UPCAST_SKIPPED,
    check_lora_targets,
    checkpoint_setup,
    kernel_notes,
    setup_scheme,
)
from ..setup import Setup, option_named
from ..shapes.spec import PLANNED_SEQ2SEQ, ModelSpec
from ..stacks import STACKS, applies
from ..units import GiB
from ..versions import modelled_versions, version_assumptions, version_warnings
from . import overhead
from .activations import offloader
from .inference import inference_assumptions, inference_bytes, inference_warnings, kv_cache_formula
from .logits import loss_code, loss_formula
from .optimizer import step_timeline
from .quant_kernels import KernelMemory, inference_terms, plan_kernel
from .quant_kernels import kernel_notes as quant_kernel_notes
from .result import BreakdownError, Component, Estimate
from .seq2seq import layer_items as seq2seq_layer_items
from .seq2seq import seq2seq_warnings
from .states import ModelStates, model_states
from .structure import CATEGORY, Structure
from .timeline import PHASES, ActTerms, peak_of, phase_peaks
from .vision import images as vision_images
from .vision import vision_items
from .vision import warnings as vision_warnings


def _fmt(n: int) -> str:
    return f"{n:,} B ({n / GiB:.3f} GiB)"


# -------------------------------------------------------------------------------------------- estimate
#: one component: (name, bytes, formula) — the formula with its numbers and its source, shown by --explain
Item = tuple[str, int, str]


def estimate(spec: ModelSpec, setup: Setup, gpu=None, margin: float = 0.0, *, detail: bool = True) -> Estimate:
    """Estimate the memory of one step of ``setup`` on ``spec``.

    Args:
        spec: the model.
        setup: what runs (method, precision, batch, seq, ...).
        gpu: a :class:`vramplan.profiles.Gpu`: adds the fit verdict.
        margin: a fraction of the card's memory kept free for the verdict.
        detail: ``False`` (sweeps): the counters and the peak phase only, the same numbers, no components.
    """
    spec.require_plannable(setup.training)   # encoder-decoder: T5/BART training planned, the rest refused (one line)
    # a pre-quantized checkpoint (its config.json's quantization_config) is planned as stored
    setup, *quant_notes = checkpoint_setup(spec.config, setup, spec.name)
    check_lora_targets(setup)
    d = model_states(spec, setup)
    if not setup.training:
        return _inference(spec, setup, d, gpu, margin, quant_notes)
    if setup.optim_in_bwd:      # the step in backward: one gradient at a time (optimizer.py step_timeline)
        d = replace(d, timeline=step_timeline(d.timeline, d.structure.trainables, setup, d.rank is not None))
    a = d.activations.at(setup.batch, setup.seq, vision_images(spec, setup), setup.prompt_tokens)
    peaks = phase_peaks(d.timeline, a)
    peak, phase = peak_of(peaks)
    phases = dict(zip(PHASES, peaks[:4], strict=True))
    if not detail:
        return _finish(spec, setup, d, (), peak, phase, phases, d.opt_paged, gpu, margin, detail=False)
    items = list(d.weight_comps) + _training_items(spec, setup, d, a, phase, at_start=peaks[4])
    comps = _merge(items)
    check_breakdown(comps, peak, phase)
    buf_load = d.rank.buffer_bytes("load") if d.rank is not None else 0
    phases = {"load": d.static_weights + overhead.CUBLAS_WORKSPACE_BYTES + buf_load, **phases}
    est = _finish(spec, setup, d, comps, peak, phase, phases, d.opt_paged, gpu, margin, quant_notes=quant_notes)
    if a.offloaded:     # --act-offload: what the offloader holds in (pinned) host memory, outside every GPU counter
        est = replace(est, extra={**est.extra, "activation_offload": {
            "offloader": offloader(setup), "cpu_bytes": a.offloaded, "gpu_layer_bytes": a.layer_acts}})
    return est


def _merge(items: list[Item], counter: str = "allocated") -> dict[str, list]:
    """Components by name (the bytes of repeated names added, the first formula kept; zero-byte items left out)."""
    comps: dict[str, list] = {}
    for name, n, formula in items:
        if n:
            if name in comps:
                comps[name][0] += n
            else:
                comps[name] = [n, formula, counter]
    return comps


def _training_items(spec: ModelSpec, setup: Setup, d: ModelStates, a: ActTerms, phase: str,
                    at_start: bool) -> list[Item]:
    """What is live at the ``phase`` peak besides the weights: each a term of
    :func:`~.timeline.phase_peaks`, with its formula."""
    ts, ckpt = d.timeline, setup.grad_ckpt
    items: list[Item] = [("optimizer/states", d.opt_gpu, d.opt_formula)]
    if d.rank is not None:
        items += d.rank.buffers[phase]
    items.append(_cublas_workspace())
    items += _every_phase(spec, setup, d, a)
    if phase in ("forward", "backward") or (phase == "backward (layers)" and at_start):
        live = {"forward": ts.casts, "backward": ts.casts_backward}.get(
            phase, ts.casts_backward + (ts.casts_layer if ckpt else 0))
        if live:
            items.append(_autocast_copies(setup, d, live))
    if a.vision:      # the vision saves: made before the first decoder layer, freed after its backward
        items += vision_items(spec, setup, d.activations)
    if phase in ("forward", "backward"):
        items += _layer_activations(spec, setup, d, a)
        items += [_head_activations(spec, setup, d, a), ("logits/log_softmax", a.logits_saved, _loss(spec, setup, d))]
        if phase == "forward":
            items.append(_forward_temporaries(spec, setup, d, a))
        else:
            items.append(("logits/loss_gradients", a.loss_bwd_tmp, _loss(spec, setup, d)))
    elif phase == "backward (layers)":
        items += _first_layer_backward(spec, setup, d, a) if at_start else _last_layer_backward(setup, d, a)
        items.append(("buffers/backward_working_set", a.bwd_ws,
                      "gradients of one op's outputs and inputs while it runs backward, plus a dequantized weight"))
    else:
        items += [("gradients/trainable", ts.grads_step, _gradients(d)),
                  ("buffers/optimizer_step", ts.opt_tmp, "optimizer step temporaries")]
    return items


def _every_phase(spec: ModelSpec, setup: Setup, d: ModelStates, a: ActTerms) -> list[Item]:
    """Terms alive in every phase: logits the loop keeps (LitGPT) and an offloader's staging buffers (Unsloth)."""
    return [("logits/kept_by_loop", a.kept, "the training loop keeps the model output alive through backward and "
             "optimizer.step(), and through the next forward until it is rebound: "
             + loss_formula(spec, _logits_shape(setup, d)[0], d.compute.logits_dtype, setup.compute_dtype,
                            loss_code(setup.loss, modelled_versions(setup.versions)), _logits_shape(setup, d)[1],
                            setup.autocast)),
            ("buffers/offload_staging", a.buffers,
             "Unsloth's offloaded checkpoints: two persistent device staging buffers of one layer input each "
             "(GPU_BUFFERS, GPU_BUFFERS_B double buffer; unsloth_zoo 2026.10.9 gradient_checkpointing.py:1305-1313, "
             ":1430-1488)")]


def _cublas_workspace() -> Item:
    return ("buffers/cublas_workspace", overhead.CUBLAS_WORKSPACE_BYTES,
            "cuBLAS workspace through the caching allocator: ':4096:8' = 32 MiB + 1 MiB cuBLASLt "
            "(aten/src/ATen/cuda/CublasHandlePool.cpp)")


def _autocast_copies(setup: Setup, d: ModelStates, live: int) -> Item:
    return ("buffers/autocast_weight_casts", live,
            f"autocast caches a {setup.compute_dtype} copy of each fp32 trainable matmul weight for the whole "
            "forward and autograd saves it for backward (aten/src/ATen/autocast_mode.cpp cached_cast): "
            f"2 B × {sum(p.numel for p in d.structure.placements if p.trainable and p.dtype == 'fp32'):,} fp32 params")


def _layer_activations(spec: ModelSpec, setup: Setup, d: ModelStates, a: ActTerms) -> list[Item]:
    """What the decoder layers save: their inputs with checkpointing, else every saved tensor by part."""
    sa, n_layers = d.compute, spec.num_layers
    T, bss = setup.batch * setup.seq, setup.batch * setup.seq * setup.seq
    if sa.seq2seq is not None and not a.offloaded:     # encoder-decoder: encoder, decoder, cross-attention parts
        return seq2seq_layer_items(sa.seq2seq, setup)
    if a.offloaded:
        return [_offloaded_layers(setup, a, a.layer_acts, "at the end of forward and the loss's backward")]
    if setup.grad_ckpt:
        return [("activations/checkpoint_inputs", a.layer_acts,
                 f"gradient checkpointing saves each layer's input: {n_layers} layers × tokens {T:,} × hidden "
                 f"{spec.hidden_size} × {BYTES[sa.resid_dtype]} B ({sa.resid_dtype} residual stream) = "
                 f"{_fmt(a.layer_acts)}; torch.utils.checkpoint (non-reentrant) via transformers "
                 "GradientCheckpointingLayer")]
    by_cat: dict[str, int] = defaultdict(int)
    counts: dict[int, int] = defaultdict(int)
    distinct = {id(tr): tr for tr in sa.layer_traces}
    for tr in sa.layer_traces:
        counts[id(tr)] += 1
    for k_id, n in counts.items():
        for k, v in distinct[k_id].by_category(T, bss).items():
            by_cat[k] += v * n
    return [(k, v, _act_formula(k, sa, T, bss, n_layers)) for k, v in sorted(by_cat.items())]


def _offloaded_layers(setup: Setup, a: ActTerms, n: int, when: str) -> Item:
    """The layer activations an offloader leaves on the GPU (``activations.py``), and what went to CPU."""
    if offloader(setup) == "unsloth":
        rule = ("Unsloth's offloaded checkpoints move each checkpointed layer input over 2 MiB to CPU (fp32 stored as "
                "bf16), except the last layer's (unsloth_zoo 2026.10.9 gradient_checkpointing.py:1337-1560)")
    else:
        rule = ("torchtune OffloadActivations moves every saved tensor >= 1,024 B that is not a parameter to CPU "
                "(checkpointing: the layer inputs only); the output head's saves stay, the last 5 packed tensors "
                "stay until their copy is done, a tensor brought back stays until the next node runs (torchtune "
                "0.6.1 training/_activation_offloading.py:133-353, :396-418)")
    return ("activations/layers_on_gpu", n, f"{rule}: on the GPU {when} {_fmt(n)}; in CPU memory {_fmt(a.offloaded)}")


def _head_activations(spec: ModelSpec, setup: Setup, d: ModelStates, a: ActTerms) -> Item:
    T, bss = setup.batch * setup.seq, setup.batch * setup.seq * setup.seq
    return ("activations/head", a.head_saved, _head_formula(d.compute, T, bss, spec, _logits_shape(setup, d)))


def _logits_shape(setup: Setup, d: ModelStates) -> tuple[int, int]:
    """``(tokens, positions per sequence)`` whose logits the step computes (``LayerActivations.logits_rows``)."""
    rows = d.activations.logits_rows(setup.seq, setup.prompt_tokens) if d.activations is not None else setup.seq
    return setup.batch * rows, rows


def _loss(spec: ModelSpec, setup: Setup, d: ModelStates) -> str:
    s2s = d.structure.seq2seq.loss_formula(setup.batch, setup.target_seq or setup.seq) \
        if d.structure.seq2seq is not None else None
    if s2s is not None:         # T5 / BART call CrossEntropyLoss themselves (estimate/seq2seq.py)
        return s2s
    tokens, rows = _logits_shape(setup, d)
    text = loss_formula(spec, tokens, d.compute.logits_dtype, setup.compute_dtype,
                        loss_code(setup.loss, modelled_versions(setup.versions)), rows, setup.autocast)
    if rows != setup.seq:
        text = (f"--logits-to-keep: logits of the last {rows:,} of {setup.seq:,} positions per sequence (from the "
                f"first supervised label, after --prompt-tokens {setup.prompt_tokens:,}); " + text)
    hf, hb = d.activations.head_moments(tokens) if d.activations is not None else (0, 0)
    if hf:
        text += (f"; a quantized output head's matmul, when larger: logits + its dequantized copies, {_fmt(hf)} in "
                 f"forward, + the input gradient {_fmt(hb)} in backward, less the loss's saved log-probs (not yet "
                 "made, or freed) — vramplan/estimate/layers.py Program._dequant_4bit")
    return text


def _forward_temporaries(spec: ModelSpec, setup: Setup, d: ModelStates, a: ActTerms) -> Item:
    """The larger of the loss's forward temporaries and one layer's (with a dequantized weight)."""
    tmp = max(a.loss_fwd_tmp, a.fwd_tmp + a.dequant + a.stash)
    if tmp == a.loss_fwd_tmp:
        return ("logits/forward_temporaries", tmp, _loss(spec, setup, d))
    return ("buffers/layer_temporaries", tmp, "largest set of a layer's short-lived tensors in forward"
            + (f" (+ {_fmt(a.stash)} the offloader keeps while their copy to CPU runs)" if a.stash else ""))


def _first_layer_backward(spec: ModelSpec, setup: Setup, d: ModelStates, a: ActTerms) -> list[Item]:
    """The last decoder layer's backward (the first to run): every activation still saved, its recompute."""
    ts = d.timeline
    items = ([_offloaded_layers(setup, a, a.bwd_layer_acts, "at the last layer's backward")] if a.offloaded
             else _layer_activations(spec, setup, d, a))
    if setup.grad_ckpt:
        items.append(("activations/recomputed_layer", a.recompute + a.fwd_tmp,
                      "one layer's activations recomputed in backward (checkpointing)"))
    items += [_head_activations(spec, setup, d, a),
              ("gradients/trainable", ts.grad_head + ts.grad_layers // max(spec.num_layers, 1),
               _in_bwd_gradient() if ts.step_in_bwd or setup.optim_in_bwd else "gradients produced so far"),
              ("buffers/optimizer_step", ts.step_in_bwd, "one parameter's optimizer step temporaries (in backward)")]
    return items


def _last_layer_backward(setup: Setup, d: ModelStates, a: ActTerms) -> list[Item]:
    """The first decoder layer's backward (the last to run): its activations, every gradient."""
    ts = d.timeline
    return [("activations/remaining", (a.resid if setup.grad_ckpt else a.first_layer_acts) + a.recompute,
             "activations of the first layer, last to be freed"),
            ("buffers/autocast_weight_casts", ts.casts_layer, "autocast copies of one layer's weights"),
            ("gradients/trainable", ts.grad_head + ts.grad_layers,
             _in_bwd_gradient() if setup.optim_in_bwd and d.rank is None else _gradients(d)),
            ("buffers/optimizer_step", ts.step_in_bwd, "one parameter's optimizer step temporaries (in backward)")]


def _in_bwd_gradient() -> str:
    return ("optimizer step in backward: each parameter's step runs in its post-accumulate-grad hook, which frees "
            "its gradient, so the largest single gradient is counted (torchtune 0.6.1 training/memory.py:219-242 "
            "register_optim_in_bwd_hooks)")


def _gradients(d: ModelStates) -> str:
    if d.rank is not None:
        return d.rank.grad_formula
    dts = ", ".join(sorted({t.dtype for t in d.structure.trainables}))
    return f"one gradient per trainable element ({d.trainable_numel:,}) in the parameter's dtype ({dts})"


def _inference(spec: ModelSpec, setup: Setup, d: ModelStates, gpu, margin: float,
               quant_notes: list[list[str]] | None = None) -> Estimate:
    """Prefill of ``seq - new_tokens`` prompt tokens and decoding to ``seq`` under ``torch.no_grad``: weights + the
    KV cache + the largest set of tensors alive at once (``inference.py``), at the larger of the two peaks."""
    b, s, kv_dtype = setup.batch, setup.seq, setup.compute_dtype
    r = inference_bytes(spec, d.structure, b, s, setup.new_tokens, kv_dtype, setup,
                        full_logits=setup.logits == "all")
    cublas = overhead.CUBLAS_WORKSPACE_BYTES
    comps = _merge(list(d.weight_comps))
    prompt = s - setup.new_tokens
    at = prompt if r.phase == "prefill" else s
    comps.update((name, [n, formula, "allocated"]) for name, n, formula in [   # listed even when 0
        ("kv_cache", r.kv_cache, kv_cache_formula(spec, setup, at, r.phase)),
        (f"activations/{r.phase}_working_set", r.working_set,
         f"the largest set of tensors alive at once in the {r.phase} under no_grad (batch {b} × "
         f"{prompt if r.phase == 'prefill' else 1:,} tokens): a decoder layer's live set replayed op by op "
         "(vramplan/estimate/layers.py on graph.py, nothing saved), the layer input, inputs_embeds, input_ids, "
         "position ids, rotary cos/sin and 4-D masks (transformers 5.24 LlamaModel.forward, masking_utils.py)"),
        ("logits/all_positions", r.logits,
         f"every position's logits (--logits all: a forward with logits_to_keep=0, batch {b} × {prompt:,} × vocab "
         f"{spec.vocab_size:,}); 0 when the peak is inside a layer") if setup.logits == "all" else
        ("logits/last_token", r.logits,
         "generate's last-position logits (logits_to_keep=1), their fp32 copy and the sampler's fp32 "
         "probabilities (generation/utils.py _sample); 0 when the peak is inside a layer"),
        ("buffers/cublas_workspace", cublas, "cuBLAS workspace (CublasHandlePool.cpp)")])
    km = plan_kernel(spec, setup, d.structure, gpu)      # GPTQ/AWQ: the kernel's own buffers (quant_kernels.py)
    kept, sc_prefill, sc_decode = inference_terms(km, b, prompt)
    if km is not None:
        for name, delta in km.replaced.items():          # what post_init frees (or grows) of the stored tensors
            comps[name][0] += delta
            comps[name][1] += f"; after {km.kernel}'s post_init {delta:+,} B: {km.replaced_formula}"
        sc, sc_formula = km.scratch(b * (prompt if r.phase == "prefill" else 1))
        comps.update((name, [n, formula, "allocated"]) for name, n, formula in [
            ("buffers/quant_kernel_workspace", km.persistent, km.persistent_formula),
            ("buffers/quant_kernel_scratch", sc, sc_formula + " — counted at the peak (an upper bound when the "
             "peak op is not a quantized matmul)")] if n)
    peak = sum(v[0] for v in comps.values())
    base = d.static_weights + cublas
    phases = {"load": base, "prefill": base + kept + r.prefill + sc_prefill}
    if setup.new_tokens:
        phases["decode"] = base + kept + r.decode + sc_decode
    return _finish(spec, setup, d, comps, peak, r.phase, phases, 0, gpu, margin, quant_notes=quant_notes)


def _overheads(setup: Setup, gpu, peak: int) -> list[tuple[str, int, str, str]]:
    """Memory outside the allocated peak: the allocator's slack (reserved) and the CUDA context (device)."""
    arch = getattr(gpu, "architecture", "") if gpu is not None else ""
    bnb = overhead.uses_bitsandbytes(setup)
    return [("overhead/allocator", overhead.allocator_overhead_bytes(peak),
             f"reserved beyond allocated: max(64 MiB, {overhead.ALLOCATOR_FRAGMENTATION:.0%} of peak allocated) — "
             "uncalibrated (segment rounding and fragmentation, c10/cuda/CUDACachingAllocator.cpp)", "reserved"),
            ("overhead/cuda_context", overhead.cuda_context_bytes(arch, bnb),
             f"CUDA context + kernels ({arch or 'unknown architecture'})" + (" + bitsandbytes library" if bnb else "")
             + " as nvidia-smi shows it — uncalibrated (vramplan/estimate/overhead.py)", "device")]


def _finish(spec: ModelSpec, setup: Setup, d: ModelStates, comps: dict | tuple, peak: int, phase: str,
            phases: dict, paged: int, gpu, margin: float, detail: bool = True,
            quant_notes: list[list[str]] | None = None) -> Estimate:
    """The counters (reserved = allocated + slack; device = reserved + context + paged + outside torch) and the
    result."""
    st, rank = d.structure, d.rank
    (_, frag, frag_formula, _), (_, ctx, ctx_formula, _) = _overheads(setup, gpu, peak)
    outside = list(rank.device) if rank is not None else []     # NCCL buffers: outside the torch allocator
    reserved = peak + frag
    device = reserved + ctx + paged + sum(c.bytes for c in outside)
    fit = overhead.fit_verdict(gpu, device, margin) if gpu is not None else None
    if not detail:
        return Estimate(model=spec.name, setup=setup, params_total=st.params_total,
                        params_trainable=st.params_trainable, components=(), peak_phase=phase,
                        peak_allocated_bytes=peak, peak_reserved_bytes=reserved, device_used_bytes=device,
                        phases=phases, assumptions=(), fit=fit)
    components = [Component(k, v[0], v[1], v[2]) for k, v in comps.items()]
    components += [Component("overhead/allocator", frag, frag_formula, "reserved"),
                   Component("overhead/cuda_context", ctx, ctx_formula, "device")]
    if paged:
        components.append(Component("optimizer/paged_states", paged,
                                    "paged optimizer states in CUDA unified memory: outside the torch allocator, "
                                    "resident on the GPU while there is room (evicted to host RAM under pressure)",
                                    "device"))
    components += outside
    qa, qw = quant_assumptions(setup, spec, quant_notes, plan_kernel(spec, setup, st, gpu))
    return Estimate(
        model=spec.name, setup=setup, params_total=st.params_total, params_trainable=st.params_trainable,
        components=tuple(sorted(components, key=lambda c: (c.group, -c.bytes))), peak_phase=phase,
        peak_allocated_bytes=peak, peak_reserved_bytes=reserved, device_used_bytes=device,
        phases=phases, assumptions=tuple(assumptions(spec, setup, st) + qa + (rank.assumptions if rank else [])),
        warnings=tuple(warnings_for(spec, setup) + gpu_warnings(setup, gpu) + qw + (rank.warnings if rank else [])
                       + list(st.plan.warnings if st.plan is not None else ())),
        fit=fit, versions=_versions(setup), extra=rank.extra(setup) if rank is not None else {})


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
def _act_formula(comp: str, st: Structure, T: int, bss: int, n_layers: int) -> str:
    cat = {v: k for k, v in CATEGORY.items()}.get(comp, "other")
    tr = st.layer_traces[-1] if st.layer_traces else None
    if tr is None:
        return ""
    items = [f"{s.saved_by[0]} [{s.dtype}, {alloc(s.nbytes(T, bss)):,} B]" for s in tr.saved if s.category == cat]
    return (f"Σ over {n_layers} layers of tensors autograd saves in the {cat} part of a layer (tokens {T:,}); last layer: "
            + "; ".join(items))


def _head_formula(st: Structure, T: int, bss: int, spec: ModelSpec, rows: tuple[int, int] | None = None) -> str:
    """The head trace's saves at ``T`` tokens; the lm_head matmul's at ``rows`` = (tokens, positions per sequence)
    whose logits are computed (--logits-to-keep), when given."""
    TL, r = rows or (T, 0)
    items = [f"{s.saved_by[0]} [{s.dtype}, "
             f"{alloc(s.nbytes(T, bss) if s.category == 'norms' or not r else s.nbytes(TL, TL * r)):,} B]"
             for s in st.head.saved]
    return "final norm and lm_head: " + ("; ".join(items) if items else "nothing saved")


def assumptions(spec: ModelSpec, setup: Setup, st: Structure) -> list[str]:
    if setup.training:
        a = [
            f"precision {setup.precision}: "
            + ("autocast to " + setup.compute_dtype + " with fp32 trainable weights (HF Trainer bf16/fp16=True)"
               if setup.autocast else "no autocast; every tensor in " + setup.compute_dtype),
            f"base weights loaded in {setup.base_dtype}" + (" (fp32 masters for full fine-tuning)"
                                                            if setup.method == "full" and setup.mixed else ""),
            "HF Trainer loop: model outputs (bf16 logits) are dropped before backward; zero_grad(set_to_none=True)"
            if setup.stack not in ("torchtune", "litgpt") else
            f"{setup.stack}'s own training loop: its loss and the logits it keeps as --loss {setup.loss} says",
            f"attention: {setup.attn}" + (" (flash / memory-efficient kernel: O(seq) saved tensors)"
                                          if setup.attn != "eager" else " (scores materialized: O(seq²))"),
            "optimizer states counted from the second step on (they persist after the first step)",
            "no padding (every sequence exactly --seq tokens), no packed-sequence masks",
        ]
    else:           # no optimizer, no backward, no autocast: from_pretrained(dtype=...) then generate()
        a = [
            f"weights loaded in {setup.compute_dtype} (from_pretrained(dtype=...)), no autocast",
            f"attention: {setup.attn}" + (" (flash / memory-efficient kernel: no seq x seq scores)"
                                          if setup.attn != "eager" else " (scores materialized: O(seq²))"),
            "no padding (every prompt exactly --seq - --new-tokens tokens)",
        ]
    if setup.quantized and setup.training and setup.kbit_prep and setup.quant not in KBIT_UPCAST_SKIPPED:
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
    versions = modelled_versions(setup.versions)
    if any(origin != "installed" for _, origin in versions.values()):
        a.append("library versions: " + ", ".join(f"{k} {v} ({origin})" for k, (v, origin) in versions.items()))
    a += version_assumptions(versions)
    a += behaviour_assumptions(spec, setup)
    if not setup.training:
        a += inference_assumptions(spec, setup)
    return a + stack_assumptions(setup)


def quant_assumptions(setup: Setup, spec: ModelSpec, notes: list[list[str]] | None,
                      km: KernelMemory | None = None) -> tuple[list[str], list[str]]:
    """What a pre-quantized checkpoint (``notes``: :func:`vramplan.quantized.checkpoint_setup`'s) and the GPTQ/AWQ/FP8
    kernels (``km``: :func:`~.quant_kernels.plan_kernel`'s) add to the assumptions and warnings."""
    a, w = (list(notes[0]), list(notes[1])) if notes else ([], [])
    if setup.quantized and not setup.bnb:
        ka, kw = kernel_notes(setup_scheme(setup, spec.config), training=setup.training)
        ka2, kw2 = quant_kernel_notes(km)
        a += ka + ka2
        w += kw + kw2
        if spec.is_moe:
            w.append(f"MoE with --quant {setup.quant}: the fused expert weights are counted unquantized (16-bit); "
                     "a quantized checkpoint stores them quantized per expert (transformers' FP8Experts, gptqmodel's "
                     "defused experts): not modelled, the estimate is high")
        if setup.distributed:
            w.append(f"--quant {setup.quant} with --strategy {setup.strategy} on {setup.gpus} GPUs: the quantized "
                     "buffers are counted whole on every rank (not cross-checked against FSDP/DeepSpeed)")
    if setup.quantized and setup.training and setup.kbit_prep:
        if setup.quant in KBIT_UPCAST_SKIPPED:
            a.append("prepare_model_for_kbit_training on a GPTQ model: no fp32 upcast (peft skips it for GPTQ); "
                     "checkpointing and input gradients as for bitsandbytes")
        elif setup.quant not in KBIT_CHECKPOINTING and setup.grad_ckpt:
            a.append(f"prepare_model_for_kbit_training does not enable checkpointing for {setup.quant} models (peft "
                     "utils/other.py): --grad-ckpt is the model's gradient_checkpointing_enable()")
    return a, w


def behaviour_assumptions(spec: ModelSpec, setup: Setup) -> list[str]:
    """The issue-14 behaviour switches in use (``--quant-head``, ``--frozen-dtype fp32``, ``--kv-expand``, the
    quant-state dtype), each with its source."""
    from .layers import quant_state_dtype

    out = []
    if setup.training and setup.quant_head and setup.bnb and not spec.tie_word_embeddings:
        out.append(f"--quant-head: the output head is stored {setup.quant} like the other Linears (Lightning "
                   "BitsandbytesPrecision replaces every nn.Linear: lightning 2.6.6 fabric/plugins/precision/"
                   "bitsandbytes.py:425-448); its dequantized copies are the transient of its matmul")
    if setup.training and setup.frozen_dtype == "fp32" and setup.method != "full":
        out.append("--frozen-dtype fp32: the frozen base in fp32 (Lightning bf16-mixed autocasts only: lightning 2.6.6 "
                   "fabric/plugins/precision/amp.py); each frozen Linear's weight is cast to "
                   f"{setup.compute_dtype} at every call and the copy saved for backward (not in autocast's cache: "
                   "aten/src/ATen/autocast_mode.cpp cached_cast caches leaves that require grad only)")
    if setup.training and setup.fp32_norms_embeddings:
        out.append("--fp32-norms-embeddings: the embeddings, output head, norms and .gate routers in fp32, the other "
                   f"weights in {setup.compute_dtype}, under {setup.compute_dtype} autocast (axolotl 0.21.0's "
                   "load-time upcast, loaders/model.py:607-624, :1446-1468): an fp32 residual stream, and an fp32 "
                   "trainable head's autocast copy held from forward to backward")
    if setup.kv_expand and spec.num_kv_heads != spec.num_heads and setup.attn != "eager":
        out.append(f"--kv-expand: K and V repeated from {spec.num_kv_heads} to {spec.num_heads} heads before SDPA, "
                   "which saves the expanded copies (torchtune 0.6.1 modules/attention.py:285-300; litgpt 0.5.13 "
                   "model.py:533-539)")
    if setup.quant in ("nf4", "fp4") and quant_state_dtype(setup) != setup.compute_dtype:
        out.append(f"4-bit weights quantized from {quant_state_dtype(setup)} (Lightning _Linear4bit.quantize: "
                   "weight.to(torch.half), lightning 2.6.6 fabric/plugins/precision/bitsandbytes.py:336-351): every "
                   f"dequantization is a {quant_state_dtype(setup)} copy then a {setup.compute_dtype} cast (CUDA path)")
    return out


def stack_assumptions(setup: Setup) -> list[str]:
    """What ``--stack`` decided, each default with its source, and whether the stack's code was cross-checked."""
    stack = STACKS[setup.stack]
    if setup.stack == "hf":
        return []
    decided = stack.defaults_for(setup.quantized, setup.method == "full", setup.gpus)
    out = [f"--stack {stack.name}: {stack.title}, read at {stack.release}"]
    out += [f"--stack {stack.name} default {option_named(n).flag} {d.value} (unless given): {d.source}"
            for n, d in decided.items()]
    if not stack.cross_checked and stack.checked_parts:
        out.append(f"--stack {stack.name}: cross-checked for the setups its real code was run in on CPU, not for "
                   f"every setup: {', '.join(stack.checked_parts)}")
    elif not stack.cross_checked:
        out.append(f"--stack {stack.name}: not cross-checked (its real code has not been run against this estimate)")
    return out


def stack_warnings(setup: Setup) -> list[str]:
    """What the stack does that the estimate does not follow yet (never silence)."""
    stack = STACKS[setup.stack]
    return [f"--stack {stack.name}: {u.what} — not modelled ({u.source})" for u in stack.unmodelled
            if applies(u, training=setup.training, quantized=setup.quantized, lora=setup.lora is not None,
                       gpus=setup.gpus)]


def behaviour_warnings(spec: ModelSpec, setup: Setup) -> list[str]:
    """Combinations of the issue-14 switches that the estimate cannot follow as given."""
    w = []
    if setup.training and setup.quant_head and setup.bnb and spec.tie_word_embeddings:
        w.append("--quant-head: the output head is tied to the embeddings here, so it is left unquantized (LitGPT "
                 "keeps a separate lm_head even for tied checkpoints — an extra quantized head, not modelled)")
    if setup.training and setup.quant_head and setup.bnb and setup.loss in ("chunked", "trl-fused"):
        w.append(f"--quant-head with --loss {setup.loss}: a fused loss reads lm_head.weight directly, which a "
                 "quantized head does not have; the head's matmul is estimated as for the standard loss")
    if setup.training and setup.logits_to_keep and spec.model_type in PLANNED_SEQ2SEQ:
        w.append(f"--logits-to-keep: {spec.architecture}.forward takes no logits_to_keep (ms-swift turns it off: "
                 "trainers/mixin.py:219-220): the decoder scores every target position")
    elif setup.training and setup.logits_to_keep and not setup.prompt_tokens:
        w.append("--logits-to-keep: the logits start at the first supervised label, which --prompt-tokens (the "
                 "masked prompt of each row; 0 given) states: the estimate scores every position, an upper bound "
                 "for prompt-masked SFT")
    if setup.training and setup.frozen_dtype == "fp32" and setup.method != "full" and not setup.autocast:
        w.append(f"--frozen-dtype fp32 with --precision {setup.precision} (no autocast): F.linear refuses a "
                 f"{setup.compute_dtype} input with an fp32 weight; LitGPT keeps an fp32 base only under bf16-mixed")
    return w


def loss_step_warnings(setup: Setup) -> list[str]:
    """What ``--loss``, ``--optim-in-bwd`` and ``--act-offload`` do that the estimate does not follow as given."""
    w = []
    if not setup.training:
        return w
    if setup.optim_in_bwd and setup.distributed:
        w.append(f"--optim-in-bwd on --gpus {setup.gpus} --strategy {setup.strategy}: the per-parameter step in "
                 "backward is modelled on one GPU only; gradients are estimated as without it")
    off = offloader(setup)
    if off == "unsloth" and not setup.grad_ckpt:
        w.append("--act-offload under --stack unsloth: Unsloth offloads only checkpointed layer inputs "
                 "(use_gradient_checkpointing='unsloth'); without --grad-ckpt nothing is offloaded")
    if off == "hooks" and not setup.grad_ckpt and setup.stack == "torchtune":
        w.append("--act-offload without --grad-ckpt: torchtune refuses enable_activation_offloading without "
                 "enable_activation_checkpointing (recipes/lora_finetune_single_device.py:167-175); estimated as "
                 "OffloadActivations over every saved tensor, as TRL's and axolotl's activation_offloading allow")
    if off == "hooks" and not setup.grad_ckpt:
        w.append("--act-offload without --grad-ckpt: the CPU-memory figure counts each saved activation once; "
                 "OffloadActivations copies every packed tensor, so one saved twice and F.linear's transposed weight "
                 "views (not Parameters) are copied again (measured on a torchtune Llama): a lower bound")
    if off != "none" and setup.autocast and setup.method == "full":
        w.append("--act-offload: autocast's cached weight copies are saved tensors the offloader moves too; the "
                 "estimate keeps them on the GPU (an upper bound)")
    if setup.loss == "trl-fused":
        w.append("--loss trl-fused: every position is counted as label-valid (an upper bound: positions masked by "
                 "completion_only_loss or padding are not projected on CUDA); the Triton path is modelled (CPU's "
                 "torch path makes about seven fp32 tile-sized temporaries more)")
    return w


def warnings_for(spec: ModelSpec, setup: Setup) -> list[str]:
    w = (stack_warnings(setup) + version_warnings(modelled_versions(setup.versions)) + behaviour_warnings(spec, setup)
         + loss_step_warnings(setup))
    if not setup.training:
        w += inference_warnings(spec, setup)
    w += list(spec.notes)       # what the shapes say a plan of this model does not model (a vision tower, ...)
    w += vision_warnings(spec, setup)
    w += seq2seq_warnings(spec, setup)      # encoder-decoder limits; --target-seq ignored on a decoder-only model
    if spec.max_position_embeddings and setup.seq > spec.max_position_embeddings:
        w.append(f"--seq {setup.seq} exceeds the model's max_position_embeddings {spec.max_position_embeddings}")
    if not setup.training and (setup.gpus > 1 or setup.strategy != "ddp") and setup.device_map == "none":
        w.append(f"--method inference on --gpus {setup.gpus} --strategy {setup.strategy}: estimated as one full "
                 "replica per GPU (data parallel); --device-map auto splits the model across them instead")
    return w


def gpu_warnings(setup: Setup, gpu) -> list[str]:
    """What the setup asks of the card that the card cannot do (the estimate still assumes it ran): bf16 before
    Ampere, FlashAttention 2 before Ampere. A card given as a size has no architecture: nothing to say."""
    if gpu is None or getattr(gpu, "from_size", False) or not getattr(gpu, "compute_capability", ""):
        return []
    cc = tuple(int(x) for x in str(gpu.compute_capability).split(".")[:2] if x.isdigit())
    out = []
    if setup.compute_dtype == "bf16" and not gpu.bf16:
        # transformers TrainingArguments.__post_init__: bf16 needs is_torch_bf16_gpu_available() (compute 8.0+)
        out.append(f"{gpu.name} ({gpu.architecture}, compute {gpu.compute_capability}) has no bf16: the HF Trainer "
                   f"refuses --precision {setup.precision} there; use fp16-mixed or fp16-true")
    if setup.attn == "flash" and gpu.vendor == "nvidia" and cc and cc < (8, 0):
        # flash-attn 2 README: Ampere, Ada or Hopper GPUs (compute 8.0+); Turing only in FlashAttention 1.x
        out.append(f"{gpu.name} ({gpu.architecture}, compute {gpu.compute_capability}): FlashAttention 2 needs "
                   "Ampere or newer (compute 8.0+); use --attn sdpa")
    return out


def _versions(setup: Setup) -> dict[str, str]:
    """The library versions the numbers are for (``vramplan/versions.py``: ``--versions``, else installed, else
    the pinned set)."""
    from ..version import __version__

    return {"vramplan": __version__, **{k: v for k, (v, _) in modelled_versions(setup.versions).items()}}
