"""The small rules that have one home each (issue 13): allocator rounding, the fit cap, bitsandbytes' context,
the loss, the KV cache. Expected values from first principles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from vramplan.dtypes import alloc, alloc_sum
from vramplan.estimate import overhead
from vramplan.estimate.inference import kv_cache_bytes
from vramplan.estimate.logits import chunk_rows, loss_bytes
from vramplan.profiles import resolve_model
from vramplan.setup import Setup

coef = hs.integers(min_value=0, max_value=10**6)


@given(hs.lists(hs.tuples(coef, coef, coef), max_size=8), hs.integers(0, 10**5), hs.integers(0, 10**7))
def test_alloc_sum_is_the_sum_of_alloc(terms, tokens, bss):
    assert alloc_sum(terms, tokens, bss) == sum(alloc(c + a * tokens + q * bss) for c, a, q in terms)


def test_alloc_rounds_to_512_byte_blocks():
    # c10/cuda/CUDACachingAllocator.cpp kMinBlockSize = 512
    assert [alloc(n) for n in (0, 1, 511, 512, 513, 1024)] == [0, 512, 512, 512, 1024, 1024]


def test_usable_bytes_keeps_the_margin_free():
    assert overhead.usable_bytes(24_000_000_000, 0.10) == 21_600_000_000
    assert overhead.usable_bytes(25_769_803_776, 0.0) == 25_769_803_776


def test_fit_verdict_headroom():
    class Card:
        name, memory_bytes = "24GB", 24_000_000_000

    f = overhead.fit_verdict(Card(), 21_600_000_001, 0.10)
    assert (f.fits, f.headroom_bytes, f.capacity_bytes) == (False, -1, 24_000_000_000)
    assert overhead.fit_verdict(Card(), 21_600_000_000, 0.10).fits


@pytest.mark.parametrize("kw, expected", [
    ({"method": "lora"}, False), ({"method": "qlora"}, True), ({"method": "lora", "optim": "adamw-8bit"}, True),
    ({"method": "lora", "optim": "lion"}, True), ({"method": "lora", "optim": "adafactor"}, False),
    ({"method": "full", "optim": "paged-adamw"}, True), ({"method": "lora", "optim": "sgd"}, False),
    # a GPTQ checkpoint runs gptqmodel/optimum kernels; torchtune's nf4 is torchao's NF4Tensor (no bitsandbytes)
    ({"method": "qlora", "quant": "gptq"}, False), ({"method": "qlora", "stack": "torchtune"}, False),
    # ... but its configs' bitsandbytes.optim.PagedAdamW8bit is (torchtune 0.6.1 recipes/configs/llama3_1/8B_full_single_device.yaml:60)
    ({"method": "qlora", "stack": "torchtune", "optim": "paged-adamw-8bit"}, True),
])
def test_uses_bitsandbytes(kw, expected):
    assert overhead.uses_bitsandbytes(Setup.create(**kw)) is expected


def test_standard_loss_bytes_llama3_2048_tokens():
    # vocab 128,256: bf16 logits 2·T·V, their fp32 copy 4·T·V, log_softmax's saved fp32 output 4·T·V,
    # two fp32 gradients in backward; every size a multiple of 512 B
    T, V = 2048, 128_256
    assert loss_bytes(T, V, 4096, 2, 2, False, False) == (4 * T * V, 2 * T * V + 4 * T * V, 2 * 4 * T * V)
    assert loss_bytes(T, V, 4096, 2, 2, False, True).saved == 4 * T * V + 2 * T * V   # + tanh's bf16 output


def test_chunked_loss_rows_and_bytes():
    # Liger: ceil(2048 / ceil(128256/4096)) = ceil(2048/32) = 64 rows, already a power of two
    assert chunk_rows(2048, 128_256, 4096) == 64
    assert chunk_rows(3000, 128_256, 4096) == 128         # ceil(3000/32) = 94 -> 128
    saved, fwd, bwd = loss_bytes(2048, 128_256, 4096, 2, 2, True, False)
    assert (saved, fwd, bwd) == (2048 * 4096 * 2, 2 * 64 * 128_256 * 4 + 64 * 128_256 * 2, 0)


def test_kv_cache_llama3_8b_and_mistral_window():
    llama = resolve_model("llama-3-8b").spec          # 32 layers, 8 KV heads of 128
    assert kv_cache_bytes(llama, 1, 4096, "bf16") == 2 * 32 * 4096 * 8 * 128 * 2 == 536_870_912
    mistral = resolve_model("mistral-7b-v0.1").spec   # config sliding_window 4096: the cache keeps 4096 positions
    assert kv_cache_bytes(mistral, 1, 8192, "bf16") == 2 * 32 * 4096 * 8 * 128 * 2
    assert kv_cache_bytes(mistral, 1, 2048, "bf16") == 2 * 32 * 2048 * 8 * 128 * 2
