"""Monotonicity of the serving accounting (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vramplan.profiles import Gpu, resolve_model
from vramplan.serve.vllm import plan_vllm

GiB = 2**30
MODELS = ("llama-3.1-8b", "gemma-3-12b", "qwen3-30b-a3b", "mistral-7b-v0.1")


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(MODELS), util=st.floats(0.5, 0.95), extra=st.floats(0.0, 0.05),
       length=st.integers(256, 32768), grow=st.integers(1, 8192), mem=st.integers(24, 192))
def test_more_memory_more_blocks_longer_requests_less_concurrency(name, util, extra, length, grow, mem):
    spec = resolve_model(name).spec
    kw = dict(max_model_len=length, max_num_seqs=64, max_num_batched_tokens=2048)
    gpu = Gpu("x", mem * GiB)
    a = plan_vllm(spec, gpu, gpu_memory_utilization=util, **kw)
    b = plan_vllm(spec, gpu, gpu_memory_utilization=min(util + extra, 1.0), **kw)
    assert b.num_blocks >= a.num_blocks
    assert b.max_concurrency >= a.max_concurrency
    longer = plan_vllm(spec, gpu, gpu_memory_utilization=util,
                       **{**kw, "max_model_len": min(length + grow, 32768)})
    assert longer.num_blocks == a.num_blocks                          # the budget does not depend on L
    assert longer.blocks_per_request >= a.blocks_per_request
    assert longer.max_concurrency <= a.max_concurrency
    assert a.kv_cache_bytes <= max(a.available_kv_bytes, 0)
