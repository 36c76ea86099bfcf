"""The catalogue profiles added for issue 16, checked against sources outside vramplan.

Each profile's shapes were transcribed from Lightning-AI/litgpt 0.5.13 ``litgpt/config.py`` (``Config.from_name(row)``
read from the wheel, ``pip download litgpt==0.5.13 --no-deps``) and, where torchtune has a builder, from
pytorch/torchtune 0.6.1 ``torchtune/models/*/_model_builders.py``. The values are pinned here, so neither package is
needed at test time. Three checks per profile:

- the profile's ``config`` carries exactly the pinned shapes (and, for the torchtune rows, torchtune's context, rope
  base and tying);
- ``params_total`` equals a hand count from the pinned shapes alone (first principles: one term per weight tensor of
  the family's modeling file), independent of vramplan's builders and of transformers;
- where a total is published outside this repository, ``params_total`` equals it.

That ``params_total`` equals the transformers meta build is checked for every profile in tests/test_profiles_data.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

MODELS = Path(__file__).resolve().parents[1] / "profiles" / "models"

#: profile -> litgpt 0.5.13 row and its values: (row, n_layer, n_embd, n_head, head_size, n_query_groups,
#: intermediate_size, moe_intermediate_size (0: dense), n_expert, n_expert_per_token, padded_vocab_size,
#: block_size, rope_base, bias (attn_bias or bias), norm_qk)
LITGPT = {
    "codellama-7b": ("CodeLlama-7b-hf", 32, 4096, 32, 128, 32, 11008, 0, 0, 0, 32016, 16384, 1000000, False, False),
    "codellama-13b": ("CodeLlama-13b-hf", 40, 5120, 40, 128, 40, 13824, 0, 0, 0, 32016, 16384, 1000000, False, False),
    "codellama-34b": ("CodeLlama-34b-hf", 48, 8192, 64, 128, 8, 22016, 0, 0, 0, 32000, 16384, 1000000, False, False),
    "codellama-70b": ("CodeLlama-70b-hf", 80, 8192, 64, 128, 8, 28672, 0, 0, 0, 32016, 16384, 1000000, False, False),
    "mistral-large-2407": ("Mistral-Large-Instruct-2407", 88, 12288, 96, 128, 8, 28672, 0, 0, 0, 32768, 32768, 1000000,
                           False, False),
    "smollm2-135m": ("SmolLM2-135M", 30, 576, 9, 64, 3, 1536, 0, 0, 0, 49152, 8192, 100000, False, False),
    "smollm2-360m": ("SmolLM2-360M", 32, 960, 15, 64, 5, 2560, 0, 0, 0, 49152, 8192, 100000, False, False),
    # litgpt has no Qwen2 rows: Qwen2.5 kept Qwen2's shapes, and torchtune's qwen2 builders (below) agree
    "qwen2-0.5b": ("Qwen2.5-0.5B", 24, 896, 14, 64, 2, 4864, 0, 0, 0, 151936, 32768, 1000000, True, False),
    "qwen2-7b": ("Qwen2.5-7B", 28, 3584, 28, 128, 4, 18944, 0, 0, 0, 152064, 131072, 1000000, True, False),
    "gemma-2b": ("Gemma-2b", 18, 2048, 8, 256, 1, 16384, 0, 0, 0, 256000, 4096, 10000, False, False),
    "pythia-1b": ("pythia-1b", 16, 2048, 8, 256, 8, 8192, 0, 0, 0, 50304, 2048, 10000, True, False),
    "pythia-2.8b": ("pythia-2.8b", 32, 2560, 32, 80, 32, 10240, 0, 0, 0, 50304, 2048, 10000, True, False),
    "pythia-6.9b": ("pythia-6.9b", 32, 4096, 32, 128, 32, 16384, 0, 0, 0, 50432, 2048, 10000, True, False),
    "pythia-12b": ("pythia-12b", 36, 5120, 40, 128, 40, 20480, 0, 0, 0, 50688, 2048, 10000, True, False),
    "mixtral-8x22b": ("Mixtral-8x22B-v0.1", 56, 6144, 48, 128, 8, 16384, 0, 8, 2, 32768, 65536, 1000000, False, False),
    "phi-1.5": ("phi-1_5", 24, 2048, 32, 64, 32, 8192, 0, 0, 0, 51200, 2048, 10000, True, False),
    # block_size 4096 in litgpt; the profile is the Hub file (context 131072 with longrope)
    "phi-3.5-mini": ("Phi-3.5-mini-instruct", 32, 3072, 32, 96, 32, 8192, 0, 0, 0, 32064, 4096, 10000, False, False),
    "qwen2.5-math-1.5b": ("Qwen2.5-Math-1.5B", 28, 1536, 12, 128, 2, 8960, 0, 0, 0, 151936, 4096, 10000, True, False),
    "qwen2.5-math-7b": ("Qwen2.5-Math-7B", 28, 3584, 28, 128, 4, 18944, 0, 0, 0, 152064, 4096, 10000, True, False),
    "qwen2.5-math-72b": ("Qwen2.5-Math-72B", 80, 8192, 64, 128, 8, 29568, 0, 0, 0, 152064, 4096, 10000, True, False),
    "qwen2.5-7b-instruct-1m": ("Qwen2.5-7B-Instruct-1M", 28, 3584, 28, 128, 4, 18944, 0, 0, 0, 152064, 1010000,
                               10000000, True, False),
    "qwen2.5-14b-instruct-1m": ("Qwen2.5-14B-Instruct-1M", 48, 5120, 40, 128, 8, 13824, 0, 0, 0, 152064, 1010000,
                                10000000, True, False),
    # Falcon's new decoder architecture: n_query_groups is num_kv_heads; the file names no context or rope base
    "falcon-40b": ("falcon-40b", 60, 8192, 128, 64, 8, 32768, 0, 0, 0, 65024, 2048, 10000, False, False),
    "falcon-180b": ("falcon-180B", 80, 14848, 232, 64, 8, 59392, 0, 0, 0, 65024, 2048, 10000, False, False),
    "qwen3-235b-a22b": ("Qwen3-235B-A22B", 94, 4096, 64, 128, 4, 12288, 1536, 128, 8, 151936, 40960, 1000000, False,
                        True),
    "qwen3-235b-a22b-instruct-2507": ("Qwen3-235B-A22B-Instruct-2507", 94, 4096, 64, 128, 4, 12288, 1536, 128, 8,
                                      151936, 262144, 5000000, False, True),
    "qwen3-30b-a3b-instruct-2507": ("Qwen3-30B-A3B-Instruct-2507", 48, 2048, 32, 128, 4, 6144, 768, 128, 8, 151936,
                                    262144, 10000000, False, True),
}

#: profiles whose shapes come from a printed module tree, in the LITGPT layout: scottlogic-alex/llm-memory-calculator
#: llama-sizes.md @ 93934b33 prints huggyllama/llama-7b and -13b (context 2048: the LLaMA paper, arXiv:2302.13971)
TREES = {
    "llama-7b": ("huggyllama/llama-7b", 32, 4096, 32, 128, 32, 11008, 0, 0, 0, 32000, 2048, 10000, False, False),
    "llama-13b": ("huggyllama/llama-13b", 40, 5120, 40, 128, 40, 13824, 0, 0, 0, 32000, 2048, 10000, False, False),
}
#: Qwen2-MoE profiles, in the LITGPT layout, from config.json copies: Qwen1.5-MoE-A2.7B as the defaults of transformers
#: 5.24.0 configuration_qwen2_moe.py (docstring checkpoint Qwen/Qwen1.5-MoE-A2.7B), Qwen2-57B-A14B as quoted in
#: NVIDIA/TensorRT-LLM tests/unittest/_torch/modeling/test_modeling_qwen_moe.py @ 08b2040c
QWEN2_MOE = {
    "qwen1.5-moe-a2.7b": ("Qwen1.5-MoE-A2.7B", 24, 2048, 16, 128, 16, 5632, 1408, 60, 4, 151936, 32768, 1000000, True,
                          False),
    "qwen2-57b-a14b": ("Qwen2-57B-A14B", 28, 3584, 28, 128, 4, 18944, 2560, 64, 8, 151936, 131072, 1000000, True,
                       False),
}
#: shared_expert_intermediate_size of the Qwen2-MoE profiles (one shared expert and its Linear(d, 1) gate per layer)
SHARED_EXPERT = {"qwen1.5-moe-a2.7b": 5632, "qwen2-57b-a14b": 20480}
SHAPES = {**LITGPT, **TREES, **QWEN2_MOE}

#: profile -> torchtune 0.6.1 builder: (builder, vocab_size, num_layers, num_heads, num_kv_heads, embed_dim,
#: intermediate_dim, max_seq_len, rope_base, tied output)
TORCHTUNE = {
    "codellama-7b": ("code_llama2_7b", 32016, 32, 32, 32, 4096, 11008, 16384, 1000000, False),
    "codellama-13b": ("code_llama2_13b", 32016, 40, 40, 40, 5120, 13824, 16384, 1000000, False),
    "codellama-70b": ("code_llama2_70b", 32016, 80, 64, 8, 8192, 28672, 16384, 1000000, False),
    "qwen2-0.5b": ("qwen2_0_5b", 151936, 24, 14, 2, 896, 4864, 32768, 1000000, True),
    "qwen2-7b": ("qwen2_7b", 152064, 28, 28, 4, 3584, 18944, 32768, 1000000, False),
    # gemma_2b (head_dim 256); torchtune's Gemma output projection is the token embedding (tied)
    "gemma-2b": ("gemma_2b", 256000, 18, 8, 1, 2048, 16384, 8192, 10000, True),
}

#: where each profile's tying comes from (litgpt's Config has no tying flag)
TIED = {
    "codellama-7b": False, "codellama-13b": False, "codellama-34b": False, "codellama-70b": False,   # Llama 2 architecture, never tied
    "smollm2-135m": True,   # the config.json printed in satyasundar/erav3-s13 README.md
    "smollm2-360m": True,   # every SmolLM2 size (the bundled smollm2-1.7b file)
    "qwen2-0.5b": True, "qwen2-7b": False, "gemma-2b": True,   # torchtune builders above
    "pythia-1b": False, "pythia-2.8b": False, "pythia-6.9b": False, "pythia-12b": False,   # GPT-NeoX embed_out
    "mixtral-8x22b": False, "mistral-large-2407": False,
    "phi-1.5": False,   # litgpt lm_head_bias=True: a biased head is its own tensor
    "phi-3.5-mini": False,   # the Hub file (tie_word_embeddings false); keras-hub's total counts the head
    "llama-7b": False, "llama-13b": False,   # the printed trees: lm_head Linear beside embed_tokens
    "qwen1.5-moe-a2.7b": False, "qwen2-57b-a14b": False,   # the config copies
    # as Qwen2.5-7B/72B (the Math cards' base_model), and the 1M models are Qwen2.5-7B/14B with a longer context
    "qwen2.5-math-7b": False, "qwen2.5-math-72b": False,
    "qwen2.5-7b-instruct-1m": False,
    "qwen2.5-math-1.5b": True,   # as Qwen2.5-1.5B, its card's base_model (bundled qwen2.5-1.5b: tied, Hub total below)
    "qwen2.5-14b-instruct-1m": False,
    "falcon-40b": True, "falcon-180b": True,   # FalconForCausalLM ties lm_head to word_embeddings (its default)
    "qwen3-235b-a22b": False, "qwen3-235b-a22b-instruct-2507": False, "qwen3-30b-a3b-instruct-2507": False,
}

#: totals published outside this repository
PUBLISHED = {
    # Pythia paper (arXiv:2304.01373), Table 1, total parameters
    "pythia-1b": 1_011_781_632, "pythia-2.8b": 2_775_208_960, "pythia-6.9b": 6_857_302_016,
    "pythia-12b": 11_846_072_320,
    # Gemma report (arXiv:2403.08295) Table 2: 524,288,000 embedding + 1,981,884,416 non-embedding
    "gemma-2b": 524_288_000 + 1_981_884_416,
    # "Total Parameters: 134,515,008" under the printed config, satyasundar/erav3-s13 README.md
    "smollm2-135m": 134_515_008,
    # keras-team/keras-hub keras_hub/src/models/phi3/phi3_presets.py, phi3_mini_128k_instruct_en "params"
    "phi-3.5-mini": 3_821_079_552,
    # the Qwen3-30B-A3B total already bundled (qwen3-30b-a3b.yaml, its meta build): the 2507 release kept the shapes
    "qwen3-30b-a3b-instruct-2507": 30_532_122_624,
}


# ------------------------------------------------------------------------ totals the Hugging Face Hub records
#: profile -> (Hub repository, its safetensors "total" in the Hub API record, tensors the checkpoint stores that are
#: not parameters). The records are copied (model.json, with the repository's config.json beside them) in
#: daniel-p-green/alain-ai-learning-platform @ 1b337752, out/research-*/sources/huggingface/.
HUB_TOTALS = {
    "deepseek-r1-distill-llama-8b": ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", 8_030_261_248, 0),
    "deepseek-r1-distill-qwen-32b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", 32_763_876_352, 0),
    "qwen2.5-32b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", 32_763_876_352, 0),   # the same shapes
    "tongyi-deepresearch-30b-a3b": ("Alibaba-NLP/Tongyi-DeepResearch-30B-A3B", 30_532_122_624, 0),
    "qwen3-30b-a3b": ("Alibaba-NLP/Tongyi-DeepResearch-30B-A3B", 30_532_122_624, 0),   # the same shapes
    "dolphin-2.9.1-yi-1.5-34b": ("dphn/dolphin-2.9.1-yi-1.5-34b", 34_388_917_248, 0),
    "tiny-qwen2-trl": ("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5", 2_428_632, 0),
    "bloom-560m": ("bigscience/bloomz-560m", 559_214_592, 0),
    "llama-3.2-3b": ("context-labs/meta-llama-Llama-3.2-3B-Instruct-FP16", 3_212_749_824, 0),
    "qwen2.5-0.5b": ("Gensyn/Qwen2.5-0.5B-Instruct", 494_032_768, 0),
    "gemma-3-1b": ("google/gemma-3-1b-it", 999_885_952, 0),
    "llama-3.1-8b": ("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248, 0),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", 1_235_814_400, 0),
    "llama-3-8b": ("meta-llama/Meta-Llama-3-8B", 8_030_261_248, 0),
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304, 0),
    "qwen2.5-3b": ("Qwen/Qwen2.5-3B-Instruct", 3_085_938_688, 0),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512, 0),
    "qwen3-32b": ("Qwen/Qwen3-32B", 32_762_123_264, 0),
    "tinyllama-1.1b": ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 1_100_048_384, 0),
    # the checkpoint stores each layer's rotary inv_freq buffer: 32 layers x 64
    "llama-2-7b": ("meta-llama/Llama-2-7b-hf", 6_738_417_664, 32 * 64),
    # the checkpoint stores each block's causal-mask buffer attn.bias, 1024 x 1024
    "gpt2": ("openai-community/gpt2", 137_022_720, 12 * 1024 * 1024),
    "distilgpt2": ("distilbert/distilgpt2", 88_204_032, 6 * 1024 * 1024),
    # tied in its config, but the checkpoint stores lm_head.weight as well: 151,936 x 1,024
    "qwen3-0.6b": ("Qwen/Qwen3-0.6B", 751_632_384, 151_936 * 1_024),
}


def _profile(stem: str) -> dict:
    with (MODELS / f"{stem}.yaml").open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _hand_count(stem: str) -> int:
    """Weights of the family's modeling file, one term per tensor, from the pinned litgpt shapes."""
    _, L, d, h, hd, kv, inter, moe, experts, _top, V, _ctx, _rope, bias, norm_qk = SHAPES[stem]
    family = _profile(stem)["config"]["model_type"]
    head = 0 if TIED[stem] else V * d
    if family == "gpt_neox":   # query_key_value, dense, dense_h_to_4h, dense_4h_to_h (all biased), 2 LayerNorms
        per = (d * 3 * d + 3 * d) + (d * d + d) + (d * inter + inter) + (inter * d + d) + 2 * 2 * d
        return V * d + head + L * per + 2 * d
    if family == "phi":        # q/k/v/dense biased, fc1/fc2 biased, one LayerNorm; biased lm_head, final LayerNorm
        per = 4 * (d * d + d) + (d * inter + inter) + (inter * d + d) + 2 * d
        return V * d + (V * d + V) + L * per + 2 * d
    if family == "falcon":     # new decoder architecture: fused query_key_value, dense, 4x MLP, ln_attn + ln_mlp
        per = d * (h + 2 * kv) * hd + d * d + 2 * d * inter + 2 * 2 * d
        return V * d + head + L * per + 2 * d
    q, k = h * hd, kv * hd
    attn = d * q + 2 * d * k + q * d + (q + 2 * k if bias else 0) + (2 * hd if norm_qk else 0)
    if experts:                # router Linear(d, experts) + experts x (gate, up, down) [+ shared expert and its gate]
        mlp = d * experts + experts * 3 * d * (moe or inter)
        if stem in SHARED_EXPERT:
            mlp += 3 * d * SHARED_EXPERT[stem] + d
    else:
        mlp = 3 * d * inter
    return V * d + head + L * (attn + mlp + 2 * d) + d


@pytest.mark.parametrize("stem", sorted(SHAPES))
def test_profile_shapes_are_the_sources(stem):
    row, L, d, h, hd, kv, inter, moe, experts, top, V, _ctx, _rope, _bias, _qk = SHAPES[stem]
    c = _profile(stem)["config"]
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["vocab_size"]) == (L, d, h, V), row
    assert c.get("head_dim", d // h) == hd, row
    assert c.get("num_key_value_heads", c.get("num_kv_heads", h)) == kv, row
    if moe:
        assert (c["moe_intermediate_size"], c["num_experts"], c["num_experts_per_tok"]) == (moe, experts, top), row
        assert c.get("shared_expert_intermediate_size") == SHARED_EXPERT.get(stem), row
    elif experts:
        assert (c["intermediate_size"], c["num_local_experts"], c["num_experts_per_tok"]) == (inter, experts, top), row
    else:
        assert c.get("intermediate_size", c.get("ffn_hidden_size") or 4 * d) == inter, row
    # a file without the key gets its config class's default: FalconConfig ties, the others here do not
    assert bool(c.get("tie_word_embeddings", c["model_type"] == "falcon")) is TIED[stem]


@pytest.mark.parametrize("stem", sorted(s for s in SHAPES if s not in TORCHTUNE
                                         and s not in ("phi-3.5-mini", "falcon-40b", "falcon-180b")))
def test_context_and_rope_are_the_sources(stem):
    row, *_, ctx, rope, _bias, _qk = SHAPES[stem]
    c = _profile(stem)["config"]
    assert c["max_position_embeddings"] == ctx, row
    assert c.get("rope_theta", c.get("rotary_emb_base")) == rope, row


@pytest.mark.parametrize("stem", sorted(TORCHTUNE))
def test_profile_matches_torchtune_builder(stem):
    builder, V, L, h, kv, d, inter, seq, rope, tied = TORCHTUNE[stem]
    c = _profile(stem)["config"]
    got = (c["vocab_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"],
           c["hidden_size"], c["intermediate_size"], c["max_position_embeddings"], c["rope_theta"],
           bool(c.get("tie_word_embeddings", False)))
    assert got == (V, L, h, kv, d, inter, seq, rope, tied), builder


@pytest.mark.parametrize("stem", sorted(SHAPES))
def test_params_total_is_the_hand_count(stem):
    assert _profile(stem)["params_total"] == _hand_count(stem)


@pytest.mark.parametrize("stem,total", sorted(PUBLISHED.items()))
def test_params_total_is_the_published_total(stem, total):
    assert _profile(stem)["params_total"] == total


@pytest.mark.parametrize("stem", sorted(HUB_TOTALS))
def test_params_total_is_the_hub_total(stem):
    repo, total, not_parameters = HUB_TOTALS[stem]
    assert _profile(stem)["params_total"] == total - not_parameters, repo


def test_hub_total_ids_resolve_to_their_profile(monkeypatch):
    from vramplan.profiles import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for stem, (repo, _, _) in HUB_TOTALS.items():
        if stem not in ("qwen2.5-32b", "qwen3-30b-a3b"):     # those two rows borrow another repository's record
            assert resolve_model(repo).name == stem, repo


def test_qwen2_moe_totals_round_to_the_model_cards():
    """The model cards copied in ZHUI/paddlenlp_model_readme print the totals rounded."""
    assert round(_profile("qwen1.5-moe-a2.7b")["params_total"] / 1e8) == 143   # "14.3B parameters in total"
    assert round(_profile("qwen2-57b-a14b")["params_total"] / 1e9) == 57      # "#Params 57B"


def test_hand_count_fails_on_a_wrong_shape():
    """The hand count is not a restatement of the file: one changed shape changes it."""
    saved = SHAPES["codellama-7b"]
    try:
        SHAPES["codellama-7b"] = saved[:10] + (32000,) + saved[11:]   # CodeLlama-7b-Python's vocabulary
        assert _hand_count("codellama-7b") != _profile("codellama-7b")["params_total"]
    finally:
        SHAPES["codellama-7b"] = saved


# ------------------------------------------------------------------ model ids named by the frameworks' examples
LF, AX = "hiyouga/LLaMA-Factory@ff6d4d12", "axolotl-ai-cloud/axolotl@067b021c"
SW, TR, TT = "modelscope/ms-swift@3602360a", "huggingface/trl@f2cd5771", "torchtune 0.6.1 wheel recipes/configs"

#: ids first resolved offline for issue 16: id -> (profile, where an example names it)
FRAMEWORK_IDS = {
    "EleutherAI/pythia-12b-deduped": ("pythia-12b", f"{AX} examples/archived/pythia-12b/config.yml"),
    "EleutherAI/pythia-1b-deduped": ("pythia-1b", f"{TR} docs/source/ppo_trainer.md"),
    "HuggingFaceTB/SmolLM2-135M": ("smollm2-135m", f"{AX} examples/streaming/sft.yaml"),
    "LLM-Research/Meta-Llama-3.1-8B-Instruct": ("llama-3.1-8b", f"{SW} examples/train/tuners/longlora/train.sh"),
    "Qwen/QwQ-32B": ("qwen2.5-32b", f"{SW} examples/train/sequence_parallel/sequence_parallel_512k.sh"),
    "Qwen/Qwen2-0.5B": ("qwen2-0.5b", f"{TR} docs/source/cpo_trainer.md"),
    "Qwen/Qwen2-0.5B-Instruct": ("qwen2-0.5b", f"{TR} docs/source/cpo_trainer.md"),
    "Qwen/Qwen2-7B": ("qwen2-7b", f"{AX} examples/qwen2/qlora-fsdp.yaml"),
    "Qwen/Qwen2-7B-Instruct": ("qwen2-7b", f"{TT} qwen2/7B_full.yaml"),
    "Qwen/Qwen3-235B-A22B-Instruct-2507": ("qwen3-235b-a22b-instruct-2507",
                                           f"{LF} examples/ktransformers/train_lora/qwen3moe_lora_sft_kt.yaml"),
    "Qwen/Qwen3-30B-A3B-Instruct-2507": ("qwen3-30b-a3b-instruct-2507",
                                         f"{AX} examples/expert_parallel/qwen3_30ba3b_ep_fft_4gpu.yaml"),
    "codellama/CodeLlama-7b-hf": ("codellama-7b", f"{AX} examples/archived/code-llama/7b/qlora.yml"),
    "codellama/CodeLlama-13b-hf": ("codellama-13b", f"{AX} examples/archived/code-llama/13b/qlora.yml"),
    "codellama/CodeLlama-34b-hf": ("codellama-34b", f"{AX} examples/archived/code-llama/34b/qlora.yml"),
    "meta-llama/CodeLlama-7b-hf": ("codellama-7b", f"{TT} code_llama2/7B_full_low_memory.yaml"),
    "google/gemma-2b": ("gemma-2b", f"{TT} gemma/2B_lora_single_device.yaml"),
    "microsoft/phi-1_5": ("phi-1.5", f"{AX} examples/phi/phi-qlora.yml"),
    "microsoft/Phi-3.5-mini-instruct": ("phi-3.5-mini", f"{AX} examples/phi/lora-3.5.yaml"),
    "microsoft/Phi-3-mini-128k-instruct": ("phi-3.5-mini", f"{TR} docs/source/dataset_formats.md"),
    "Qwen/Qwen1.5-MoE-A2.7B": ("qwen1.5-moe-a2.7b", f"{AX} examples/archived/qwen/qwen2-moe-lora.yaml"),
    "Qwen/Qwen2-57B-A14B-Instruct": ("qwen2-57b-a14b", f"{SW} examples/megatron/moe/moe.sh"),
    "Qwen/Qwen2.5-Math-1.5B": ("qwen2.5-math-1.5b", f"{SW} examples/train/full/dft.sh"),
    "Qwen/Qwen2.5-Math-1.5B-Instruct": ("qwen2.5-math-1.5b", f"{TR} docs/source/sdpo_trainer.md"),
    "Qwen/Qwen2.5-Math-7B": ("qwen2.5-math-7b", f"{SW} examples/train/grpo/multi_node/colocate_multi_node1.sh"),
    "trl-internal-testing/tiny-Qwen2ForCausalLM-2.5": ("tiny-qwen2-trl", f"{TR} docs/source/grpo_with_replay_buffer.md"),
    "huggyllama/llama-7b": ("llama-7b", f"{AX} examples/archived/jeopardy-bot/config.yml"),
}


@pytest.mark.parametrize("model_id", sorted(FRAMEWORK_IDS))
def test_framework_model_id_resolves_offline(model_id, monkeypatch):
    from vramplan.profiles import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = resolve_model(model_id)
    assert (r.origin, r.name) == ("profile", FRAMEWORK_IDS[model_id][0]), FRAMEWORK_IDS[model_id][1]
    assert r.spec.params_total == r.profile.params_total


# ------------------------------------------------ mirror ids from the frameworks' download registries
#: ModelScope/OpenMind id -> the Hugging Face id it mirrors, as ms-swift @ 3602360a swift/model/models/*.py
#: (Model(ms_model_id, hf_model_id), "sw") or LLaMA-Factory @ ff6d4d12 src/llamafactory/extras/constants.py
#: (DownloadSource.MODELSCOPE/OPENMIND beside DEFAULT, "lf") records it; pairs the two registries disagree on are
#: not bundled (AI-ModelScope/gemma-2b-it and gemma-7b, AI-ModelScope/Mixtral-8x22B-v0.1)
MIRRORS = {
    "AI-ModelScope/bloom-560m": ("bigscience/bloom-560m", "lf"),
    "AI-ModelScope/bloomz-560m": ("bigscience/bloomz-560m", "lf"),
    "AI-ModelScope/codegemma-7b-it": ("google/codegemma-7b-it", "lf"),
    "AI-ModelScope/falcon-40b": ("tiiuae/falcon-40b", "lf"),
    "AI-ModelScope/falcon-40b-instruct": ("tiiuae/falcon-40b-instruct", "lf"),
    "AI-ModelScope/falcon-7b": ("tiiuae/falcon-7b", "lf"),
    "AI-ModelScope/falcon-7b-instruct": ("tiiuae/falcon-7b-instruct", "lf"),
    "AI-ModelScope/gemma-2b": ("google/gemma-2b", "sw"),
    "AI-ModelScope/gemma-7b-it": ("google/gemma-7b-it", "sw"),
    "AI-ModelScope/gpt2": ("openai-community/gpt2", "lf"),
    "AI-ModelScope/Llama-3.1-Nemotron-70B-Instruct-HF": ("nvidia/Llama-3.1-Nemotron-70B-Instruct-HF", "sw"),
    "AI-ModelScope/Mistral-7B-Instruct-v0.1": ("mistralai/Mistral-7B-Instruct-v0.1", "sw"),
    "AI-ModelScope/Mistral-7B-Instruct-v0.2": ("mistralai/Mistral-7B-Instruct-v0.2", "sw"),
    "AI-ModelScope/Mistral-7B-v0.1": ("mistralai/Mistral-7B-v0.1", "sw"),
    "AI-ModelScope/Mixtral-8x22B-Instruct-v0.1": ("mistralai/Mixtral-8x22B-Instruct-v0.1", "lf"),
    "AI-ModelScope/Mixtral-8x7B-Instruct-v0.1": ("mistralai/Mixtral-8x7B-Instruct-v0.1", "sw"),
    "AI-ModelScope/Mixtral-8x7B-v0.1": ("mistralai/Mixtral-8x7B-v0.1", "sw"),
    "AI-ModelScope/phi-2": ("microsoft/phi-2", "sw"),
    "iic/Tongyi-DeepResearch-30B-A3B": ("Alibaba-NLP/Tongyi-DeepResearch-30B-A3B", "sw"),
    "LlamaFactory/gemma-2-2b-it": ("google/gemma-2-2b-it", "lf"),
    "LlamaFactory/gemma-2-9b-it": ("google/gemma-2-9b-it", "lf"),
    "LlamaFactory/Qwen2-0.5B-Instruct": ("Qwen/Qwen2-0.5B-Instruct", "lf"),
    "LlamaFactory/Qwen2-1.5B-Instruct": ("Qwen/Qwen2-1.5B-Instruct", "lf"),
    "LlamaFactory/Qwen2-7B-Instruct": ("Qwen/Qwen2-7B-Instruct", "lf"),
    "LLM-Research/gemma-2-27b": ("google/gemma-2-27b", "sw"),
    "LLM-Research/gemma-2-27b-it": ("google/gemma-2-27b-it", "sw"),
    "LLM-Research/gemma-2-2b": ("google/gemma-2-2b", "sw"),
    "LLM-Research/gemma-2-2b-it": ("google/gemma-2-2b-it", "sw"),
    "LLM-Research/gemma-2-9b": ("google/gemma-2-9b", "sw"),
    "LLM-Research/gemma-2-9b-it": ("google/gemma-2-9b-it", "sw"),
    "LLM-Research/gemma-3-12b-it": ("google/gemma-3-12b-it", "sw"),
    "LLM-Research/gemma-3-12b-pt": ("google/gemma-3-12b-pt", "sw"),
    "LLM-Research/gemma-3-1b-it": ("google/gemma-3-1b-it", "sw"),
    "LLM-Research/gemma-3-1b-pt": ("google/gemma-3-1b-pt", "sw"),
    "LLM-Research/gemma-3-27b-it": ("google/gemma-3-27b-it", "sw"),
    "LLM-Research/gemma-3-27b-pt": ("google/gemma-3-27b-pt", "sw"),
    "LLM-Research/gemma-3-4b-it": ("google/gemma-3-4b-it", "sw"),
    "LLM-Research/gemma-3-4b-pt": ("google/gemma-3-4b-pt", "sw"),
    "LLM-Research/Llama-3.2-1B": ("meta-llama/Llama-3.2-1B", "sw"),
    "LLM-Research/Llama-3.2-1B-Instruct": ("meta-llama/Llama-3.2-1B-Instruct", "sw"),
    "LLM-Research/Llama-3.2-3B": ("meta-llama/Llama-3.2-3B", "sw"),
    "LLM-Research/Llama-3.2-3B-Instruct": ("meta-llama/Llama-3.2-3B-Instruct", "sw"),
    "LLM-Research/Llama-3.3-70B-Instruct": ("meta-llama/Llama-3.3-70B-Instruct", "sw"),
    "LLM-Research/Meta-Llama-3-70B": ("meta-llama/Meta-Llama-3-70B", "sw"),
    "LLM-Research/Meta-Llama-3-70B-Instruct": ("meta-llama/Meta-Llama-3-70B-Instruct", "sw"),
    "LLM-Research/Meta-Llama-3-8B": ("meta-llama/Meta-Llama-3-8B", "sw"),
    "LLM-Research/Meta-Llama-3-8B-Instruct": ("meta-llama/Meta-Llama-3-8B-Instruct", "sw"),
    "LLM-Research/Meta-Llama-3.1-405B": ("meta-llama/Meta-Llama-3.1-405B", "sw"),
    "LLM-Research/Meta-Llama-3.1-405B-Instruct": ("meta-llama/Meta-Llama-3.1-405B-Instruct", "sw"),
    "LLM-Research/Meta-Llama-3.1-70B": ("meta-llama/Meta-Llama-3.1-70B", "sw"),
    "LLM-Research/Meta-Llama-3.1-70B-Instruct": ("meta-llama/Meta-Llama-3.1-70B-Instruct", "sw"),
    "LLM-Research/Meta-Llama-3.1-8B": ("meta-llama/Meta-Llama-3.1-8B", "sw"),
    "LLM-Research/Mistral-7B-Instruct-v0.3": ("mistralai/Mistral-7B-Instruct-v0.3", "sw"),
    "LLM-Research/mistral-7b-v0.3": ("mistralai/Mistral-7B-v0.3", "lf"),
    "LLM-Research/Mistral-Large-Instruct-2407": ("mistralai/Mistral-Large-Instruct-2407", "sw"),
    "LLM-Research/Phi-3-mini-128k-instruct": ("microsoft/Phi-3-mini-128k-instruct", "sw"),
    "LLM-Research/Phi-3-mini-4k-instruct": ("microsoft/Phi-3-mini-4k-instruct", "sw"),
    "LLM-Research/Phi-3.5-mini-instruct": ("microsoft/Phi-3.5-mini-instruct", "sw"),
    "LLM-Research/phi-4": ("microsoft/phi-4", "sw"),
    "modelscope/falcon-180B": ("tiiuae/falcon-180b", "lf"),
    "modelscope/falcon-180B-chat": ("tiiuae/falcon-180b-chat", "lf"),
    "modelscope/Llama-2-13b-chat-ms": ("meta-llama/Llama-2-13b-chat-hf", "sw"),
    "modelscope/Llama-2-13b-ms": ("meta-llama/Llama-2-13b-hf", "sw"),
    "modelscope/Llama-2-70b-chat-ms": ("meta-llama/Llama-2-70b-chat-hf", "sw"),
    "modelscope/Llama-2-70b-ms": ("meta-llama/Llama-2-70b-hf", "sw"),
    "modelscope/Llama-2-7b-chat-ms": ("meta-llama/Llama-2-7b-chat-hf", "sw"),
    "modelscope/Llama-2-7b-ms": ("meta-llama/Llama-2-7b-hf", "sw"),
    "Shanghai_AI_Laboratory/internlm2-chat-7b": ("internlm/internlm2-chat-7b", "sw"),
    "skyline2006/llama-13b": ("huggyllama/llama-13b", "lf"),
    "skyline2006/llama-7b": ("huggyllama/llama-7b", "lf"),
    "ZhipuAI/chatglm3-6b": ("zai-org/chatglm3-6b", "sw"),
}


@pytest.mark.parametrize("mirror", sorted(MIRRORS))
def test_mirror_resolves_to_the_profile_of_what_it_mirrors(mirror, monkeypatch):
    from vramplan.profiles import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf, _ = MIRRORS[mirror]
    a, b = resolve_model(mirror), resolve_model(hf)
    assert a.origin == b.origin == "profile" and a.name == b.name, (mirror, hf)


def test_mirrors_the_registries_disagree_on_are_not_bundled(monkeypatch):
    from vramplan.errors import UnknownModelError
    from vramplan.profiles import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for mirror in ("AI-ModelScope/gemma-2b-it", "AI-ModelScope/gemma-7b", "AI-ModelScope/Mixtral-8x22B-v0.1"):
        with pytest.raises(UnknownModelError):
            resolve_model(mirror)


# ------------------------------------------------ the list of framework example ids (profiles/tools/framework_ids.py)
IDS_TSV = MODELS.parent / "tools" / "framework_ids.tsv"


def _listed_ids() -> dict[str, int]:
    import csv

    with IDS_TSV.open(encoding="utf-8") as fh:
        return {r["model_id"]: int(r["files"]) for r in csv.DictReader(fh, delimiter="\t")}


def test_framework_ids_pinned_here_are_in_the_list():
    listed = _listed_ids()
    assert len(listed) == 279
    missing = [i for i in FRAMEWORK_IDS if i not in listed]
    assert not missing, missing


def test_framework_id_coverage(monkeypatch):
    """93 of the 279 listed ids resolve offline to a profile or a bundled quantized checkpoint (91 before issue 16's
    Qwen2.5-Math-1.5B profile); dropping a profile or alias lowers it."""
    from vramplan.errors import VramplanError
    from vramplan.profiles import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ok = 0
    for model_id in _listed_ids():
        try:
            ok += resolve_model(model_id).origin in ("profile", "quantized")
        except VramplanError:
            pass
    assert ok == 93
