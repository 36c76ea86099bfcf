"""``--cache`` kinds (issue 17): the KV bytes each transformers 5.24 cache class holds, per layer type.

Expected values come from transformers itself (``cache_utils.get_layer_types_and_kwargs`` on the config classes,
a real ``DynamicCache``/``StaticCache`` filled on CPU) or from first principles stated in each test.
"""

from __future__ import annotations

import pytest

from vramplan.estimate import estimate
from vramplan.estimate.inference import cache_layer_windows, kv_cache_bytes
from vramplan.profiles import resolve_model
from vramplan.setup import Setup

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def _hf_config(spec):
    cfg = dict(spec.config)
    return transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)


@pytest.mark.parametrize("name", ["gemma-2-9b", "gemma-3-4b", "gemma-3-1b", "mistral-7b-v0.1", "mistral-7b-v0.3",
                                  "phi-3-mini-4k", "qwen2.5-7b", "llama-3-8b", "mixtral-8x7b"])
def test_layer_windows_are_transformers_layer_types(name):
    from transformers.cache_utils import get_layer_types_and_kwargs

    spec = resolve_model(name).spec
    types, kwargs = get_layer_types_and_kwargs(_hf_config(spec).get_text_config(decoder=True))
    expected = tuple(kw.get("sliding_window") if t == "sliding_attention" else None for t, kw in zip(types, kwargs, strict=True))
    assert cache_layer_windows(spec) == expected


def test_dynamic_cache_after_decoding_matches_a_real_cache():
    """A real DynamicCache(config) updated with a 40-token prompt then 30 single tokens: full layers hold 70
    positions, DynamicSlidingWindowLayer storages min(70, window) — measured by their storages' bytes."""
    from transformers import DynamicCache

    cfg = dict(model_type="gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256, sliding_window=32)
    from vramplan.profiles import build_spec

    spec = build_spec(cfg, "tiny-gemma2", "test")
    hf = _hf_config(spec)
    cache = DynamicCache(config=hf)
    for n in [40] + [1] * 30:
        for layer in range(4):
            k = torch.zeros(1, 2, n, 16, dtype=torch.bfloat16)
            cache.update(k, k.clone(), layer)
    real = sum(-(-t.untyped_storage().nbytes() // 512) * 512 for lay in cache.layers for t in (lay.keys, lay.values))
    assert kv_cache_bytes(spec, 1, 70, "bf16") == real


def test_static_cache_preallocates_cache_len_whatever_the_sequence():
    """StaticLayer.lazy_initialization: (batch, kv_heads, max_cache_len, head_dim) zeros for K and V."""
    spec = resolve_model("llama-3-8b").spec
    per_layer = 2 * 8 * 8192 * 128 * 2
    assert kv_cache_bytes(spec, 1, 1024, "bf16", "static", 8192) == 32 * per_layer
    assert kv_cache_bytes(spec, 1, 8192, "bf16", "static", 0) == 32 * per_layer     # 0 = --seq
    # StaticSlidingWindowLayer: min(sliding_window, max_cache_len) positions
    m = resolve_model("mistral-7b-v0.1").spec
    assert kv_cache_bytes(m, 1, 1024, "bf16", "sliding", 8192) == 32 * 2 * 8 * 4096 * 128 * 2


def test_quantized_cache_packs_to_nbits_with_a_scale_and_shift_per_64():
    """optimum-quanto WeightQBitsTensor, group 64: int4 = 1/2 B, int2 = 1/4 B per element, plus two bf16 values per
    64 elements (scale, shift): 4.5 and 2.5 bits per element at bf16 — vs 16 bits unquantized."""
    spec = resolve_model("llama-3-8b").spec
    full = kv_cache_bytes(spec, 1, 4096, "bf16")
    assert kv_cache_bytes(spec, 1, 4096, "bf16", "quantized-int4") * 16 == full * 4.5
    assert kv_cache_bytes(spec, 1, 4096, "bf16", "quantized-int2") * 16 == full * 2.5


def test_offloaded_cache_keeps_two_layers_on_the_gpu():
    """DynamicCache(offloading=True): Cache.update prefetches layer l+1 and offloads layer l after its update."""
    spec = resolve_model("llama-3-8b").spec
    one_layer = kv_cache_bytes(spec, 1, 4096, "bf16") // 32
    assert kv_cache_bytes(spec, 1, 4096, "bf16", "offloaded") == 2 * one_layer


@pytest.mark.parametrize("cache", ["dynamic", "static", "quantized-int4", "quantized-int2", "offloaded"])
def test_long_generation_peak_orders_the_caches(cache):
    """Decoding 8k tokens after a 512-token prompt: the quantized and offloaded caches need less than dynamic,
    static (preallocated to --seq) about as much; the components still sum to the peak (the estimator checks)."""
    spec = resolve_model("llama-3-8b").spec
    base = estimate(spec, Setup.create(method="inference", seq=8704, new_tokens=8192)).peak_allocated_bytes
    est = estimate(spec, Setup.create(method="inference", seq=8704, new_tokens=8192, cache=cache))
    if cache in ("quantized-int4", "quantized-int2", "offloaded"):
        assert est.peak_allocated_bytes < base
    else:
        assert abs(est.peak_allocated_bytes - base) <= 0.02 * base
    if cache.startswith("quantized"):
        assert any("dequantize temporaries are not counted" in w for w in est.warnings)


def test_batched_generation_states_its_padding_assumption():
    est = estimate(resolve_model("llama-3-8b").spec, Setup.create(method="inference", batch=4, seq=1024))
    assert any("left-padded" in a for a in est.assumptions)
