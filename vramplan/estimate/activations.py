"""Activation bytes of one layout at any (batch, seq): the :class:`~vramplan.estimate.timeline.ActTerms` of
the timeline, from the traced layers (``structure``'s layer traces), the loss (``logits.py``) and, with
``--act-offload``, what the offloader leaves on the GPU.

The traces are flattened once per structure into tuples of integer coefficients, so that each point costs a
few integer operations per saved storage and per transient candidate: the estimator and the sweep's evaluator
both call :meth:`LayerActivations.at` (one formula, no copy for speed).

Activation offloading (``--act-offload``), two offloaders:

* ``hooks`` — torchtune 0.6.1 ``training/_activation_offloading.py:24-353 OffloadActivations`` (TRL's and
  axolotl's ``activation_offloading`` use a copy of it), a ``saved_tensors_hooks`` pack hook: every saved tensor
  of at least ``min_offload_size`` = 1,024 B (``:71``, ``:150-153``) that is not a ``Parameter``/``Buffer`` is
  copied to (pinned) CPU memory. Only the innermost saved-tensor hooks run, so under non-reentrant checkpointing
  a layer's own saves are the checkpoint's placeholders and what the offloader sees is the layer input, saved by
  ``torch.utils.checkpoint``'s ``_NoopSaveInputs``; the recompute in backward runs under the checkpoint's hooks and
  stays on the GPU. The output head runs under ``NoOpManager`` (``:396-418``): its saves stay. With streams
  (the default) the last ``max_fwd_stash_size`` = 5 packed tensors stay referenced until their copy is done
  (``:154-163``, ``:189-193``) — at the end of forward those are the final norm's saves (already in
  ``activations/head``), during a layer up to 5 layer inputs (checkpointing) or one layer's saves; in backward a
  tensor brought back stays until the next node that unpacks has run (``:264-338``): two layer inputs, or one
  layer's saves, at a time.
* ``unsloth`` — unsloth_zoo 2026.10.9 ``gradient_checkpointing.py:1337-1560 UnslothCheckpointFunction``
  (``use_gradient_checkpointing="unsloth"``): each checkpointed layer's input above 2 MiB (``MINIMUM_SIZE``,
  ``:1325``), stored as bf16 when it is fp32 (``:1393-1395``), goes to CPU except the last layer's
  (``LAST_GC_INDEX``); two persistent device staging buffers of one input each (``GPU_BUFFERS``,
  ``GPU_BUFFERS_B``: double buffering once more than 512 MiB are free, ``:67``, ``:1305-1313``, ``:1430-1447``,
  counted as an upper bound). Without checkpointing nothing is offloaded.
"""

from __future__ import annotations

from typing import Any

from ..dtypes import BYTES, alloc, alloc_sum
from ..setup import Setup
from ..shapes.spec import ModelSpec
from ..versions import modelled_versions
from .logits import final_logit_softcapping, logits_kept, logits_positions, loss_bytes, loss_code
from .timeline import ActTerms

_new = tuple.__new__     # builds the NamedTuple without its Python-level __new__ (called once per sweep row)

#: torchtune 0.6.1 ``OffloadActivations(max_fwd_stash_size=5, min_offload_size=1024)`` (``_activation_offloading.py:66-72``)
OFFLOAD_STASH, OFFLOAD_MIN_BYTES = 5, 1024
#: unsloth_zoo 2026.10.9 ``gradient_checkpointing.py:1325`` ``MINIMUM_SIZE = 2 * 1024 * 1024``
UNSLOTH_MIN_BYTES = 2 * 1024 * 1024
OFFLOADERS = ("none", "hooks", "unsloth")


def offloader(setup: Setup) -> str:
    """Which offloader ``--act-offload`` means for this setup: Unsloth's checkpointer under ``--stack unsloth``
    (its offloading is part of its gradient checkpointing), else torchtune's ``OffloadActivations`` hooks."""
    if not setup.act_offload or not setup.training:
        return "none"
    return "unsloth" if setup.stack == "unsloth" else "hooks"


def max_affine(cands: tuple[tuple[int, int, int], ...], tokens: int, bss: int) -> int:
    """The largest ``const + per_token·tokens + per_bss·bss`` of ``cands``, 0 when none is positive."""
    best = 0
    for c, a, q in cands:
        v = c + a * tokens + q * bss
        if v > best:
            best = v
    return best


def _head_placement(layout: Any) -> Any:
    placements = getattr(layout, "placements", ())
    head = next((p for p in placements if p.tensor.role == "lm_head"), None)
    return head if head is not None else next((p for p in placements if p.tensor.role == "embedding"), None)


class LayerActivations:
    """The activation terms of one layout (``layout``: a structure with ``layer_traces``, ``head``,
    ``resid_dtype`` and ``logits_dtype``) under ``setup``'s checkpointing, loss, compute dtype and offloading."""

    __slots__ = ("traces", "head", "head_kept", "resid_k", "num_layers", "grad_ckpt", "dequant", "loss_args",
                 "offload", "head_dequant", "vision", "seq2seq", "target", "keep")

    def __init__(self, spec: ModelSpec, setup: Setup, layout: Any) -> None:
        distinct = {id(tr): tr for tr in layout.layer_traces}
        counts: dict[int, int] = {}
        for tr in layout.layer_traces:
            counts[id(tr)] = counts.get(id(tr), 0) + 1
        # per distinct trace: saved terms, layers using it, input saved, forward transients, backward
        # candidates (+ its largest backward constant: a dequantized weight), whether layer 0 uses it
        first = id(layout.layer_traces[0]) if layout.layer_traces else None
        self.traces = tuple((tr.saved_terms, counts[k], tr.input_saved, tuple(c for c, _ in tr.fwd_transients),
                             tuple(c for c, _ in tr.bwd_candidates), tr.max_bwd_constant, k == first)
                            for k, tr in distinct.items())
        # the head trace: the final norm's saves at every position (``head``), what the lm_head matmul saves (its
        # input, or the input's autocast copy) at the positions whose logits are computed (``head_kept``:
        # --logits-to-keep slices the norm's output first, a copy of those rows; measured with ms-swift's real step,
        # tests/estimate/test_logits_to_keep.py)
        pairs = tuple(zip(layout.head.saved_terms, layout.head.saved, strict=True))
        self.head = tuple(t for t, st in pairs if st.category == "norms")
        self.head_kept = tuple(t for t, st in pairs if st.category != "norms")
        if setup.loss == "trl-fused":
            # TRL's fused head runs the lm_head matmul inside ChunkedLogProbFunction, casting weight tiles there and
            # saving the weight by reference (trl 1.16.0 kernels/chunked_logprob.py:352-356, :386): of the head
            # trace only the final norm's saves remain (its hidden copy is loss_bytes'); measured,
            # tests/estimate/test_stack_trl_cpu.py
            self.head_kept = ()
        self.keep = setup.logits_to_keep
        self.resid_k = BYTES[layout.resid_dtype] * spec.hidden_size
        self.num_layers = spec.num_layers
        self.grad_ckpt = setup.grad_ckpt
        self.dequant = max((tr.max_constant for tr in distinct.values()), default=0)
        # a quantized output head (--quant-head): its dequantized copies in forward and backward (head_moments)
        self.head_dequant = (layout.head.max_constant, layout.head.max_bwd_constant)
        head = _head_placement(layout)
        head_bytes = BYTES.get(head.compute_dtype, 0) if head is not None else 0
        # positional, in loss_bytes' order (vramplan/allocator/lengths.py calls loss_bytes(T, *loss_args))
        self.loss_args = (spec.vocab_size, spec.hidden_size, BYTES[layout.logits_dtype],
                          BYTES[setup.compute_dtype], loss_code(setup.loss, modelled_versions(setup.versions)),
                          final_logit_softcapping(spec),
                          setup.autocast, BYTES[layout.resid_dtype], head_bytes,
                          bool(head is not None and head.trainable))
        self.offload = OFFLOADERS.index(offloader(setup))
        self.vision = getattr(layout, "vision", None)     # a multimodal step's tower and projector (vision.py)
        # an encoder-decoder step (seq2seq.py): the encoder at ``seq``, the decoder at --target-seq (0: seq)
        self.seq2seq, self.target = getattr(layout, "seq2seq", None), setup.target_seq

    def head_moments(self, tokens: int) -> tuple[int, int]:
        """A quantized output head's matmul at ``tokens``, forward and backward: its output logits (or their
        gradient, in the logits dtype) and its dequantized weight copies (``layers.py Program._dequant_4bit``), plus
        the input gradient (tokens × hidden, compute dtype) in backward. 0, 0 for an unquantized head."""
        hf, hb = self.head_dequant
        if not hf:
            return 0, 0
        vocab, hidden, logits_b, compute_b = self.loss_args[:4]
        logits = alloc(tokens * vocab * logits_b)
        return logits + hf, logits + hb + alloc(tokens * hidden * compute_b)

    def vision_at(self, batch: int, seq: int, images: int) -> tuple[int, int]:
        """The vision tower's and the projector's (with the merge's) saves at ``images`` images per sequence."""
        if self.vision is None or not images:
            return 0, 0
        return self.vision.at(batch * images, batch * seq, self.grad_ckpt)

    def logits_rows(self, seq: int, prompt: int = 0) -> int:
        """Positions per sequence whose logits are computed (:func:`~.logits.logits_positions`); an
        encoder-decoder model's decoder scores every target position (no ``logits_to_keep`` in its forward)."""
        return seq if self.seq2seq is not None else logits_positions(seq, prompt, self.keep)

    def at(self, batch: int, seq: int, images: int = 0, prompt: int = 0) -> ActTerms:
        """The terms at ``batch`` sequences of ``seq`` tokens (``images`` of them per sequence: vision.py), the first
        ``prompt`` labels of each masked."""
        if self.seq2seq is not None:
            return self.seq2seq.at(batch, seq, self.target or seq)
        T, bss = batch * seq, batch * seq * seq
        rows = self.logits_rows(seq, prompt)
        TL = batch * rows                                # positions whose logits are computed
        ckpt = self.grad_ckpt
        resid = alloc(T * self.resid_k)
        fwd_tmp = bwd_ws = recompute = layer_sum = first_saved = one_layer = 0
        for terms, n, input_saved, fwd, bwd, const, first in self.traces:
            saved = alloc_sum(terms, T, bss)
            layer_sum += saved * n
            if saved > one_layer:
                one_layer = saved
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
        args = self.loss_args
        saved, fwd, bwd = loss_bytes(TL, *args, seq=rows)
        if self.head_dequant[0]:
            hf, hb = self.head_moments(TL)
            # phase_peaks adds the loss's saved tensors to both moments; at the head's matmul they do not exist yet
            # (forward) or are freed (its backward, after log_softmax's): the head's moment, less them
            fwd, bwd = max(fwd, hf - saved), max(bwd, hb - saved)
        kept = logits_kept(TL, args[0], args[2], args[4], seq=rows)
        layer_acts = self.num_layers * resid if ckpt else layer_sum
        gpu_acts, bwd_acts, stash, buffers, offloaded = layer_acts, layer_acts, 0, 0, 0
        if self.offload == 1:                            # torchtune / TRL OffloadActivations
            if ckpt and T * self.resid_k >= OFFLOAD_MIN_BYTES:
                gpu_acts, offloaded = 0, layer_acts
                stash, bwd_acts = min(OFFLOAD_STASH, self.num_layers) * resid, min(2, self.num_layers) * resid
            elif not ckpt:
                gpu_acts, offloaded, stash, bwd_acts = 0, layer_acts, one_layer, one_layer
        elif self.offload == 2 and ckpt and self.num_layers > 1:     # Unsloth's offloaded checkpoints
            store = T * min(self.resid_k, 2 * args[1])      # fp32 inputs are stored as bf16
            if store > UNSLOTH_MIN_BYTES:
                gpu_acts = bwd_acts = resid                  # the last layer's input is not offloaded
                buffers = 2 * alloc(store)
                offloaded = (self.num_layers - 1) * store
        vision = sum(self.vision_at(batch, seq, images)) if images else 0
        head = alloc_sum(self.head, T, bss) + alloc_sum(self.head_kept, TL, batch * rows * rows)
        return _new(ActTerms, (gpu_acts, head, saved, fwd, bwd, fwd_tmp, self.dequant,
                               bwd_ws, recompute, resid, first_saved, kept, stash, bwd_acts, buffers, offloaded,
                               vision))
