"""The counters of one structural setup at many (batch, seq) points: the sweep's evaluator.

:func:`estimate_counters` gives, for every point, exactly what ``estimate(spec, setup.with_(batch=b, seq=s),
gpu, detail=False)`` gives for ``peak_allocated_bytes``, ``peak_reserved_bytes``, ``device_used_bytes`` and
``peak_phase`` (``tests/estimate/test_grid.py`` compares them integer for integer). It reuses the estimator's
structural caches (``model.py::_static`` / ``_derived``, the layer traces) and flattens everything that does
not depend on batch and sequence length once per call, so that each point costs a few integer operations per
saved storage and per transient candidate instead of a whole :func:`~vramplan.estimate.estimate` call.

The formulas are those of ``model.py::estimate`` (training timeline), ``model.py::_inference`` and
``model.py::_finish``; they are restated here in flattened form, not changed. Python ints throughout (no
numpy): exact at any size, with no overflow to guard against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ..dtypes import BYTES
from ..setup import Setup
from ..spec.model import ModelSpec
from . import overhead
from .graph import Size
from .logits import final_logit_softcapping, loss_bytes
from .model import LayerTrace, _derived, _layout_key, _static, _structural


class Counters(NamedTuple):
    """The counters of one point (the fields of :class:`~vramplan.estimate.Estimate` of the same names)."""

    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_used_bytes: int
    peak_phase: str


def _alloc(n: int) -> int:
    """``dtypes.alloc``: 512-B blocks, 0 for nothing."""
    return -(-n // 512) * 512 if n > 0 else 0


def _terms(tr: LayerTrace) -> tuple[tuple[int, int, int], ...]:
    return tuple((c, a, q) for c, a, q, _ in tr._terms)


def _saved(terms: tuple[tuple[int, int, int], ...], T: int, bss: int) -> int:
    """``LayerTrace.saved_at``."""
    total = 0
    for c, a, q in terms:
        total += -(-(c + a * T + q * bss) // 512) * 512
    return total


def _cands(cands: Sequence[tuple[Size, str]]) -> tuple[tuple[int, int, int], ...]:
    return tuple((s.const, s.per_token, s.per_bss) for s, _ in cands)


def _max_cand(cands: tuple[tuple[int, int, int], ...], T: int, bss: int) -> int:
    """``graph.max_candidate(...)[0]``: the largest candidate, 0 when none is positive."""
    best = 0
    for c, a, q in cands:
        v = c + a * T + q * bss
        if v > best:
            best = v
    return best


def estimate_counters(spec: ModelSpec, setup: Setup, batches_seqs: Sequence[tuple[int, int]],
                      gpu: Any = None) -> list[Counters]:
    """Counters of ``setup`` at every ``(batch, seq)`` of ``batches_seqs``.

    Args:
        spec: the model.
        setup: any setup of the structure to evaluate; its batch and seq are ignored (``new_tokens`` is kept:
            every seq must exceed it, as :class:`~vramplan.setup.Setup` requires).
        batches_seqs: the points, ``(batch, seq)`` each.
        gpu: a card (:class:`vramplan.profiles.Gpu`) whose architecture's CUDA context ``device_used_bytes``
            includes, as ``estimate(..., gpu)``; ``None``: the context of an unknown architecture.

    Returns:
        One :class:`Counters` per point, in order, equal to ``estimate(spec, setup.with_(batch=b, seq=s), gpu,
        detail=False)``'s.

    Raises:
        VramplanError: what :func:`~vramplan.estimate.estimate` raises for this structure.
    """
    ss = _structural(setup)
    st = _static(spec, _layout_key(ss))
    d = _derived(spec, st, ss)
    arch = getattr(gpu, "architecture", "") if gpu is not None else ""
    uses_bnb = setup.quantized or setup.optim in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit", "lion")
    ctx = overhead.cuda_context_bytes(arch, uses_bnb)
    frag = overhead.allocator_overhead_bytes
    out: list[Counters] = []
    append = out.append
    if not setup.training:
        for b, s in batches_seqs:
            peak = _inference_peak(spec, setup, st, d.static_weights, b, s)
            reserved = peak + frag(peak)
            append(Counters(peak, reserved, reserved + ctx, "prefill"))
        return out

    rank, sa = d.rank, d.sa
    L = spec.num_layers
    H = spec.hidden_size
    V = spec.vocab_size
    grad_ckpt = setup.grad_ckpt
    casts, casts_bwd, casts_layer = d.casts, d.casts_backward, d.casts_layer

    def buf(phase: str) -> int:
        return rank.buffer_bytes(phase) if rank is not None else 0   # type: ignore[attr-defined]

    distinct = {id(tr): tr for tr in sa.layer_traces}
    counts: dict[int, int] = {}
    for tr in sa.layer_traces:
        counts[id(tr)] = counts.get(id(tr), 0) + 1
    # per distinct trace: saved terms, layers using it, input saved, pruned candidates, largest constant
    traces = [(_terms(tr), counts[k], tr.input_saved, _cands(tr.fwd_transients), _cands(tr.bwd_candidates),
               tr.max_constant) for k, tr in distinct.items()]
    first = _terms(sa.layer_traces[0]) if sa.layer_traces else None
    head_terms = _terms(sa.head)
    resid_k = BYTES[sa.resid_dtype] * H
    lt = BYTES[sa.logits_dtype]
    chunked = setup.loss == "chunked"
    cd = BYTES[setup.compute_dtype]
    softcap = final_logit_softcapping(spec)
    dequant = max((t[5] for t in traces), default=0)
    cublas = overhead.CUBLAS_WORKSPACE_BYTES
    base = d.static_weights + d.opt_gpu + cublas
    grads, grad_head = d.grads, d.grad_head
    grad_layers = grads - grad_head
    per_layer_grad = grad_layers // max(L, 1)
    b_fwd, b_bwd, b_layers, b_opt = buf("forward"), buf("backward"), buf("backward (layers)"), buf("optimizer")
    opt_cand = base + (rank.grads_step if rank is not None else grads) + d.opt_tmp + b_opt  # type: ignore
    outside = sum(c.bytes for c in rank.device) if rank is not None else 0                  # type: ignore
    device_extra = ctx + d.opt_paged + outside

    for b, s in batches_seqs:
        T, bss = b * s, b * s * s
        resid_bytes = _alloc(T * resid_k)
        fwd_tmp = bwd_ws = 0
        recompute = 0
        layer_sum = 0
        has = False
        for terms, n, input_saved, fwd, bwd, const in traces:
            saved = _saved(terms, T, bss)
            layer_sum += saved * n
            v = _max_cand(fwd, T, bss)
            if v > fwd_tmp:
                fwd_tmp = v
            v = _max_cand(bwd, T, bss) + const
            if not has or v > bwd_ws:
                bwd_ws = v
            if grad_ckpt:
                v = saved - (resid_bytes if input_saved else 0)
                if not has or v > recompute:
                    recompute = v
            has = True
        layer_acts = L * resid_bytes if grad_ckpt else layer_sum
        head_saved = _saved(head_terms, T, bss)
        logits_saved, loss_fwd_tmp, loss_bwd_tmp = loss_bytes(T, V, H, lt, cd, chunked, softcap)
        acts_total = layer_acts + head_saved + logits_saved
        first_layer_acts = _saved(first, T, bss) if first is not None else 0
        tmp = fwd_tmp + dequant
        peak = base + casts + acts_total + (loss_fwd_tmp if loss_fwd_tmp > tmp else tmp) + b_fwd
        phase = "forward"
        v = base + casts_bwd + acts_total + loss_bwd_tmp + b_bwd
        if v > peak:
            peak, phase = v, "backward"
        x1 = (casts_bwd + (casts_layer if grad_ckpt else 0) + acts_total - logits_saved + grad_head
              + (recompute + fwd_tmp if grad_ckpt else 0) + bwd_ws + per_layer_grad)
        x2 = ((resid_bytes if grad_ckpt else first_layer_acts) + recompute + grad_head + grad_layers + bwd_ws
              + casts_layer)
        v = base + (x1 if x1 >= x2 else x2) + b_layers
        if v > peak:
            peak, phase = v, "backward (layers)"
        if opt_cand > peak:
            peak, phase = opt_cand, "optimizer"
        reserved = peak + frag(peak)
        append(Counters(peak, reserved, reserved + device_extra, phase))
    return out


def _inference_peak(spec: ModelSpec, setup: Setup, st: Any, static_weights: int, b: int, s: int) -> int:
    """``model.py::_inference``'s peak allocated bytes at batch ``b``, seq ``s``."""
    kv_k = BYTES[setup.compute_dtype]
    layers = spec.num_layers
    if spec.sliding_window and spec.model_type in ("mistral",):
        kv = 2 * layers * b * min(s, spec.sliding_window) * spec.num_kv_heads * spec.head_dim * kv_k
    else:
        kv = 2 * layers * b * s * spec.num_kv_heads * spec.head_dim * kv_k
    prompt = s - setup.new_tokens
    T = b * prompt
    bss = b * prompt * prompt
    tr = st.layer_traces[-1] if st.layer_traces else None
    work = 0
    if tr is not None:
        work = sum(_alloc(c + a * T + q * bss) for c, a, q in _terms(tr))
        work += _max_cand(_cands(tr.fwd_transients), T, bss) + tr.max_constant
    logits = _alloc(b * spec.vocab_size * 4) * 2
    return static_weights + kv + work + logits + overhead.CUBLAS_WORKSPACE_BYTES
