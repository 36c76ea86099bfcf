"""Inference (``--method inference``): the prefill of ``seq - new_tokens`` prompt tokens and decoding to
``seq``, under ``torch.no_grad`` (nothing saved). One home for the KV cache and the prefill's working set,
used by the estimator (``estimator.py``) and the sweep's evaluator (``grid.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..dtypes import BYTES, alloc
from ..shapes.spec import ModelSpec
from .activations import max_affine

#: families whose transformers cache keeps only the sliding window (``MistralConfig.sliding_window``)
SLIDING_WINDOW_CACHE = ("mistral",)


class InferenceBytes(NamedTuple):
    kv_cache: int
    prefill_working_set: int
    last_logits: int


def kv_cache_len(spec: ModelSpec, seq: int) -> int:
    """Positions the cache holds at ``seq`` tokens: all of them, or the sliding window."""
    if spec.sliding_window and spec.model_type in SLIDING_WINDOW_CACHE:
        return min(seq, spec.sliding_window)
    return seq


def kv_cache_bytes(spec: ModelSpec, batch: int, seq: int, dtype: str) -> int:
    """transformers ``DynamicCache``: K and V of every layer, ``batch × positions × kv heads × head_dim``."""
    return 2 * spec.num_layers * batch * kv_cache_len(spec, seq) * spec.num_kv_heads * spec.head_dim * BYTES[dtype]


def inference_bytes(spec: ModelSpec, layout: Any, batch: int, seq: int, new_tokens: int,
                    kv_dtype: str) -> InferenceBytes:
    """The KV cache at ``seq``; the prefill's working set, an upper bound: one layer's tensors all alive at once
    (the last layer's trace: layer 0 may save less, with frozen embeddings) plus its largest transient and
    dequantized weight; the last position's logits and their fp32 upcast for sampling (``generate`` keeps
    the last position only, ``logits_to_keep=1``)."""
    prompt = seq - new_tokens
    T, bss = batch * prompt, batch * prompt * prompt
    work = 0
    if layout.layer_traces:
        tr = layout.layer_traces[-1]
        work = tr.saved_at(T, bss) + max_affine(tuple(c for c, _ in tr.fwd_transients), T, bss) + tr.max_constant
    return InferenceBytes(kv_cache_bytes(spec, batch, seq, kv_dtype), work, alloc(batch * spec.vocab_size * 4) * 2)
