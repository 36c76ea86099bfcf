"""KV-cache pages, groups, blocks and concurrency from first principles, for bundled families.

Expected values are written out from each model's config.json numbers (layers, KV heads, head_dim) and
vLLM's rules (docs/serving.md), not read from vramplan's output.
"""

from __future__ import annotations

import dataclasses

import pytest

from vramplan.errors import SetupError
from vramplan.profiles import Gpu, resolve_model
from vramplan.serve.ranks import kv_layers, layer_types
from vramplan.serve.vllm import blocks_per_request, bytes_per_block, kv_groups, num_blocks, plan_vllm

GiB = 2**30


def spec(name):
    return resolve_model(name).spec


# (model, tp, kv dtype bytes, expected bytes per 16-token block over all layers of one rank)
GQA_BLOCKS = [
    # Llama-3.1-8B: 32 layers, 8 KV heads, head_dim 128: 2 × 16 × 8 × 128 × 2 B × 32 = 2 MiB
    ("llama-3.1-8b", 1, 2, 2 * 16 * 8 * 128 * 2 * 32),
    ("llama-3.1-8b", 2, 2, 2 * 16 * 4 * 128 * 2 * 32),
    ("llama-3.1-8b", 1, 1, 2 * 16 * 8 * 128 * 1 * 32),            # --kv-cache-dtype fp8 halves it
    # Llama-3.1-70B: 80 layers, 8 KV heads; TP 8 leaves one head per rank
    ("llama-3.1-70b", 8, 2, 2 * 16 * 1 * 128 * 2 * 80),
    # Qwen2.5-0.5B: 24 layers, 2 KV heads, head_dim 64; TP 2: one head; TP 4? 14 heads do not divide
    ("qwen2.5-0.5b", 1, 2, 2 * 16 * 2 * 64 * 2 * 24),
    ("qwen2.5-0.5b", 2, 2, 2 * 16 * 1 * 64 * 2 * 24),
    # Qwen3-14B: 40 layers, 8 KV heads, head_dim 128
    ("qwen3-14b", 1, 2, 2 * 16 * 8 * 128 * 2 * 40),
    # Qwen3-30B-A3B (MoE): 48 layers, 4 KV heads, head_dim 128; TP 8 replicates them (one per rank)
    ("qwen3-30b-a3b", 8, 2, 2 * 16 * 1 * 128 * 2 * 48),
    # Llama-2-7B: 32 layers, 32 KV heads (MHA), head_dim 128
    ("llama-2-7b", 1, 2, 2 * 16 * 32 * 128 * 2 * 32),
]


@pytest.mark.parametrize("name, tp, kvb, expected", GQA_BLOCKS)
def test_full_attention_block_bytes(name, tp, kvb, expected):
    groups = kv_groups(kv_layers(spec(name), tp, kvb), 16)
    assert len(groups) == 1 and groups[0].kind == "full"
    assert bytes_per_block(groups) == expected


def test_gemma2_alternates_and_forms_two_groups_of_21():
    s = spec("gemma-2-9b")
    kinds = layer_types(s)
    # vllm gemma2.py: is_sliding = not bool(layer_idx % 2) -> layers 0, 2, ..., 40 slide
    assert kinds[0] == "sliding_attention" and kinds[1] == "full_attention"
    assert kinds.count("sliding_attention") == 21 and kinds.count("full_attention") == 21
    groups = kv_groups(kv_layers(s, 1, 2), 16)
    assert sorted((g.kind, len(g.layers)) for g in groups) == [("full", 21), ("sliding", 21)]
    page = 2 * 16 * 8 * 256 * 2                       # 8 KV heads, head_dim 256, bf16
    assert bytes_per_block(groups) == 21 * page
    # one 8,192-token request: full 8192/16 = 512 blocks; the 4,096 window with 8,192 in flight is
    # capped by the length: cdiv(min(4095 + 8192, 8192), 16) + 1 = 513
    assert blocks_per_request(groups, 8192, 16, 8192) == 512 + 513
    assert blocks_per_request(groups, 8192, 16, 512) == 512 + (-(-(4095 + 512) // 16) + 1)


def test_gemma3_five_to_one_pattern_makes_six_groups_of_eight():
    s = spec("gemma-3-12b")                           # 48 layers, sliding_window_pattern 6, window 1024
    kinds = layer_types(s)
    assert [i for i, k in enumerate(kinds) if k == "full_attention"] == [5, 11, 17, 23, 29, 35, 41, 47]
    groups = kv_groups(kv_layers(s, 1, 2), 16)
    # group_size = min(8, 40) = 8 (40 >= 1.5 × 8): 1 full group + 5 sliding groups of 8 layers
    assert sorted((g.kind, len(g.layers)) for g in groups) == [("full", 8)] + [("sliding", 8)] * 5
    page = 2 * 16 * 8 * 256 * 2
    assert bytes_per_block(groups) == 8 * page
    # at 32,768 tokens with 2,048 batched: 2048 full blocks + 5 × (cdiv(1023 + 2048, 16) + 1 = 193)
    assert blocks_per_request(groups, 32768, 16, 2048) == 2048 + 5 * 193


def test_mistral_v01_every_layer_slides_one_group():
    s = spec("mistral-7b-v0.1")                       # sliding_window 4096 on all 32 layers
    groups = kv_groups(kv_layers(s, 1, 2), 16)
    assert len(groups) == 1 and groups[0].kind == "sliding" and groups[0].sliding_window == 4096
    assert bytes_per_block(groups) == 2 * 16 * 8 * 128 * 2 * 32
    # cdiv(min(4095 + 8192, 32768), 16) + 1 = 768 + 1
    assert blocks_per_request(groups, 32768, 16, 8192) == 769
    # mistral v0.3 has no window: full attention, 2048 blocks at 32k
    g3 = kv_groups(kv_layers(spec("mistral-7b-v0.3"), 1, 2), 16)
    assert g3[0].kind == "full" and blocks_per_request(g3, 32768, 16, 8192) == 2048


def test_phi3_mini_model_level_window_slides_every_layer():
    """Phi-3-mini-4k's config has sliding_window 2047 and no layer_types: vLLM's Attention takes the
    model-level window (cache_config.sliding_window = ModelConfig.get_sliding_window()) on every layer."""
    groups = kv_groups(kv_layers(spec("phi-3-mini-4k"), 1, 2), 16)
    assert [(g.kind, g.sliding_window, len(g.layers)) for g in groups] == [("sliding", 2047, 32)]
    assert bytes_per_block(groups) == 2 * 16 * 32 * 96 * 2 * 32
    # a 4,096-token request with 2,048 batched: cdiv(min(2046 + 2048, 4096), 16) + 1 = 257
    assert blocks_per_request(groups, 4096, 16, 2048) == 257


def test_mla_latent_is_replicated_across_tp():
    """No DeepSeek-V2/V3 profile is bundled: an MLA config on a Llama shape. vllm MLAAttentionSpec stores one
    latent of kv_lora_rank + qk_rope_head_dim = 512 + 64 per token and layer, whatever the TP size."""
    base = spec("llama-3.1-8b")
    mla = dataclasses.replace(base, config={**base.config, "kv_lora_rank": 512, "qk_rope_head_dim": 64})
    for tp in (1, 8):
        groups = kv_groups(kv_layers(mla, tp, 2), 64)    # FlashMLA uses 64-token blocks
        assert groups[0].kind == "mla"
        assert bytes_per_block(groups) == 64 * 576 * 2 * 32


def test_num_blocks_and_concurrency_by_hand():
    s = spec("llama-3.1-8b")
    groups = kv_groups(kv_layers(s, 1, 2), 16)
    assert num_blocks(10 * GiB, groups) == 10 * GiB // (2 * 2**20) == 5120
    assert num_blocks(-1, groups) == 0
    # 5120 blocks, 8192-token requests need 512 blocks: 10.00x
    p = plan_vllm(s, Gpu("x", 80 * GiB), max_model_len=8192, activation_bytes=0, cudagraph_bytes=0,
                  non_torch_bytes=0, gpu_memory_utilization=0.5)
    avail = 40 * GiB - p.weights_bytes
    assert p.available_kv_bytes == avail
    assert p.num_blocks == avail // (2 * 2**20)
    assert p.max_concurrency == p.num_blocks / 512
    assert p.kv_cache_tokens == int(p.num_blocks / 512 * 8192) == p.num_blocks * 16


def test_kv_tokens_with_a_length_not_a_multiple_of_the_block():
    s = spec("llama-3.1-8b")
    p = plan_vllm(s, Gpu("x", 80 * GiB), max_model_len=29000, activation_bytes=0, cudagraph_bytes=0)
    assert p.blocks_per_request == 1813                   # cdiv(29000, 16)
    assert p.kv_cache_tokens == int(p.num_blocks / 1813 * 29000)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"tp": 3}, "--tp 3"),
    ({"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization"),
    ({"max_model_len": -4}, "--max-model-len"),
    ({"max_num_seqs": 0}, "--max-num-seqs"),
    ({"kv_cache_dtype": "int3"}, "--kv-cache-dtype"),
    ({"quant": "nf4"}, "--quant"),
])
def test_bad_values_raise_one_line(kwargs, fragment):
    with pytest.raises(SetupError) as e:
        plan_vllm(spec("llama-3.1-8b"), Gpu("x", 80 * GiB), **kwargs)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_derived_max_model_len():
    """vllm/config/model.py _get_and_verify_max_len: llama3 and yarn ropes are pre-scaled, Gemma 3 too."""
    from vramplan.serve.vllm import derived_max_model_len

    assert derived_max_model_len(spec("llama-3.1-8b")) == 131072       # rope_type llama3: not multiplied
    assert derived_max_model_len(spec("gemma-3-12b")) == 131072        # linear ×8 already in it
    assert derived_max_model_len(spec("qwen3-14b")) == 40960
    base = spec("llama-2-7b")
    scaled = dataclasses.replace(base, config={**base.config, "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert derived_max_model_len(scaled) == 4 * 4096
    with pytest.raises(SetupError, match="VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        plan_vllm(spec("qwen3-14b"), Gpu("x", 80 * GiB), max_model_len=65536)
    assert plan_vllm(spec("qwen3-14b"), Gpu("x", 80 * GiB)).max_model_len == 40960
