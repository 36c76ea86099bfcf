"""Activation bytes of one layout at any (batch, seq): the :class:`~vramplan.estimate.timeline.ActTerms` of
the timeline, from the traced layers (``structure``'s layer traces) and the loss (``logits.py``).

The traces are flattened once per structure into tuples of integer coefficients, so that each point costs a
few integer operations per saved storage and per transient candidate: the estimator and the sweep's evaluator
both call :meth:`LayerActivations.at` (one formula, no copy for speed).
"""

from __future__ import annotations

from typing import Any

from ..dtypes import BYTES, alloc, alloc_sum
from ..setup import Setup
from ..shapes.spec import ModelSpec
from .logits import final_logit_softcapping, loss_bytes
from .timeline import ActTerms

_new = tuple.__new__     # builds the NamedTuple without its Python-level __new__ (called once per sweep row)


def max_affine(cands: tuple[tuple[int, int, int], ...], tokens: int, bss: int) -> int:
    """The largest ``const + per_token·tokens + per_bss·bss`` of ``cands``, 0 when none is positive."""
    best = 0
    for c, a, q in cands:
        v = c + a * tokens + q * bss
        if v > best:
            best = v
    return best


class LayerActivations:
    """The activation terms of one layout (``layout``: a structure with ``layer_traces``, ``head``,
    ``resid_dtype`` and ``logits_dtype``) under ``setup``'s checkpointing, loss and compute dtype."""

    __slots__ = ("traces", "head", "resid_k", "num_layers", "grad_ckpt", "dequant", "loss_args")

    def __init__(self, spec: ModelSpec, setup: Setup, layout: Any) -> None:
        distinct = {id(tr): tr for tr in layout.layer_traces}
        counts: dict[int, int] = {}
        for tr in layout.layer_traces:
            counts[id(tr)] = counts.get(id(tr), 0) + 1
        # per distinct trace: saved terms, layers using it, input saved, forward transients, backward
        # candidates (+ its largest constant: a dequantized weight), whether layer 0 uses it
        first = id(layout.layer_traces[0]) if layout.layer_traces else None
        self.traces = tuple((tr.saved_terms, counts[k], tr.input_saved, tuple(c for c, _ in tr.fwd_transients),
                             tuple(c for c, _ in tr.bwd_candidates), tr.max_constant, k == first)
                            for k, tr in distinct.items())
        self.head = layout.head.saved_terms
        self.resid_k = BYTES[layout.resid_dtype] * spec.hidden_size
        self.num_layers = spec.num_layers
        self.grad_ckpt = setup.grad_ckpt
        self.dequant = max((t[5] for t in self.traces), default=0)
        self.loss_args = (spec.vocab_size, spec.hidden_size, BYTES[layout.logits_dtype],
                          BYTES[setup.compute_dtype], setup.loss == "chunked", final_logit_softcapping(spec))

    def at(self, batch: int, seq: int) -> ActTerms:
        """The terms at ``batch`` sequences of ``seq`` tokens."""
        T, bss = batch * seq, batch * seq * seq
        ckpt = self.grad_ckpt
        resid = alloc(T * self.resid_k)
        fwd_tmp = bwd_ws = recompute = layer_sum = first_saved = 0
        for terms, n, input_saved, fwd, bwd, const, first in self.traces:
            saved = alloc_sum(terms, T, bss)
            layer_sum += saved * n
            if first:
                first_saved = saved
            v = max_affine(fwd, T, bss)
            if v > fwd_tmp:
                fwd_tmp = v
            v = max_affine(bwd, T, bss) + const
            if v > bwd_ws:
                bwd_ws = v
            if ckpt:
                # the recomputed layer's saves, less its input when that is among them: the checkpoint keeps it
                v = saved - (resid if input_saved else 0)
                if v > recompute:
                    recompute = v
        saved, fwd, bwd = loss_bytes(T, *self.loss_args)
        return _new(ActTerms, (self.num_layers * resid if ckpt else layer_sum, alloc_sum(self.head, T, bss), saved,
                               fwd, bwd, fwd_tmp, self.dequant, bwd_ws, recompute, resid, first_saved))
