"""Logits and the loss: what the causal-LM loss saves for backward and what it allocates around it.

One home for the rules the estimator (``estimator.py``), the sweep's evaluator (``grid.py``) and the simulation's
comparison (``simulate/compare.py``) all need. Plain integers in and out: :func:`loss_bytes` runs once per
sweep row.
"""

from __future__ import annotations

from typing import NamedTuple

from ..dtypes import BYTES, alloc
from ..shapes.spec import ModelSpec
from ..units import ceil_div

_new = tuple.__new__     # builds the NamedTuple without its Python-level __new__ (called once per sweep row)


class LossBytes(NamedTuple):
    """Bytes of the loss at one point, allocator-rounded."""

    saved: int          # held from the end of forward to the loss's backward (log-probs, tanh output, ...)
    forward_tmp: int    # transient while the loss runs in forward
    backward_tmp: int   # transient at the first backward node (gradients of the log-probs and the logits)


def final_logit_softcapping(spec: ModelSpec) -> bool:
    """Gemma-2/3 ``final_logit_softcapping``: logits / cap -> tanh -> * cap before the loss; tanh saves its
    output (transformers ``models/gemma2/modeling_gemma2.py::Gemma2ForCausalLM.forward``; measured in
    ``tests/estimate`` and by the simulation)."""
    return spec.model_type.startswith("gemma") and bool(spec.config.get("final_logit_softcapping"))


def chunk_rows(tokens: int, vocab: int, hidden: int) -> int:
    """Rows of one Liger-Kernel fused-linear-cross-entropy chunk: ``ceil(BT / ceil(V/H))`` rounded up to a
    power of two, at most ``BT`` (``liger_kernel/ops/fused_linear_cross_entropy.py``)."""
    chunk = 1 << max(0, (ceil_div(tokens, ceil_div(vocab, hidden)) - 1).bit_length())
    return min(chunk, tokens)


def loss_bytes(tokens: int, vocab: int, hidden: int, logits_bytes: int, compute_bytes: int, chunked: bool,
               softcap: bool) -> LossBytes:
    """The loss's memory at ``tokens`` = batch × seq.

    * standard (transformers ``loss/loss_utils.py::ForCausalLMLoss`` -> ``nn.functional.cross_entropy``):
      logits in the logits dtype (``logits_bytes`` B each), ``logits.float()`` (a new fp32 copy unless they
      are fp32 already), log_softmax's saved fp32 output (+ tanh's saved output under softcapping); backward
      starts with the fp32 gradients of the log-probs and of the logits;
    * chunked (Liger-Kernel ``FusedLinearCrossEntropy``): :func:`chunk_rows` tokens at a time × vocab in fp32;
      the input gradient (tokens × hidden × ``compute_bytes``) is computed in forward and kept.
    """
    if chunked:
        chunk = chunk_rows(tokens, vocab, hidden)
        return _new(LossBytes, (alloc(tokens * hidden * compute_bytes),
                                alloc(chunk * vocab * 4) * 2 + alloc(chunk * vocab * logits_bytes), 0))
    saved = alloc(tokens * vocab * 4)
    if softcap:
        saved += alloc(tokens * vocab * logits_bytes)
    fwd = alloc(tokens * vocab * logits_bytes) + (alloc(tokens * vocab * 4) if logits_bytes != 4 else 0)
    return _new(LossBytes, (saved, fwd, 2 * alloc(tokens * vocab * 4)))


def loss_formula(spec: ModelSpec, tokens: int, logits_dtype: str, compute_dtype: str, chunked: bool) -> str:
    """The explanation of :func:`loss_bytes` with its numbers."""
    V = spec.vocab_size
    if chunked:
        chunk = chunk_rows(tokens, V, spec.hidden_size)
        return (f"chunked loss (Liger-Kernel FusedLinearCrossEntropy): logits of {chunk:,} tokens at a "
                f"time × vocab {V:,} in fp32, never all {tokens:,}; the input gradient "
                f"(tokens × hidden × {BYTES[compute_dtype]} B) is computed in forward and kept")
    upcast = logits_dtype != "fp32"
    return (f"tokens {tokens:,} × vocab {V:,}: logits in {logits_dtype} ({BYTES[logits_dtype]} B), logits.float() "
            f"({'a new fp32 copy' if upcast else 'already fp32'}) and log_softmax's saved fp32 output "
            + (f"plus tanh's saved {logits_dtype} output (final_logit_softcapping) "
               if final_logit_softcapping(spec) else "") +
            "(transformers loss/loss_utils.py ForCausalLMLoss -> nn.functional.cross_entropy); backward adds "
            "the fp32 gradient of the log-probs and of the logits")
