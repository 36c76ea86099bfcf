"""Weights per TP rank, the profile activation peak, SGLang's pool and the capacity search, by hand."""

from __future__ import annotations

import pytest

from vramplan.errors import SetupError
from vramplan.profiles import Gpu, resolve_model
from vramplan.serve.capacity import smallest_setup, tp_sizes
from vramplan.serve.ranks import activation_peak, weights_per_rank
from vramplan.serve.sglang import plan_sglang
from vramplan.serve.vllm import plan_vllm

GiB, MiB = 2**30, 2**20


def spec(name):
    return resolve_model(name).spec


def total(name, tp, quant="none"):
    return sum(c.bytes for c in weights_per_rank(spec(name), tp, "bf16", quant))


def test_llama31_70b_tp4_shards_every_projection():
    """Llama-3.1-70B: h 8192, 80 layers, 64 heads, 8 KV heads (head_dim 128), i 28672, vocab 128256.
    Per rank at TP 4: q and o 8192×8192/4, k and v 1024×8192/4, gate/up/down 28672×8192/4, the vocab split
    in 4 (128256 is a multiple of 64), norms whole, plus the 32 MiB rope cache."""
    h, i, L, v = 8192, 28672, 80, 128256
    per_layer = (2 * h * h + 2 * 1024 * h + 3 * i * h) // 4 * 2
    norms = (2 * L + 1) * h * 2
    expected = L * per_layer + 2 * (v // 4) * h * 2 + norms + 131072 * 128 * 2
    assert total("llama-3.1-70b", 4) == pytest.approx(expected, abs=512 * 1000)  # 512-B rounding per tensor


def test_kv_heads_are_replicated_beyond_their_count():
    """Llama-3.1-70B at TP 16: 8 KV heads, so each rank holds one (k_proj 128×8192 per rank, not 64×8192)."""
    s = spec("llama-3.1-70b")
    from vramplan.serve.ranks import rank_numel

    k = s.tensor("model.layers.0.self_attn.k_proj.weight")
    assert rank_numel(k, "attn_k", s, 16) == 128 * 8192
    assert rank_numel(k, "attn_k", s, 4) == 2 * 128 * 8192


def test_row_parallel_bias_is_whole_and_column_bias_split():
    """Qwen2.5-7B: q/k/v carry biases (column-parallel: split with their heads)."""
    s = spec("qwen2.5-7b")
    from vramplan.serve.ranks import rank_numel

    qb = s.tensor("model.layers.0.self_attn.q_proj.bias")
    assert rank_numel(qb, "attn_q", s, 2) == 3584 // 2
    kb = s.tensor("model.layers.0.self_attn.k_proj.bias")
    assert rank_numel(kb, "attn_k", s, 2) == 2 * 128               # 4 KV heads: two per rank
    assert rank_numel(kb, "attn_k", s, 8) == 1 * 128               # 4 KV heads: one (replicated) per rank
    # phi-2: the o projection (dense) and fc2 carry biases; RowParallelLinear keeps them whole on each rank
    p = spec("phi-2")
    assert rank_numel(p.tensor("model.layers.0.self_attn.dense.bias"), "attn_o", p, 4) == 2560
    assert rank_numel(p.tensor("model.layers.0.self_attn.dense.weight"), "attn_o", p, 4) == 2560 * 2560 // 4
    assert rank_numel(p.tensor("model.layers.0.mlp.fc1.bias"), "mlp_up", p, 4) == 10240 // 4


def test_fp8_halves_the_linear_weights_only():
    """vLLM --quantization fp8: Linear weights 1 B per element; embeddings, head, norms stay bf16."""
    comps = {c.name: c.bytes for c in weights_per_rank(spec("llama-3.1-8b"), 1, "bf16", "fp8")}
    assert comps["weights/quantized"] == pytest.approx(6_979_321_856, abs=512 * 224)
    assert comps["weights/embeddings"] == comps["weights/lm_head"] == 128256 * 4096 * 2
    assert comps["weights/quant_constants"] == 224 * 512             # one fp32 scale (one 512-B block) each


def test_activation_peak_gated_mlp_by_hand():
    """Llama-3.1-8B at 8192 tokens: T·b·(3h + 3i) = 8192 × 2 × (3·4096 + 3·14336) B; at TP 2 the MLP halves."""
    s = spec("llama-3.1-8b")
    a = activation_peak(s, 1, 8192, 0, "bf16")
    assert a.forward_bytes == 8192 * 2 * (3 * 4096 + 3 * 14336)
    a2 = activation_peak(s, 2, 8192, 0, "bf16")
    assert a2.forward_bytes == 8192 * 2 * (3 * 4096 + 3 * 14336 // 2)
    # sampler: hidden states kept + 256 rows of the 128,256 logits in bf16, their fp32 copy, fp32
    # probabilities and fp32 exponential noise
    a3 = activation_peak(s, 1, 256, 256, "bf16")
    assert a3.sampler_bytes == 256 * 4096 * 2 + 256 * 128256 * (2 + 4 + 4 + 4)
    assert a3.bytes == a3.sampler_bytes


def test_vllm_budget_arithmetic_is_requested_minus_components():
    p = plan_vllm(spec("qwen3-8b"), Gpu("h100", 80 * GiB), max_model_len=8192, gpu_memory_utilization=0.9)
    assert p.requested_bytes == -(-80 * GiB * 9 // 10)
    assert p.available_kv_bytes == p.requested_bytes - sum(c.bytes for c in p.components)
    assert p.num_blocks == p.available_kv_bytes // p.bytes_per_block
    assert p.kv_cache_bytes <= p.available_kv_bytes < p.kv_cache_bytes + p.bytes_per_block
    names = [c.name for c in p.components]
    assert "overhead/cuda_graphs" in names and "activations/profile_peak" in names
    eager = plan_vllm(spec("qwen3-8b"), Gpu("h100", 80 * GiB), max_model_len=8192, gpu_memory_utilization=0.9,
                      enforce_eager=True)
    assert "overhead/cuda_graphs" not in [c.name for c in eager.components]
    assert eager.num_blocks >= p.num_blocks


def test_fp8_kv_cache_doubles_the_blocks_of_the_same_budget():
    kw = dict(max_model_len=8192, activation_bytes=GiB, cudagraph_bytes=0)
    a = plan_vllm(spec("llama-3.1-8b"), Gpu("x", 80 * GiB), **kw)
    b = plan_vllm(spec("llama-3.1-8b"), Gpu("x", 80 * GiB), kv_cache_dtype="fp8", **kw)
    assert b.bytes_per_block * 2 == a.bytes_per_block
    assert b.num_blocks in (2 * a.num_blocks, 2 * a.num_blocks + 1)


def test_70b_does_not_fit_one_80gb_card_but_fits_four():
    s = spec("llama-3.1-70b")
    assert not plan_vllm(s, Gpu("h100", 80 * GiB), max_model_len=8192).fits
    p4 = plan_vllm(s, Gpu("h100", 80 * GiB), tp=4, max_model_len=8192)
    assert p4.fits and p4.max_concurrency > 1


def test_sglang_pool_by_hand():
    """Llama-3.1-8B on 80 GiB, mem_fraction_static 0.8, 1 GiB context: available = (80 − 1) GiB − weights −
    79 GiB × 0.2; cell = 8 heads × 128 × 32 layers × 2 × 2 B = 131,072 B."""
    s = spec("llama-3.1-8b")
    p = plan_sglang(s, Gpu("x", 80 * GiB), mem_fraction_static=0.8, cuda_context_bytes=GiB, max_model_len=8192)
    assert p.cell_bytes == 131_072
    w = total("llama-3.1-8b", 1)
    avail = 79 * GiB - w - int(79 * GiB * (1 - 0.8))
    assert p.available_kv_bytes == avail
    assert p.max_total_num_tokens == avail // 131_072
    assert p.k_size_bytes == p.max_total_num_tokens * 65_536
    paged = plan_sglang(s, Gpu("x", 80 * GiB), mem_fraction_static=0.8, cuda_context_bytes=GiB, page_size=64)
    assert paged.max_total_num_tokens == avail // 131_072 // 64 * 64
    with pytest.raises(SetupError, match="--mem-fraction-static"):
        plan_sglang(s, Gpu("x", 80 * GiB), mem_fraction_static=1.2)


def test_tp_sizes_follow_the_heads():
    assert tp_sizes(spec("qwen2.5-0.5b")) == [1, 2]                # 14 heads, 2 KV heads
    assert tp_sizes(spec("llama-3.1-70b")) == [1, 2, 4, 8]


def test_smallest_setup_picks_the_least_memory():
    s = spec("llama-3.1-70b")
    cards = [Gpu("small", 24 * GiB), Gpu("mid", 48 * GiB), Gpu("big", 80 * GiB)]

    def plan(g, t):
        return plan_vllm(s, g, tp=t, max_model_len=8192)

    best, options = smallest_setup(s, 32, plan, cards)
    by_card = {o.gpu.name: o.tp for o in options}
    # each card at its smallest sufficient TP; a smaller TP on the same card must not serve 32
    for o in options:
        smaller = [t for t in tp_sizes(s) if t < o.tp]
        assert all(plan(o.gpu, t).max_concurrency < 32 or not plan(o.gpu, t).fits for t in smaller)
        assert o.plan.max_concurrency >= 32
    assert best is not None and best.total_memory_bytes == min(o.total_memory_bytes for o in options)
    assert "small" not in by_card                                  # 8 × 24 GiB cannot hold 70B + 32 × 8k
    with pytest.raises(SetupError):
        smallest_setup(s, 0, plan, cards)


def test_vllm_serve_defaults_by_card():
    """vllm/engine/arg_utils.py, usage context OPENAI_API_SERVER."""
    from vramplan.profiles import resolve_gpu
    from vramplan.serve.vllm import serve_defaults

    assert serve_defaults(resolve_gpu("b200")) == (1024, 16384)
    assert serve_defaults(resolve_gpu("h100-80gb")) == (1024, 8192)
    assert serve_defaults(resolve_gpu("a100-80gb")) == (256, 2048)      # A100s are kept on the small tier
    assert serve_defaults(resolve_gpu("rtx-4090")) == (256, 2048)
    p = plan_vllm(spec("qwen3-8b"), resolve_gpu("h100-80gb"), max_model_len=8192)
    assert (p.max_num_seqs, p.max_num_batched_tokens) == (1024, 8192)


def test_cudagraph_capture_sizes():
    """[1, 2, 4] + range(8, 256, 8) + range(256, top + 1, 16), top = min(2 × max_num_seqs, 512 | 1024)."""
    from vramplan.profiles import resolve_gpu
    from vramplan.serve.vllm import cudagraph_capture_sizes, cudagraph_estimate

    h100, b200 = resolve_gpu("h100-80gb"), resolve_gpu("b200")
    assert len(cudagraph_capture_sizes(256, h100)) == 3 + 31 + 17 and cudagraph_capture_sizes(256, h100)[-1] == 512
    assert cudagraph_capture_sizes(1024, b200)[-1] == 1024 and len(cudagraph_capture_sizes(1024, b200)) == 83
    assert cudagraph_capture_sizes(4, h100) == [1, 2, 4, 8]
    s = spec("llama-3.1-8b")
    assert cudagraph_estimate(s, 1, 256, "bf16", h100) == (512 * 2 * (3 * 4096 + 3 * 14336)
                                                            + 2 * 50 * MiB)


def test_async_scheduling_doubles_the_in_flight_window():
    """Gemma-3-12B at 32,768 tokens, 8,192 batched: a sliding group holds cdiv(min(1023 + 2 × 8192, 32768),
    16) + 1 = 1089 blocks with async scheduling (two batches in flight), 577 without."""
    s = spec("gemma-3-12b")
    kw = dict(max_model_len=32768, max_num_batched_tokens=8192, activation_bytes=0, cudagraph_bytes=0)
    assert plan_vllm(s, Gpu("x", 80 * GiB), **kw).blocks_per_request == 2048 + 5 * 1089
    assert plan_vllm(s, Gpu("x", 80 * GiB), async_scheduling=False, **kw).blocks_per_request == 2048 + 5 * 577


def test_fp8_routers_follow_the_model_file():
    """vLLM passes quant_config to Qwen3-MoE's GateLinear (qwen3_moe.py) but not to Mixtral's (mixtral.py)."""
    q = {c.name: c.bytes for c in weights_per_rank(spec("qwen3-30b-a3b"), 1, "bf16", "fp8")}
    m = {c.name: c.bytes for c in weights_per_rank(spec("mixtral-8x7b"), 1, "bf16", "fp8")}
    assert "weights/other" not in q                                  # 48 routers 128 × 2048 in fp8
    assert m["weights/other"] == 32 * 8 * 4096 * 2                   # 32 routers 8 × 4096 in bf16
