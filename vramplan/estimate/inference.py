"""Inference (``--method inference``): the prefill of ``seq - new_tokens`` prompt tokens and decoding to ``seq``
under ``torch.no_grad`` (autograd saves nothing), as ``model.generate()`` runs it in transformers 5.24. One home
for the KV cache of every ``--cache`` kind and for the prefill's and the decode's peaks, used by the estimator
(``estimator.py``) and the sweep's evaluator (``grid.py``).

The prefill peak is the largest set of tensors alive at once: for each distinct decoder layer, the symbolic
replay of its forward (``layers.py`` on ``graph.py``, the training path's tracer) in no-grad mode gives the bytes
alive after each op (:meth:`~vramplan.estimate.graph.Tracer.live_candidates`: a tensor lives from its allocation
to its last use), to which are added what the model's forward holds across all layers and the KV cache of the
layers before. The model-level tensors follow ``LlamaModel.forward`` (``models/llama/modeling_llama.py``) and its
siblings: ``input_ids`` (int64), ``inputs_embeds`` (kept by ``forward``'s local variable while the layers run),
the layer input (the caller's ``hidden_states``), ``position_ids`` (int64, ``(1, P)`` without a padding mask),
the rotary ``cos``/``sin`` (``(1, P, rotary_dim)`` in the model dtype; one pair per layer type for Gemma 3) and
the 4-D masks ``masking_utils.py`` materializes (``sdpa_mask``: bool, only when ``_ignore_causal_mask_sdpa``
refuses to skip it — padding or a sliding window shorter than the keys; ``eager_mask``: the model dtype,
always). After the layers: the final norm over every position, then ``lm_head`` on the last position only
(``generate`` sets ``logits_to_keep=1``: ``generation/utils.py``), the fp32 copy ``generate`` takes
(``outputs.logits[:, -1].to(copy=True, dtype=torch.float32)``) and the sampler's fp32 probabilities.

Cache kinds (``--cache``), from ``transformers/cache_utils.py`` (5.24):

* ``dynamic`` — ``DynamicCache(config=...)``: ``DynamicLayer.update`` is ``torch.cat([keys, key_states])``, a
  copy of the new keys/values that the cache keeps; layers whose config type is ``sliding_attention``
  (``get_layer_types_and_kwargs``) are ``DynamicSlidingWindowLayer``, which keeps a view of the full states after
  the prefill (the whole prompt's storage stays alive until the first decode step) and ``sliding_window``
  positions while decoding.
* ``static`` — ``StaticCache``: ``StaticLayer.lazy_initialization`` preallocates ``(batch, kv_heads,
  max_cache_len, head_dim)`` for K and V (``--cache-len``, 0 = ``--seq``), ``StaticSlidingWindowLayer``
  ``min(sliding_window, max_cache_len)``; ``update`` is ``index_copy_`` in place (no copy).
* ``sliding`` — ``cache_implementation="sliding_window"``, which 5.24 keeps as a deprecated alias of the static
  cache (``generation/configuration_utils.py`` ``DEPRECATED_STATIC_CACHE_IMPLEMENTATIONS``): the same
  ``StaticCache``, its sliding layers windowed from the config.
* ``quantized-int4`` / ``quantized-int2`` — ``QuantizedCache(backend="quanto")`` (``generate``'s default
  backend), ``QuantoQuantizedLayer(nbits, q_group_size=64, residual_length=128, axis 0)``: the prefill's states
  are quantized at once (``QuantizedLayer.update``), decoding dequantizes the whole layer and concatenates
  (``torch.cat([dequant_keys, self.keys, key_states])``); the new tokens stay in full precision in the residual
  (``self.keys``) until it would reach ``residual_length``, when everything is re-quantized and the residual
  emptied: after ``n`` decode updates ``prompt + 128·⌊n/128⌋`` positions are quantized and ``n mod 128`` kept in
  full precision. The packed bytes follow optimum-quanto 0.2.7's ``WeightQBitsTensor`` (``tensor/grouped.py
  group``: ``(numel/64, 64)``; ``packed.py pack_weights``: ``⌈rows·nbits/8⌉`` uint8 rows; a scale and a shift per
  group in the states' dtype), measured on a real ``generate`` (tests/estimate/test_quantized_cache_real.py).
* ``offloaded`` — ``DynamicCache(offloading=True)``: ``Cache.update`` prefetches layer ``l + 1`` and offloads
  layer ``l`` after its update, so the GPU holds the running layer's K/V (and, decoding, the prefetched next
  layer's), not the whole cache.

Batched generation (``--batch`` > 1) assumes prompts left-padded to the longest (``--seq - --new-tokens``
tokens each), as ``generate`` needs for decoder-only models: the padding mask makes ``sdpa_mask`` materialize
the 4-D mask and SDPA then gets ``repeat_kv``'ed keys and values (``integrations/sdpa_attention.py``
``use_gqa_in_sdpa`` needs no mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from ..dtypes import BYTES, alloc
from ..memo import IdCache
from ..setup import Setup
from ..shapes.spec import ModelSpec
from ..versions import runs_before
from .activations import max_affine
from .graph import Storage, Sym, Tracer, prune, tok
from .layers import Program, UnknownLayout, build_layers

#: the pinned library the cache classes are read from
CACHE_SOURCE = "transformers 5.24 cache_utils.py"

#: QuantizedCache defaults (cache_utils.py QuantizedLayer.__init__) and the backend ``generate`` picks
#: (generation/utils.py ``cache_config.pop("backend", "quanto")``)
QUANT_GROUP, QUANT_RESIDUAL, QUANT_BACKEND = 64, 128, "quanto"
QUANT_BITS = {"quantized-int4": 4, "quantized-int2": 2}


class InferenceBytes(NamedTuple):
    """The inference peak beside the weights and the cuBLAS workspace: its phase and its three parts."""

    phase: str                  # "prefill" or "decode"
    kv_cache: int               # KV-cache bytes on the GPU at the peak
    working_set: int            # everything else the forward holds at the peak
    logits: int                 # logits alive at the peak (0 when the peak is inside a layer)
    prefill: int                # the prefill's peak (kv + working set + logits there)
    decode: int                 # the decode's peak (0 without --new-tokens)

    @property
    def peak(self) -> int:
        return self.kv_cache + self.working_set + self.logits


# ------------------------------------------------------------------------------------------ cache layout
def cache_layer_windows(spec: ModelSpec) -> tuple[int | None, ...]:
    """Per decoder layer, the sliding window of its cache layer (``None``: full attention), as
    ``cache_utils.get_layer_types_and_kwargs`` derives it from the config class: ``layer_types`` when the config
    has them (Gemma 2 alternates, layer 0 sliding; Gemma 3 every ``sliding_window_pattern``-th layer is full; Qwen2
    slides from ``max_window_layers`` on when ``use_sliding_window``), else every layer slides when the config's
    ``sliding_window`` is set (Mistral v0.1, Phi-3)."""
    cfg, n, sw = spec.config, spec.num_layers, spec.sliding_window
    types = cfg.get("layer_types")
    if isinstance(types, (list, tuple)) and len(types) == n:
        win = cfg.get("sliding_window")
        return tuple(win if t in ("sliding_attention", "chunked_attention") and isinstance(win, int) else None
                     for t in types)
    if not sw:
        return (None,) * n
    mt = spec.model_type
    if mt == "gemma2":
        return tuple(sw if (i + 1) % 2 else None for i in range(n))
    if mt in ("gemma3", "gemma3_text"):
        pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)
        return tuple(sw if (i + 1) % pattern else None for i in range(n))
    if mt in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"):
        first = int(cfg.get("max_window_layers", n) or 0)
        return tuple(sw if i >= first else None for i in range(n))
    return (sw,) * n


def kv_position_bytes(spec: ModelSpec, batch: int, dtype: str) -> int:
    """One layer's K (or V) per cached position: ``batch × kv_heads × head_dim × bytes``."""
    return batch * spec.num_kv_heads * spec.head_dim * BYTES[dtype]


def quantized_states_bytes(elems: int, nbits: int, dtype: str, group: int = QUANT_GROUP) -> int:
    """One layer's K (or V) quantized by ``QuantoQuantizedLayer._quantize`` (axis 0): optimum-quanto 0.2.7
    ``quantize_weight`` with ``MaxOptimizer`` makes a ``WeightQBitsTensor`` (4-D states never take the AWQ /
    Marlin / TinyGemm layouts, which want 2-D weights: ``WeightQBitsTensor.create``) of ``elems`` values grouped
    as ``(elems/group, group)`` (``tensor/grouped.py group``); ``PackedTensor.pack`` puts ``8/nbits`` rows in
    one uint8 row (``⌈rows·nbits/8⌉ × group`` B, ``packed.py pack_weights``); ``_scale`` and ``_shift`` are
    ``(rows, 1)`` in the states' dtype. Each is one allocation. (quanto raises when ``group`` does not divide the
    per-batch numel; the rows are then rounded up here and a warning says so.)"""
    rows = -(-elems // group)
    per_byte = 8 // nbits
    return alloc(-(-rows // per_byte) * group) + 2 * alloc(rows * BYTES[dtype])


def quantized_split(prompt: int, decoded: int, residual: int = QUANT_RESIDUAL) -> tuple[int, int]:
    """``(quantized, full-precision)`` positions of a ``QuantizedLayer`` after the prefill of ``prompt`` tokens
    and ``decoded`` single-token updates: ``QuantizedLayer.update`` flushes the residual into the quantized states
    when ``residual_length + 1 >= self.residual_length``, so it holds ``decoded mod residual`` tokens."""
    return prompt + residual * (decoded // residual), decoded % residual


def quantized_layer_bytes(spec: ModelSpec, batch: int, prompt: int, decoded: int, dtype: str, nbits: int) -> int:
    """One layer's K and V in a ``QuantizedCache``: the packed states and the residual's full-precision tokens
    (``self.keys``/``self.values``, one ``torch.cat`` result each)."""
    per = kv_position_bytes(spec, batch, dtype)
    q, r = quantized_split(prompt, decoded)
    return 2 * (quantized_states_bytes(per // BYTES[dtype] * q, nbits, dtype) + alloc(per * r))


def kv_cache_bytes(spec: ModelSpec, batch: int, seq: int, dtype: str, cache: str = "dynamic",
                   cache_len: int = 0, prompt: int | None = None) -> int:
    """The cache holding ``seq`` positions (decoding, steady state), K and V of every layer on the GPU.

    ``dynamic``: ``seq`` positions per full layer, ``min(seq, window)`` per sliding layer; ``static`` /
    ``sliding``: the preallocated ``cache_len`` (0 = ``seq``), ``min(window, cache_len)`` for sliding layers;
    ``quantized-*``: the packed states and the residual's full-precision tokens after a prefill of ``prompt``
    positions (default ``seq``: all quantized) and ``seq - prompt`` decode updates (:func:`quantized_split`);
    ``offloaded``: the layer being updated and the prefetched next one."""
    per = kv_position_bytes(spec, batch, dtype)
    wins = cache_layer_windows(spec)
    if cache in ("static", "sliding"):
        n = cache_len or seq
        return sum(2 * alloc(per * (min(w, n) if w else n)) for w in wins)
    if cache in QUANT_BITS:
        p = seq if prompt is None else min(prompt, seq)
        return len(wins) * quantized_layer_bytes(spec, batch, p, seq - p, dtype, QUANT_BITS[cache])
    one = [2 * alloc(per * (min(w, seq) if w else seq)) for w in wins]
    if cache == "offloaded":
        return max((a + b for a, b in zip(one, one[1:] + [0], strict=True)), default=0)
    return sum(one)


def quantized_decode_step(spec: ModelSpec, batch: int, prompt: int, new_tokens: int, dtype: str,
                          nbits: int) -> tuple[int, int]:
    """``(cache, update transients)`` at the worst of the last decode steps of a ``QuantizedCache``.

    Step ``n`` (the cache going from ``n - 1`` to ``n`` decoded positions, ``n = new_tokens`` last) in the layer
    being updated, ``QuantizedLayer.update``: ``dequant_keys``/``_values`` (the ``q(n-1)`` quantized positions in
    full precision) and ``keys_to_return`` (all positions) are alive together; then either the residual's
    ``torch.cat`` (its old storage still held) or, at a flush (``n mod residual_length == 0``), the re-quantized
    states beside the old ones. The layers before it hold step ``n``'s state, those after step ``n - 1``'s, so
    the worst layer is the last one (the cache grows) or, at a flush, the first (it shrinks). The residual makes
    the stored bytes largest just before a flush: the candidates are ``n``, the last ``n' ≤ n`` with
    ``n' mod 128 = 127`` and the last flush. dequantize's own temporaries (optimum-quanto ``ungroup`` and the
    unpacked uint8 rows) are not counted."""
    per = kv_position_bytes(spec, batch, dtype)
    c = BYTES[dtype]
    L = max(spec.num_layers, 1)
    R = QUANT_RESIDUAL
    best = (0, 0)
    for n in {new_tokens, new_tokens - (new_tokens + 1) % R, new_tokens - new_tokens % R}:
        if n < 1 or n > new_tokens:
            continue
        before = quantized_layer_bytes(spec, batch, prompt, n - 1, dtype, nbits)
        after = quantized_layer_bytes(spec, batch, prompt, n, dtype, nbits)
        q_prev, r_prev = quantized_split(prompt, n - 1)
        grow = 2 * alloc(per * q_prev) + 2 * alloc(per * (q_prev + r_prev + 1))
        if n % R == 0:
            grow += 2 * quantized_states_bytes(per // c * (q_prev + r_prev + 1), nbits, dtype)
        else:
            grow += 2 * alloc(per * (r_prev + 1))
        kv = before + (L - 1) * max(before, after)
        if kv + grow > sum(best):
            best = (kv, grow)
    return best


# ------------------------------------------------------------------------------------------ layer replay
@dataclass(frozen=True)
class LiveLayer:
    """One distinct decoder layer replayed in no-grad mode."""

    last: int                                   # the last layer index with this program
    layers: tuple[int, ...]                     # every layer index with it
    cands: tuple[tuple[int, int, int], ...]     # bytes alive after each op (const, per token, per b·q·kv)
    at_attention: tuple[int, int, int]          # bytes alive while attention runs


_LIVE = IdCache(256)


def _cache_hook(cache: str, held: list[Storage]):
    """What ``cache.update`` does to the new keys/values inside the layer, as the tracer sees it: the hook returns
    the K and V attention reads and appends to ``held`` the storages the cache keeps past the layer."""
    def hook(tr: Tracer, k: Sym, v: Sym) -> tuple[Sym, Sym]:
        if cache in ("dynamic", "offloaded"):
            # DynamicLayer.update: torch.cat([self.keys, key_states], dim=-2) — a new tensor (the cache keeps it;
            # offloaded: moved to the CPU after the update, the GPU copy dies with attention's references)
            kc = tr.fresh("cat", k, "k (DynamicCache.update torch.cat)")
            vc = tr.fresh("cat", v, "v (DynamicCache.update torch.cat)")
            if cache == "dynamic":
                held.extend((kc.storage, vc.storage))
            return kc, vc
        if cache in QUANT_BITS:
            # QuantizedLayer.update, first call: _quantize(key_states.contiguous()) kept, key_states returned
            for x in (k, v):
                xc = tr.fresh("contiguous", x, f"{x.label}.contiguous() (quantize input)")
                q = tr.new(f"{x.label} quantized (int8 before packing)", x.size, "uint8", False)
                tr.op("quantize", (xc,), (q,))
                tr.op("pack", (q,), ())
            return k, v
        # StaticLayer.update: index_copy_ into the preallocated buffers; attention reads the buffers
        tr.op("index_copy_", (k, v), ())
        return (tr.external("static cache keys", k.size, k.dtype, False),
                tr.external("static cache values", v.size, v.dtype, False))
    return hook


def live_layers(spec: ModelSpec, setup: Setup, layout: Any) -> tuple[LiveLayer, ...] | None:
    """The distinct decoder layers of ``layout`` replayed under ``torch.no_grad`` (cached per structure and cache
    kind); ``None`` when a layer's layout is unknown to the replay (the structure then uses calibrated traces)."""
    def build() -> tuple[LiveLayer, ...] | None:
        program = Program(spec, setup)
        held: list[Storage] = []
        program.infer_cache = _cache_hook(setup.cache, held)
        layers = build_layers(spec, list(layout.placements), layout.plan, setup)
        groups: dict[tuple, list[int]] = {}
        for layer in layers:
            groups.setdefault(layer.key(), []).append(layer.index)
        out = []
        for idx in groups.values():
            layer = layers[idx[0]]
            tr = Tracer(None, no_grad=True)
            held.clear()
            x = tr.external("layer input", tok(spec.hidden_size), layout.resid_dtype, False)
            try:
                y = program.layer(tr, x, layer)
            except UnknownLayout:
                return None
            cands = tr.live_candidates((*held, y.storage))
            at_attn = next((c for c, label in cands if label == "attention output"), cands[-1][0] if cands else None)
            pruned = tuple((s.const, s.per_token, s.per_bss) for s, _ in prune(cands))
            out.append(LiveLayer(max(idx), tuple(idx), pruned,
                                 (at_attn.const, at_attn.per_token, at_attn.per_bss) if at_attn else (0, 0, 0)))
        return tuple(out)

    return _LIVE.get((spec, layout), (setup.cache, setup.compute_dtype), build)


# ---------------------------------------------------------------------------------------------- the peaks
def _rotary_dim(spec: ModelSpec) -> int:
    f = spec.config.get("partial_rotary_factor")
    if isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1:
        return int(spec.head_dim * f)
    return spec.head_dim


def model_level_bytes(spec: ModelSpec, batch: int, q: int, kv: int, dtype: str, attn: str, cache: str,
                      windows: tuple[int | None, ...]) -> int:
    """What ``*Model.forward`` holds while the layers run, besides the layer input and the cache: ``input_ids``,
    ``inputs_embeds``, ``position_ids``, rotary ``cos``/``sin`` and the 4-D masks (see the module docstring)."""
    c = BYTES[dtype]
    T = batch * q
    padded = batch > 1
    rows = batch if padded else 1              # position_ids from the padding mask: (batch, q); else (1, q)
    total = alloc(8 * T) + alloc(c * spec.hidden_size * T)
    if padded:
        total += alloc(8 * T)                  # attention_mask (int64) generate passes
    total += alloc(8 * rows * q)
    kinds = {w is not None for w in windows}
    if spec.model_type not in ("gpt2", "opt", "bloom"):
        n_rope = len(kinds) if spec.model_type in ("gemma3", "gemma3_text") else 1
        total += n_rope * 2 * alloc(rows * q * _rotary_dim(spec) * c)
    if attn == "flash":
        return total
    static = cache in ("static", "sliding")
    for sliding in kinds:
        w = next((x for x in windows if x is not None), None) if sliding else None
        if attn == "eager":
            total += alloc(batch * q * kv * c)
        elif _needs_mask(batch, q, kv, attn, w, static):
            total += alloc(batch * q * kv)
    if unused_sliding_mask(spec, q, attn):
        total += alloc(batch * q * kv)
    return total


def unused_sliding_mask(spec: ModelSpec, q: int, attn: str) -> bool:
    """Qwen2-MoE without ``use_sliding_window``: ``Qwen2MoeConfig.__post_init__`` sets ``sliding_window = 0`` (not
    ``None``) and ``Qwen2MoeModel.forward`` builds ``create_sliding_window_causal_mask`` anyway, which a window of 0
    cannot skip: a (batch, 1, q, kv) boolean mask no layer reads, alive for the whole forward (transformers 5.24
    models/qwen2_moe). Not with flash-attn (2-D masks) nor for one query."""
    return (spec.model_type == "qwen2_moe" and attn != "flash" and q > 1
            and not spec.config.get("use_sliding_window", False))


def _needs_mask(batch: int, q: int, kv: int, attn: str, window: int | None, static: bool) -> bool:
    """Whether sdpa gets a boolean 4-D mask (``masking_utils._ignore_causal_mask_sdpa`` refuses to skip it):
    padding (a static cache's empty prefill excepted), or a sliding window no longer than the keys."""
    if attn != "sdpa":
        return False
    return (batch > 1 and not (static and q == kv)) or (window is not None and kv >= window)


def inference_bytes(spec: ModelSpec, layout: Any, batch: int, seq: int, new_tokens: int, kv_dtype: str,
                    setup: Setup | None = None, full_logits: bool = False) -> InferenceBytes:
    """The prefill's and the decode's peaks beside the weights (see the module docstring).

    Args:
        spec: the model.
        layout: its structure (placements, plan, residual dtype; ``layer_traces`` for the calibrated fallback).
        batch, seq, new_tokens: ``batch`` sequences of ``seq`` tokens, the last ``new_tokens`` generated.
        kv_dtype: the dtype of the keys and values (the model's).
        setup: the cache kind, its length and the attention kernel (default: dynamic, sdpa).
        full_logits: the prefill computes the logits of every position (a plain forward, ``logits_to_keep=0``)
            instead of the last one.
    """
    setup = setup or Setup.create(method="inference")
    cache, attn = setup.cache, setup.attn
    c = BYTES[kv_dtype]
    # older transformers (versions.CHANGES): before 4.45.0 generate computes every prompt position's logits (no
    # num_logits_to_keep; 4.45.0 generation/utils.py:1903-1904 sets it to 1), and before 4.46.0 the forward
    # upcasts them to fp32, freeing the 16-bit ones (4.45.0 models/llama/modeling_llama.py:1214)
    full_logits = full_logits or runs_before(setup.versions, "transformers", "4.45.0")
    upcast = c != 4 and runs_before(setup.versions, "transformers", "4.46.0")
    P = seq - new_tokens
    T = batch * P
    wins = cache_layer_windows(spec)
    per = kv_position_bytes(spec, batch, kv_dtype)
    static = cache in ("static", "sliding")
    n_static = setup.cache_len or seq
    kv_len = n_static if static else P
    live = live_layers(spec, setup, layout)
    # ---- the prefill: the largest of the layers' live sets, each with the cache of the layers before it
    persistent = alloc(8 * T)                                   # input_ids
    # the running layer's input (the caller's hidden_states); layer 0's is inputs_embeds itself (Gemma 2's
    # ``inputs_embeds * normalizer`` is a copy)
    layer_in = alloc(BYTES[layout.resid_dtype] * spec.hidden_size * T)
    first_in = layer_in if spec.model_type in ("gemma", "gemma2") else 0

    def cache_upto(i: int) -> int:                             # the cache of layers 0..i after their prefill update
        if cache == "offloaded":
            return 0
        if static:
            return kv_cache_bytes(spec, batch, seq, kv_dtype, cache, setup.cache_len) if i >= 0 else 0
        if cache in QUANT_BITS:
            return (i + 1) * quantized_layer_bytes(spec, batch, P, 0, kv_dtype, QUANT_BITS[cache])
        return 2 * (i + 1) * alloc(per * P)

    static_all = cache_upto(len(wins) - 1) if static else 0
    work = best = kv_at = 0
    if live is None:      # calibrated fallback: the all-alive bound of the structure's trace
        tr = layout.layer_traces[-1] if layout.layer_traces else None
        w = (tr.saved_at(T, T * P) + max_affine(tuple(x for x, _ in tr.fwd_transients), T, T * P)
             + tr.max_constant) if tr else 0
        kv_at = cache_upto(len(wins) - 1)
        best, work = kv_at + w, w
    else:
        for ll in live:
            w_l = wins[ll.last]
            mask_kv = kv_len if not (w_l and not static) else P
            outer = model_level_bytes(spec, batch, P, mask_kv, kv_dtype, attn, cache, wins)
            bss = batch * P * kv_len
            inner = max_affine(ll.cands, T, bss)
            if _needs_mask(batch, P, kv_len, attn, w_l, static):
                # sdpa with a boolean mask: repeat_kv copies K and V to every head (no enable_gqa), and
                # F.scaled_dot_product_attention turns the mask into an additive one in the query dtype
                # (aten/src/ATen/native/transformers/attention.cpp convert_boolean_attn_mask)
                ac, aa, aq = ll.at_attention
                extra = alloc(batch * P * kv_len * c)
                if spec.num_kv_heads != spec.num_heads:
                    extra += 2 * alloc(batch * spec.num_heads * kv_len * spec.head_dim * c)
                inner = max(inner, ac + aa * T + aq * bss + extra)
            before = static_all if static else cache_upto(ll.last - 1)
            # the layer's own cache entries are among its live candidates (held from the update on)
            total = before + outer + (layer_in if ll.last else first_in) + inner
            if total > best:
                own = 0 if static or cache == "offloaded" else cache_upto(ll.last) - cache_upto(ll.last - 1)
                best, kv_at = total, before + own
                work = total - kv_at
    if unused_sliding_mask(spec, P, attn):
        # building it (masking_utils sdpa_mask: the causal `le` and two bitwise_and) holds three at once
        build = persistent + alloc(BYTES[kv_dtype] * spec.hidden_size * T) + alloc(8 * P) + 3 * alloc(batch * P * P)
        if build > best:
            best, kv_at, work = build, 0, build
    # the head: final norm over every position, lm_head on the last one (or all), generate's fp32 copy + sampler
    rows = T if full_logits else batch
    kv_end = static_all if static else cache_upto(len(wins) - 1)
    logits = alloc(rows * spec.vocab_size * c) + (alloc(rows * spec.vocab_size * 4) if upcast else 0) \
        + (0 if full_logits else 2 * alloc(batch * spec.vocab_size * 4))
    head = kv_end + persistent + logits
    if full_logits:
        head += alloc(c * spec.hidden_size * T)          # the final norm's output, lm_head's input
    prefill = best
    phase_parts = ("prefill", kv_at, work, 0)
    if head > best:
        prefill = head
        phase_parts = ("prefill", kv_end, persistent + (alloc(c * spec.hidden_size * T) if full_logits else 0),
                       logits)
    # ---- the decode: the last step (the cache at seq - 1 -> seq), one token per sequence
    decode = 0
    decode_parts = ("decode", 0, 0, 0)
    if new_tokens:
        kv = kv_cache_bytes(spec, batch, seq, kv_dtype, cache, setup.cache_len, prompt=P)
        steady = alloc(8 * batch * seq) + alloc(8 * batch)        # generate's input_ids (B, seq) and next tokens
        last_w = wins[-1]
        n_prev = (min(last_w, seq) if last_w else seq - 1)
        if cache == "dynamic":
            grow = alloc(per * n_prev)      # torch.cat keeps the old keys alive while the new ones are written
        elif cache == "offloaded":
            grow = alloc(per * n_prev)      # the prefetched old copy, replaced by the concatenation
        elif cache in QUANT_BITS:
            kv, grow = quantized_decode_step(spec, batch, P, new_tokens, kv_dtype, QUANT_BITS[cache])
        else:
            grow = 0
        step = 0
        if live is not None:
            for ll in live:
                step = max(step, max_affine(ll.cands, batch, batch * (n_static if static else seq)))
        inner = alloc(BYTES[layout.resid_dtype] * spec.hidden_size * batch) + step
        outer = model_level_bytes(spec, batch, 1, n_static if static else seq, kv_dtype, attn, cache, wins)
        if cache == "dynamic" and any(wins):
            # the first step: DynamicSlidingWindowLayer still holds the whole prompt's storage (a view of the
            # prefill's states) until its update replaces it; the first layer's update adds its new keys
            w0 = wins[0]
            first_kv = 2 * len(wins) * alloc(per * P)
            first_grow = alloc(per * (min(P + 1, w0) if w0 else P + 1))
            if first_kv + first_grow > kv + grow:
                kv, grow = first_kv, first_grow
        layer_peak = kv + grow + inner + outer + steady
        logits_peak = kv + steady + alloc(batch * spec.vocab_size * (4 if upcast else c)) \
            + 2 * alloc(batch * spec.vocab_size * 4)
        decode = max(layer_peak, logits_peak)
        if layer_peak >= logits_peak:
            decode_parts = ("decode", kv, grow + inner + outer + steady, 0)
        else:
            decode_parts = ("decode", kv, steady, logits_peak - kv - steady)
    if decode > prefill:
        return InferenceBytes(*decode_parts, prefill, decode)
    return InferenceBytes(*phase_parts, prefill, decode)


# ------------------------------------------------------------------------------------------------ texts
_CACHE_CLASS = {"dynamic": "DynamicCache", "static": "StaticCache", "sliding": "StaticCache (sliding_window)",
                "quantized-int4": "QuantizedCache (quanto, nbits=4)", "quantized-int2": "QuantizedCache (quanto, nbits=2)",
                "offloaded": "DynamicCache(offloading=True)"}


def kv_cache_formula(spec: ModelSpec, setup: Setup, positions: int, phase: str) -> str:
    """The ``kv_cache`` component's formula, with its numbers and the cache class it follows."""
    wins = cache_layer_windows(spec)
    sliding = sum(1 for w in wins if w)
    per = (f"2 (K,V) × batch {setup.batch} × kv heads {spec.num_kv_heads} × head_dim {spec.head_dim} × "
           f"{BYTES[setup.compute_dtype]} B per position and layer")
    cache = setup.cache
    if cache in ("static", "sliding"):
        what = f"preallocated max_cache_len {setup.cache_len or setup.seq:,} positions per layer"
    elif cache == "offloaded":
        what = ("only the running layer's K/V on the GPU (the rest offloaded to the CPU after each update, the next "
                "layer prefetched while decoding)")
    elif cache in QUANT_BITS:
        q, r = quantized_split(setup.seq - setup.new_tokens, max(positions - setup.seq + setup.new_tokens, 0))
        what = (f"{q:,} positions packed to {QUANT_BITS[cache]} bits + a scale and a shift per group of "
                f"{QUANT_GROUP} (optimum-quanto 0.2.7 WeightQBitsTensor), {r:,} in the full-precision residual "
                f"(residual_length {QUANT_RESIDUAL}) after the last update"
                + ("; the decode peak is the worst of the last steps' (just before a flush the residual holds "
                   f"{QUANT_RESIDUAL - 1}: quantized_decode_step)" if phase == "decode" else ""))
    else:
        what = f"{positions:,} positions per layer at the {phase} peak (the layers updated so far)"
    win = (f"; {sliding} of {len(wins)} layers slide (window {next(w for w in wins if w):,})" if sliding else "")
    return f"{per}; {what}{win} ({CACHE_SOURCE} {_CACHE_CLASS[cache]})"


def inference_assumptions(spec: ModelSpec, setup: Setup) -> list[str]:
    """What the inference estimate assumes about the generate() call."""
    out = [f"generate() with cache_implementation={setup.cache!r} ({CACHE_SOURCE} {_CACHE_CLASS[setup.cache]}); the "
           "prefill computes the last position's logits only (logits_to_keep=1)"]
    if setup.batch > 1:
        out.append(f"batch {setup.batch}: prompts left-padded to the longest ({setup.seq - setup.new_tokens:,} tokens "
                   "each) with an attention mask; sdpa then gets a 4-D boolean mask and repeat_kv'ed K/V "
                   "(transformers masking_utils.py _ignore_causal_mask_sdpa, sdpa_attention.py use_gqa_in_sdpa)")
    return out


def inference_warnings(spec: ModelSpec, setup: Setup) -> list[str]:
    """What the inference estimate does not follow (never silence)."""
    out = []
    wins = cache_layer_windows(spec)
    if setup.cache == "sliding" and not any(wins):
        out.append(f"--cache sliding: {spec.name} has no sliding-window layers in its config; transformers 5.24's "
                   "'sliding_window' implementation is then a plain StaticCache")
    if setup.cache in QUANT_BITS:
        out.append(f"--cache {setup.cache}: the decode's dequantize-and-concatenate working set follows cache_utils.py "
                   "QuantizedLayer.update (dequantized K/V + the returned K/V); optimum-quanto's own dequantize "
                   "temporaries are not counted")
        if (spec.num_kv_heads * spec.head_dim) % QUANT_GROUP:
            out.append(f"--cache {setup.cache}: kv heads {spec.num_kv_heads} × head_dim {spec.head_dim} is not a "
                       f"multiple of q_group_size {QUANT_GROUP}: optimum-quanto's group() raises unless the positions "
                       "make the per-batch numel one")
        if any(wins):
            out.append(f"--cache {setup.cache}: transformers refuses QuantizedCache for models with sliding layers "
                       "(QuantizedCache.__init__: only full attention layers)")
    if setup.cache_len and setup.cache not in ("static", "sliding"):
        out.append(f"--cache-len {setup.cache_len} ignored: max_cache_len applies to static caches (--cache static "
                   "or sliding)")
    if setup.cache in ("static", "sliding") and setup.cache_len and setup.cache_len < setup.seq:
        out.append(f"--cache-len {setup.cache_len} < --seq {setup.seq}: a StaticCache of full-attention layers "
                   "cannot hold the sequence (index_copy_ out of range)")
    if setup.batch > 1 and setup.attn == "flash":
        out.append("--attn flash with --batch > 1: flash-attn's varlen path (_upad_input gathers q, k, v without "
                   "the padding) is not modelled; the estimate counts the unpadded kernel")
    return out


def prefill_cache_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The cache right after the prefill of ``seq - new_tokens`` tokens: every layer's K/V at the prompt length
    (a sliding ``DynamicSlidingWindowLayer`` keeps a view of the whole prompt's states until the first decode
    step), the preallocated buffers of a static cache, the packed states of a quantized one, none on the GPU
    for an offloaded one."""
    P = setup.seq - setup.new_tokens
    if setup.cache in ("static", "sliding"):
        return kv_cache_bytes(spec, setup.batch, setup.seq, setup.compute_dtype, setup.cache, setup.cache_len)
    if setup.cache == "offloaded":
        return 0
    if setup.cache in QUANT_BITS:
        return kv_cache_bytes(spec, setup.batch, P, setup.compute_dtype, setup.cache, prompt=P)
    return 2 * spec.num_layers * alloc(kv_position_bytes(spec, setup.batch, setup.compute_dtype) * P)
