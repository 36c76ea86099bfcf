"""``--cache quantized-int4|quantized-int2`` against transformers' real ``QuantizedCache`` (issue 17).

Measured on CPU (2026-12-03) in a separate venv: torch 2.13.0+cpu, transformers 5.24.0, accelerate 1.16.0,
optimum-quanto 0.2.7, hqq 0.2.8.post1. A tiny ``LlamaForCausalLM`` (hidden 256, 4 heads, 2 kv heads, head_dim 64,
2 layers, vocab 512) in bf16 ran ``generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
cache_implementation="quantized", cache_config={"backend": ..., "nbits": ..., "residual_length": R,
"q_group_size": g, "axis_key": axis, "axis_value": axis}, return_dict_in_generate=True)``; then every tensor of
the returned cache was walked: per layer ``_quantized_keys``/``_quantized_values`` (quanto: the
``WeightQBitsTensor``'s ``_data`` ``PackedTensor._data`` uint8, ``_scale``, ``_shift``, through
``__tensor_flatten__``; hqq: the packed uint8 and the meta dict's ``scale``/``zero``) and the residual
``keys``/``values``, summing ``untyped_storage().nbytes()`` (no allocator rounding). ``test_reproduce_on_cpu``
reruns it where optimum-quanto is installed (not in the project venv: it skips there).

generate() decodes ``new - 1`` single tokens after the prefill (the last token is sampled, not fed back), so the
cache holds ``prompt + new - 1`` positions.
"""

from __future__ import annotations

import pytest

from vramplan.estimate import inference
from vramplan.estimate.inference import (
    QUANT_GROUP,
    QUANT_RESIDUAL,
    kv_cache_bytes,
    quantized_layer_bytes,
    quantized_split,
    quantized_states_bytes,
)
from vramplan.shapes import spec_from_config

TINY = dict(model_type="llama", hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, vocab_size=512, tie_word_embeddings=False)

#: (nbits, prompt, new, residual_length, q_group_size, overrides) -> measured (quantized bytes, residual bytes,
#: residual positions of layer 0), quanto backend, axis 0, bf16 unless the overrides say otherwise
MEASURED = [
    (4, 100, 1, 128, 64, {}, (28_800, 0, 0)),
    (2, 100, 1, 128, 64, {}, (16_000, 0, 0)),
    (4, 100, 60, 128, 64, {}, (28_800, 60_416, 59)),
    (4, 100, 129, 128, 64, {}, (65_664, 0, 0)),           # the 128th update flushes the residual
    (4, 100, 130, 128, 64, {}, (65_664, 1_024, 1)),
    (2, 300, 200, 128, 64, {}, (68_480, 72_704, 71)),
    (4, 37, 45, 16, 32, {}, (22_080, 12_288, 12)),
    (2, 37, 45, 16, 128, {}, (10_320, 12_288, 12)),       # 69 groups packed 4 per byte: 18 rows of 128
    (4, 50, 10, 128, 64, {"head_dim": 80}, (18_128, 11_520, 9)),
    (4, 33, 5, 128, 64, {"batch": 3}, (28_512, 12_288, 4)),
    (4, 64, 1, 128, 64, {"dtype": "fp16"}, (18_432, 0, 0)),
]
#: the hqq backend (axis 1 = per position), same tiny model: quantized bytes equal quanto's at 4 and 2 bits
MEASURED_HQQ = [(4, 100, 60, 28_800), (2, 100, 60, 16_000)]


def _spec(over: dict):
    cfg = dict(TINY)
    if "head_dim" in over:
        cfg.update(head_dim=over["head_dim"], hidden_size=4 * over["head_dim"])
    return spec_from_config(cfg, name="tiny-llama")


@pytest.fixture
def unrounded(monkeypatch):
    """The bytes of each tensor without the CUDA caching allocator's 512-B rounding (what nbytes() reports)."""
    monkeypatch.setattr(inference, "alloc", lambda n: n)


@pytest.mark.parametrize("nbits,prompt,new,residual,group,over,want", MEASURED)
def test_stored_bytes_equal_the_real_cache(unrounded, nbits, prompt, new, residual, group, over, want):
    spec = _spec(over)
    batch, dtype = over.get("batch", 1), over.get("dtype", "bf16")
    q, r = quantized_split(prompt, new - 1, residual)
    assert r == want[2]
    per = batch * spec.num_kv_heads * spec.head_dim
    c = 2 if dtype in ("bf16", "fp16") else 4
    layers = spec.num_layers
    assert 2 * layers * quantized_states_bytes(per * q, nbits, dtype, group) == want[0]
    assert 2 * layers * per * c * r == want[1]
    if residual == QUANT_RESIDUAL and group == QUANT_GROUP:      # the defaults --cache uses
        assert layers * quantized_layer_bytes(spec, batch, prompt, new - 1, dtype, nbits) == want[0] + want[1]
        assert kv_cache_bytes(spec, batch, prompt + new - 1, dtype, f"quantized-int{nbits}", prompt=prompt) \
            == want[0] + want[1]


@pytest.mark.parametrize("nbits,prompt,new,want", MEASURED_HQQ)
def test_hqq_backend_stores_the_same_bytes(unrounded, nbits, prompt, new, want):
    spec = _spec({})
    q, _ = quantized_split(prompt, new - 1)
    assert 2 * spec.num_layers * quantized_states_bytes(2 * 64 * q, nbits, "bf16") == want


def test_the_residual_is_not_counted_twice():
    """Before: every position counted packed and the residual's again; the residual holds n mod 128 positions."""
    spec = spec_from_config(dict(TINY, num_hidden_layers=32, num_key_value_heads=8, head_dim=128,
                                 hidden_size=4096, num_attention_heads=32), name="llama-8b-shape")
    per = 8 * 128 * 2
    packed_8k = kv_cache_bytes(spec, 1, 8192, "bf16", "quantized-int4")           # all quantized
    with_residual = kv_cache_bytes(spec, 1, 8192, "bf16", "quantized-int4", prompt=512)
    # 7680 decoded: 60 flushes, 0 left in the residual
    assert with_residual == packed_8k
    # 7700 decoded: 20 positions in full precision, the rest packed
    assert kv_cache_bytes(spec, 1, 8212, "bf16", "quantized-int4", prompt=512) == \
        packed_8k + 32 * 2 * per * 20


def _walk(t):
    import torch

    if isinstance(t, dict):
        return [x for v in t.values() for x in _walk(v)]
    if isinstance(t, (tuple, list)):
        return [x for v in t for x in _walk(v)]
    if not isinstance(t, torch.Tensor):
        return []
    if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
        return [x for n in t.__tensor_flatten__()[0] for x in _walk(getattr(t, n))]
    return [t]


@pytest.mark.parametrize("nbits,prompt,new", [(4, 100, 60), (2, 300, 200), (4, 100, 130)])
def test_reproduce_on_cpu(nbits, prompt, new):
    """The measurement itself; the allocator's rounding applied per storage as vramplan counts it."""
    pytest.importorskip("optimum.quanto")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hc = transformers.LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"})
    model = transformers.LlamaForCausalLM(hc).to(torch.bfloat16).eval()
    ids = torch.randint(0, 512, (1, prompt))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, cache_implementation="quantized",
                         cache_config={"backend": "quanto", "nbits": nbits}, return_dict_in_generate=True,
                         pad_token_id=0)
    cache = out.past_key_values
    real = sum(-(-t.untyped_storage().nbytes() // 512) * 512 for lay in cache.layers
               for t in _walk([lay._quantized_keys, lay._quantized_values, lay.keys, lay.values]))
    assert cache.get_seq_length() == prompt + new - 1
    assert kv_cache_bytes(_spec({}), 1, prompt + new - 1, "bf16", f"quantized-int{nbits}", prompt=prompt) == real
