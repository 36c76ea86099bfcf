"""The allocations of one training step at any (batch, seq): the estimator's terms as a public, plain-data
description for the caching-allocator replay (``vramplan/allocator/lengths.py``), which builds an alloc/free
trace from it and must not read the estimator's internals.

:func:`step_allocations` reads the same cached model states the estimator prices (``states.py::model_states``):
the timeline's fixed terms (``timeline.py::StateTerms``), each decoder layer's saved storages, transients and
backward working set as ``(const, per_token, per_bss)`` coefficients (``activations.py::LayerActivations``), the
output head's saves and the loss (``logits.py::loss_bytes``). It restates no formula: every size is the
estimator's own, evaluated by :func:`~.activations.max_affine` and :func:`~.logits.loss_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..dtypes import BYTES, alloc
from ..errors import SetupError
from ..setup import Setup
from ..shapes.spec import ModelSpec
from .activations import max_affine
from .logits import logits_kept_blocks, logits_positions, loss_bytes
from .states import model_states

#: ``(const, per_token, per_bss)``: bytes ``const + per_token·tokens + per_bss·batch·seq²`` of one tensor
Terms = tuple[int, int, int]


def _at(t: Terms, tokens: int, bss: int) -> int:
    return alloc(t[0] + t[1] * tokens + t[2] * bss)


@dataclass(frozen=True)
class LayerAllocations:
    """One decoder layer's tensors as functions of ``tokens`` = batch × seq and ``bss`` = batch × seq²."""

    saved: tuple[Terms, ...]                    # each storage autograd saves for backward
    input_saved: bool                           # whether the layer input is among them
    forward_transients: tuple[Terms, ...]       # candidates for the largest set of short-lived forward tensors
    backward_candidates: tuple[Terms, ...]      # candidates for one op's backward working set
    backward_constant_bytes: int                # what backward adds to it (a dequantized weight)

    def saved_bytes(self, tokens: int, bss: int) -> list[int]:
        """Allocator-rounded bytes of each saved storage."""
        return [_at(t, tokens, bss) for t in self.saved]

    def forward_transient_bytes(self, tokens: int, bss: int) -> int:
        """The largest set of the layer's short-lived forward tensors (``max_affine`` of the candidates)."""
        return max_affine(self.forward_transients, tokens, bss)

    def backward_working_bytes(self, tokens: int, bss: int) -> int:
        """One op's backward working set, plus a dequantized weight."""
        return max_affine(self.backward_candidates, tokens, bss) + self.backward_constant_bytes


@dataclass(frozen=True)
class StepAllocations:
    """What one training step of a setup allocates, in the estimator's terms, at any (batch, seq).

    Attributes:
        weight_allocations: each weight's CUDA allocations (data, quantization state) as placed.
        adapter_allocations: each adapter tensor (LoRA A/B, DoRA magnitudes, ...).
        optimizer_allocations: the optimizer states, ``optimizer_bytes`` shared evenly over two states per
            trainable tensor (the estimator prices their total, not each one).
        fixed_bytes: the timeline's base: weights + optimizer states in the allocator + cuBLAS workspace.
        optimizer_bytes: optimizer states on the GPU (part of ``fixed_bytes``).
        layers: one entry per decoder layer, in order (layers with the same trace share one object).
        head_saved: what the final norm saves, at every position.
        head_kept: what the output head's matmul saves, at the positions whose logits are computed
            (:meth:`logits_shape`).
        logits_to_keep, prompt_tokens: ``--logits-to-keep`` and ``--prompt-tokens`` (:meth:`logits_shape`).
        resid_bytes_per_token: one layer input (the residual stream) per token.
        dequant_bytes: the largest dequantized weight of a forward (4/8-bit layers).
        casts_bytes, casts_layer_bytes: autocast's 16-bit weight copies, all and one layer's.
        grad_head_bytes, grad_layers_bytes: the output head's gradient and every other gradient.
        optimizer_step_bytes: ``optimizer.step()`` temporaries.
        grad_ckpt: gradient checkpointing (a layer saves its input only; backward recomputes it).
        standard_loss: the full-logits cross-entropy (logits, ``.float()``, log-probs, two fp32 gradients);
            ``False``: a chunked or fused loss, whose tensors :meth:`loss` gives as three blocks.
        vocab_size: the head's output width (the fp32 logits are ``tokens × vocab_size × 4`` bytes).
    """

    weight_allocations: tuple[int, ...]
    adapter_allocations: tuple[int, ...]
    optimizer_allocations: tuple[int, ...]
    fixed_bytes: int
    optimizer_bytes: int
    layers: tuple[LayerAllocations, ...]
    head_saved: tuple[Terms, ...]
    head_kept: tuple[Terms, ...]
    logits_to_keep: bool
    prompt_tokens: int
    resid_bytes_per_token: int
    dequant_bytes: int
    casts_bytes: int
    casts_layer_bytes: int
    grad_head_bytes: int
    grad_layers_bytes: int
    optimizer_step_bytes: int
    grad_ckpt: bool
    standard_loss: bool
    vocab_size: int
    loss_args: tuple[Any, ...]                  # :func:`~.logits.loss_bytes`'s arguments after ``tokens``

    @property
    def model_state_bytes(self) -> tuple[int, ...]:
        """The persistent allocations, one per CUDA allocation: weights, adapters, optimizer states. Their
        rounded sum is at most ``fixed_bytes``, the rest being the cuBLAS workspace (more only when a rank's
        share replaces the placed weights)."""
        return self.weight_allocations + self.adapter_allocations + self.optimizer_allocations

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def resid_bytes(self, tokens: int) -> int:
        """One layer input at ``tokens`` (what a checkpointed layer saves)."""
        return alloc(tokens * self.resid_bytes_per_token)

    def head_saved_bytes(self, tokens: int, bss: int) -> list[int]:
        return [_at(t, tokens, bss) for t in self.head_saved]

    def logits_shape(self, batch: int, seq: int) -> tuple[int, int]:
        """``(tokens, positions per sequence)`` whose logits a step at ``batch`` × ``seq`` computes
        (:func:`~.logits.logits_positions`): the shape :meth:`head_kept_bytes`, :meth:`loss`, :meth:`kept_blocks`
        and :meth:`logits_fp32_bytes` take."""
        rows = logits_positions(seq, self.prompt_tokens, self.logits_to_keep)
        return batch * rows, rows

    def head_kept_bytes(self, tokens: int, seq: int) -> list[int]:
        """What the head's matmul saves at ``tokens`` (:meth:`logits_shape`) = batch × ``seq`` positions."""
        return [_at(t, tokens, tokens * seq) for t in self.head_kept]

    def loss(self, tokens: int, seq: int = 0) -> tuple[int, int, int]:
        """``(saved, forward temporaries, backward temporaries)`` of the loss at ``tokens`` = batch × ``seq``
        (``loss_bytes``; ``seq`` 0: one sequence)."""
        saved, fwd, bwd = tuple(loss_bytes(tokens, *self.loss_args, seq=seq))[:3]
        return saved, fwd, bwd

    def kept_blocks(self, tokens: int, seq: int = 0) -> tuple[int, ...]:
        """The logits the training loop keeps alive from the head of one step to the head of the next (LitGPT's
        ``logits`` list: ``logits_kept_blocks``), one allocation each; empty for the other losses."""
        vocab, _, logits_b, _, kind = self.loss_args[:5]
        return logits_kept_blocks(tokens, vocab, logits_b, kind, seq=seq)

    def logits_fp32_bytes(self, tokens: int) -> int:
        """One fp32 ``tokens × vocab`` tensor."""
        return alloc(tokens * self.vocab_size * 4)


def step_allocations(spec: ModelSpec, setup: Setup) -> StepAllocations:
    """The allocations of one training step of ``setup`` on ``spec`` (its batch and seq are not used: the
    result is evaluated at any shape).

    Raises:
        SetupError: an inference setup (no training step to describe).
        VramplanError: what :func:`~vramplan.estimate.estimate` raises for this structure.
    """
    if not setup.training:
        raise SetupError(f"--method {setup.method}: the step allocations describe a training step")
    d = model_states(spec, setup)
    s, a = d.timeline, d.activations
    layers: list[LayerAllocations] = []
    for tr in a.traces:
        terms, n, input_saved, fwd, bwd, const = tr[:6]
        layers.extend([LayerAllocations(tuple(terms), bool(input_saved), tuple(fwd), tuple(bwd), int(const))] * n)
    st = d.structure
    weights = tuple(b for p in st.placements for _, b in p.parts if b > 0)
    adapters = tuple(t.numel * BYTES.get(t.dtype, 4) for t in st.adapters)
    opt, n_train = d.opt_gpu, len(st.trainables)
    states: tuple[int, ...] = ()
    if n_train and opt > 0:
        per = opt // (2 * n_train)
        states = (per,) * (2 * n_train) if per > 0 else (opt,)
    return StepAllocations(
        weight_allocations=weights, adapter_allocations=adapters, optimizer_allocations=states, fixed_bytes=s.base, optimizer_bytes=d.opt_gpu, layers=tuple(layers),
        head_saved=tuple(a.head), head_kept=tuple(a.head_kept), logits_to_keep=bool(a.keep),
        prompt_tokens=setup.prompt_tokens, resid_bytes_per_token=a.resid_k, dequant_bytes=a.dequant, casts_bytes=s.casts,
        casts_layer_bytes=s.casts_layer, grad_head_bytes=s.grad_head, grad_layers_bytes=s.grad_layers,
        optimizer_step_bytes=s.opt_tmp, grad_ckpt=bool(s.grad_ckpt), standard_loss=setup.loss == "standard",
        vocab_size=spec.vocab_size, loss_args=tuple(a.loss_args))
