"""Write ``profiles/models/<name>.yaml`` from the table below and recompute ``params_total``.

Maintainer tool, not part of the package (nothing in ``vramplan`` imports it). Each entry is plain data:
the published ``config.json`` (pasted as JSON, key order kept), the canonical Hub id, aliases and a
source line saying where the values were confirmed. ``params_total`` is never typed in: it is counted
from the model transformers builds on the meta device (``parameters()`` deduplicates tied weights),
except for remote-code models, whose count is derived by hand in :func:`_baichuan_7b_params`.

Run from the repository root::

    python profiles/tools/build_model_profiles.py            # write every profile
    python profiles/tools/build_model_profiles.py --check    # exit 1 if a file on disk differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

# Sources quoted in the `source` lines (stored copies of public repositories and pages).
LITGPT = "Lightning-AI/litgpt litgpt/config.py"
MLC = "mlc-ai/mlc-llm python/mlc_llm/model/model_preset.py"
LLM_PROF = "citsjtu2020/LLM-Prof sglang/Model_Config.md"


def hf(repo: str) -> str:
    return f"https://huggingface.co/{repo}/blob/main/config.json"


def _baichuan_7b_params(c: dict) -> int:
    """Baichuan-7B (remote code ``modeling_baichuan.py``): Llama-7B layout with q/k/v fused into ``W_pack``.

    Per layer: W_pack Linear(h, 3h, bias=False) + o_proj Linear(h, h) + gate/up/down Linear(h, i) x3
    + two RMSNorm weights (h each). Model: embed_tokens (V, h) + final RMSNorm (h) + untied lm_head (V, h).
    Published total: 7,000,559,616 (the model card's "7B"; safetensors/bin total of the checkpoint).
    """
    h, i, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    per_layer = 3 * h * h + h * h + 3 * h * i + 2 * h
    return n * per_layer + v * h + h + (0 if c.get("tie_word_embeddings") else v * h)


HAND_COUNTS = {"baichuan": _baichuan_7b_params}

# --------------------------------------------------------------------------------------------- table
# Every config below is the JSON of the published config.json. "shape keys" = the keys that decide
# parameter shapes (hidden/intermediate sizes, layers, heads, kv heads, head_dim, vocab, tying, biases).

MODELS: list[dict] = [
    # ------------------------------------------------------------------ Llama 2
    dict(
        name="llama-2-7b",
        hf_id="meta-llama/Llama-2-7b-hf",
        aliases=["meta-llama/Llama-2-7b", "meta-llama/Llama-2-7b-chat-hf", "llama-2-7b-hf", "llama2-7b",
                 "llama-2-7b-chat"],
        source=f"{hf('meta-llama/Llama-2-7b-hf')} (file quoted verbatim in several repositories, e.g. the "
               f"torchKQI LLM task table and llm-engine test fixtures; shape keys confirmed against {LITGPT})",
        config="""{
  "_name_or_path": "meta-llama/Llama-2-7b-hf",
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 4096,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.31.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
}""",
    ),
    dict(
        name="llama-2-13b",
        hf_id="meta-llama/Llama-2-13b-hf",
        aliases=["meta-llama/Llama-2-13b", "meta-llama/Llama-2-13b-chat-hf", "llama-2-13b-hf", "llama2-13b",
                 "llama-2-13b-chat"],
        source=f"{hf('meta-llama/Llama-2-13b-hf')} (quoted verbatim in the torchKQI LLM task table and in "
               f"llm-engine test fixtures; shape keys confirmed against {LITGPT})",
        config="""{
  "_name_or_path": "meta-llama/Llama-2-13b-hf",
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 5120,
  "initializer_range": 0.02,
  "intermediate_size": 13824,
  "max_position_embeddings": 4096,
  "model_type": "llama",
  "num_attention_heads": 40,
  "num_hidden_layers": 40,
  "num_key_value_heads": 40,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.32.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
}""",
    ),
    dict(
        name="llama-2-70b",
        hf_id="meta-llama/Llama-2-70b-hf",
        aliases=["meta-llama/Llama-2-70b", "meta-llama/Llama-2-70b-chat-hf", "llama-2-70b-hf", "llama2-70b",
                 "llama-2-70b-chat"],
        source=f"{hf('meta-llama/Llama-2-70b-hf')} (quoted verbatim in the torchKQI LLM task table and in "
               f"llm-engine test fixtures; shape keys confirmed against {LITGPT})",
        config="""{
  "_name_or_path": "meta-llama/Llama-2-70b-hf",
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 8192,
  "initializer_range": 0.02,
  "intermediate_size": 28672,
  "max_position_embeddings": 4096,
  "model_type": "llama",
  "num_attention_heads": 64,
  "num_hidden_layers": 80,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.32.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
}""",
    ),
    # ------------------------------------------------------------------ Llama 3 / 3.1 / 3.2 / 3.3
    dict(
        name="llama-3-8b",
        hf_id="meta-llama/Meta-Llama-3-8B",
        aliases=["meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Llama-3-8B", "llama3-8b",
                 "llama-3-8b-instruct", "llama3-8b-instruct"],
        source=f"{hf('meta-llama/Meta-Llama-3-8B')} (quoted verbatim in the torchKQI LLM task table; same "
               f"keys in the commented llama3_8b preset of {MLC}; shape keys confirmed against {LITGPT}). "
               "The Instruct repo differs only in eos_token_id (128009).",
        config="""{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 8192,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}""",
    ),
    dict(
        name="llama-3-70b",
        hf_id="meta-llama/Meta-Llama-3-70B",
        aliases=["meta-llama/Meta-Llama-3-70B-Instruct", "meta-llama/Llama-3-70B", "llama3-70b",
                 "llama-3-70b-instruct", "llama3-70b-instruct"],
        source=f"{hf('meta-llama/Meta-Llama-3-70B')} (keys as in the commented llama3_70b preset of {MLC}; "
               f"shape keys confirmed against {LITGPT} and the oumi Llama 3 model-info tables)",
        config="""{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 8192,
  "initializer_range": 0.02,
  "intermediate_size": 28672,
  "max_position_embeddings": 8192,
  "model_type": "llama",
  "num_attention_heads": 64,
  "num_hidden_layers": 80,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}""",
    ),
    dict(
        name="llama-3.1-8b",
        hf_id="meta-llama/Llama-3.1-8B",
        aliases=["meta-llama/Meta-Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct",
                 "meta-llama/Meta-Llama-3.1-8B-Instruct", "llama3.1-8b", "llama-3.1-8b-instruct"],
        source=f"{hf('meta-llama/Llama-3.1-8B')} (quoted verbatim in {LLM_PROF}; the Instruct file in "
               f"{MLC} differs only in eos_token_id and transformers_version; shape keys confirmed against "
               f"{LITGPT})",
        config="""{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}""",
    ),
    dict(
        name="llama-3.1-70b",
        hf_id="meta-llama/Llama-3.1-70B",
        aliases=["meta-llama/Meta-Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct",
                 "meta-llama/Meta-Llama-3.1-70B-Instruct", "llama3.1-70b", "llama-3.1-70b-instruct"],
        source=f"{hf('meta-llama/Llama-3.1-70B')} (the Instruct file is quoted in {MLC} (llama3_1_70b); the "
               "base file has the 8B base layout with eos_token_id 128001; shape keys confirmed against "
               f"{LITGPT} and the oumi Llama 3.1 model-info table)",
        config="""{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 8192,
  "initializer_range": 0.02,
  "intermediate_size": 28672,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 64,
  "num_hidden_layers": 80,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}""",
    ),
    dict(
        name="llama-3.1-405b",
        hf_id="meta-llama/Llama-3.1-405B",
        aliases=["meta-llama/Meta-Llama-3.1-405B", "meta-llama/Llama-3.1-405B-Instruct",
                 "meta-llama/Meta-Llama-3.1-405B-Instruct", "llama3.1-405b", "llama-3.1-405b-instruct"],
        source=f"{hf('meta-llama/Llama-3.1-405B')} (shape keys - 126 layers, hidden 16384, intermediate "
               f"53248, 128 heads, 8 kv heads, vocab 128256 - confirmed against {LITGPT} and several "
               "third-party 405B tables; non-shape keys follow the Llama-3.1 base file layout). The FP8 "
               "'MP16' variants with 16 kv heads are NOT this profile.",
        config="""{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 16384,
  "initializer_range": 0.02,
  "intermediate_size": 53248,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 128,
  "num_hidden_layers": 126,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}""",
    ),
    dict(
        name="llama-3.2-1b",
        hf_id="meta-llama/Llama-3.2-1B",
        aliases=["meta-llama/Llama-3.2-1B-Instruct", "llama3.2-1b", "llama-3.2-1b-instruct"],
        source=f"{hf('meta-llama/Llama-3.2-1B')} (quoted in {MLC} (llama3_2_1b) and in "
               f"kevinstephano/thunder_model_blocks hf_llama/llama_config.py; shape keys confirmed against "
               f"{LITGPT})",
        config="""{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}""",
    ),
    dict(
        name="llama-3.2-3b",
        hf_id="meta-llama/Llama-3.2-3B",
        aliases=["meta-llama/Llama-3.2-3B-Instruct", "llama3.2-3b", "llama-3.2-3b-instruct"],
        source=f"{hf('meta-llama/Llama-3.2-3B')} (quoted verbatim in {LLM_PROF}; same values in {MLC} "
               f"(llama3_2_3b); shape keys confirmed against {LITGPT})",
        config="""{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 3072,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 24,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}""",
    ),
    dict(
        name="llama-3.3-70b",
        hf_id="meta-llama/Llama-3.3-70B-Instruct",
        aliases=["llama3.3-70b", "llama-3.3-70b-instruct"],
        source=f"{hf('meta-llama/Llama-3.3-70B-Instruct')} (only an Instruct checkpoint exists; shape keys "
               f"confirmed against {LITGPT} (Llama-3.3-70B-Instruct) and the oumi Llama 3.3 model-info "
               "table; non-shape keys follow the Llama-3.1-70B-Instruct file)",
        config="""{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 8192,
  "initializer_range": 0.02,
  "intermediate_size": 28672,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 64,
  "num_hidden_layers": 80,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.47.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}""",
    ),
    # ------------------------------------------------------------------ Mistral / Mixtral
    dict(
        name="mistral-7b-v0.1",
        hf_id="mistralai/Mistral-7B-v0.1",
        aliases=["mistralai/Mistral-7B-Instruct-v0.1", "mistral-7b", "mistral-7b-instruct-v0.1"],
        source=f"{hf('mistralai/Mistral-7B-v0.1')} (quoted in {MLC} (mistral_7b, which renames "
               f"sliding_window to sliding_window_size and adds serving keys); shape keys confirmed against "
               f"{LITGPT}). Instruct-v0.1 has the same vocab (32000), rope_theta and 4096 sliding window; "
               "Instruct-v0.2 (rope_theta 1e6, no sliding window) is deliberately not an alias.",
        config="""{
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
}""",
    ),
    dict(
        name="mistral-7b-v0.3",
        hf_id="mistralai/Mistral-7B-v0.3",
        aliases=["mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b-instruct-v0.3"],
        source=f"{hf('mistralai/Mistral-7B-v0.3')} (quoted in {MLC} (mistral_7b_v03); shape keys - vocab "
               f"32768 - confirmed against {LITGPT} (Mistral-7B-v0.3 and Instruct-v0.3))",
        config="""{
  "architectures": ["MistralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.0.dev0",
  "use_cache": true,
  "vocab_size": 32768
}""",
    ),
    dict(
        name="mixtral-8x7b",
        hf_id="mistralai/Mixtral-8x7B-v0.1",
        aliases=["mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b-v0.1", "mixtral-8x7b-instruct"],
        source=f"{hf('mistralai/Mixtral-8x7B-v0.1')} (quoted in {MLC} (Mixtral-8x7B-v0.1); shape keys "
               f"confirmed against {LITGPT}; published total 46.7B)",
        config="""{
  "architectures": ["MixtralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mixtral",
  "num_attention_heads": 32,
  "num_experts_per_tok": 2,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "num_local_experts": 8,
  "output_router_logits": false,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.02,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
}""",
    ),
    # ------------------------------------------------------------------ Qwen2.5
    dict(
        name="qwen2.5-0.5b",
        hf_id="Qwen/Qwen2.5-0.5B",
        aliases=["Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5-0.5b-instruct", "qwen-2.5-0.5b"],
        source=f"{hf('Qwen/Qwen2.5-0.5B')} (printed verbatim at commit 060db6499f32 in a rosellm "
               "pretrained_config.py docstring and in a tensor-inference debug log; shape keys confirmed "
               f"against {LITGPT}; published total 494,032,768)",
        config="""{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_mrope": false,
  "use_sliding_window": false,
  "vocab_size": 151936
}""",
    ),
    dict(
        name="qwen2.5-1.5b",
        hf_id="Qwen/Qwen2.5-1.5B",
        aliases=["Qwen/Qwen2.5-1.5B-Instruct", "qwen2.5-1.5b-instruct", "qwen-2.5-1.5b"],
        source=f"{hf('Qwen/Qwen2.5-1.5B')} (shape keys confirmed against {LITGPT} (block_size 131072, "
               "tied) and several third-party Qwen2.5-1.5B tables; non-shape keys follow the Qwen2.5-0.5B/3B "
               f"base files quoted in {LLM_PROF})",
        config="""{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 1536,
  "initializer_range": 0.02,
  "intermediate_size": 8960,
  "max_position_embeddings": 131072,
  "max_window_layers": 28,
  "model_type": "qwen2",
  "num_attention_heads": 12,
  "num_hidden_layers": 28,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_mrope": false,
  "use_sliding_window": false,
  "vocab_size": 151936
}""",
    ),
    dict(
        name="qwen2.5-3b",
        hf_id="Qwen/Qwen2.5-3B",
        aliases=["Qwen/Qwen2.5-3B-Instruct", "qwen2.5-3b-instruct", "qwen-2.5-3b"],
        source=f"{hf('Qwen/Qwen2.5-3B')} (quoted verbatim in {LLM_PROF}; same shapes in {MLC} (qwen2.5_3b) "
               f"and {LITGPT})",
        config="""{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 32768,
  "max_window_layers": 36,
  "model_type": "qwen2",
  "num_attention_heads": 16,
  "num_hidden_layers": 36,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_mrope": false,
  "use_sliding_window": false,
  "vocab_size": 151936
}""",
    ),
    dict(
        name="qwen2.5-7b",
        hf_id="Qwen/Qwen2.5-7B",
        aliases=["Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b-instruct", "qwen-2.5-7b"],
        source=f"{hf('Qwen/Qwen2.5-7B')} (quoted verbatim in {LLM_PROF}; shape keys confirmed against "
               f"{LITGPT})",
        config="""{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 131072,
  "max_window_layers": 28,
  "model_type": "qwen2",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_mrope": false,
  "use_sliding_window": false,
  "vocab_size": 152064
}""",
    ),
    dict(
        name="qwen2.5-14b",
        hf_id="Qwen/Qwen2.5-14B",
        aliases=["Qwen/Qwen2.5-14B-Instruct", "qwen2.5-14b-instruct", "qwen-2.5-14b"],
        source=f"{hf('Qwen/Qwen2.5-14B')} (quoted verbatim in {LLM_PROF}; shape keys confirmed against "
               f"{LITGPT}; count pinned at 14,770,033,664 in /work/shared/FINDINGS.md)",
        config="""{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 5120,
  "initializer_range": 0.02,
  "intermediate_size": 13824,
  "max_position_embeddings": 131072,
  "max_window_layers": 48,
  "model_type": "qwen2",
  "num_attention_heads": 40,
  "num_hidden_layers": 48,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 152064
}""",
    ),
    dict(
        name="qwen2.5-32b",
        hf_id="Qwen/Qwen2.5-32B",
        aliases=["Qwen/Qwen2.5-32B-Instruct", "qwen2.5-32b-instruct", "qwen-2.5-32b"],
        source=f"{hf('Qwen/Qwen2.5-32B')} (quoted verbatim in {LLM_PROF}; shape keys confirmed against "
               f"{LITGPT})",
        config="""{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 5120,
  "initializer_range": 0.02,
  "intermediate_size": 27648,
  "max_position_embeddings": 131072,
  "max_window_layers": 64,
  "model_type": "qwen2",
  "num_attention_heads": 40,
  "num_hidden_layers": 64,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 152064
}""",
    ),
    dict(
        name="qwen2.5-72b",
        hf_id="Qwen/Qwen2.5-72B",
        aliases=["Qwen/Qwen2.5-72B-Instruct", "qwen2.5-72b-instruct", "qwen-2.5-72b"],
        source=f"{hf('Qwen/Qwen2.5-72B')} (shape keys confirmed against {LITGPT} and the Qwen2.5-72B-Instruct "
               "file quoted in third-party serving configs (same shapes; Instruct has rms_norm_eps 1e-06 and "
               f"max_position_embeddings 32768); non-shape keys follow the Qwen2.5-32B base file in {LLM_PROF})",
        config="""{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 8192,
  "initializer_range": 0.02,
  "intermediate_size": 29568,
  "max_position_embeddings": 131072,
  "max_window_layers": 80,
  "model_type": "qwen2",
  "num_attention_heads": 64,
  "num_hidden_layers": 80,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": 131072,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 152064
}""",
    ),
    # ------------------------------------------------------------------ Qwen3
    dict(
        name="qwen3-0.6b",
        hf_id="Qwen/Qwen3-0.6B",
        aliases=["Qwen/Qwen3-0.6B-Base", "qwen-3-0.6b"],
        source=f"{hf('Qwen/Qwen3-0.6B')} (quoted in {MLC} (qwen3_0.6b); shape keys confirmed against "
               f"{LITGPT} (Qwen3-0.6B and -Base))",
        config="""{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}""",
    ),
    dict(
        name="qwen3-1.7b",
        hf_id="Qwen/Qwen3-1.7B",
        aliases=["Qwen/Qwen3-1.7B-Base", "qwen-3-1.7b"],
        source=f"{hf('Qwen/Qwen3-1.7B')} (quoted in {MLC} (qwen3_1.7b); shape keys confirmed against "
               f"{LITGPT})",
        config="""{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 6144,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}""",
    ),
    dict(
        name="qwen3-4b",
        hf_id="Qwen/Qwen3-4B",
        aliases=["Qwen/Qwen3-4B-Base", "qwen-3-4b"],
        source=f"{hf('Qwen/Qwen3-4B')} (as in the commented qwen3_4b preset of {MLC}; {LLM_PROF} quotes a "
               "re-serialised copy with the same shape keys; shape keys confirmed against "
               f"{LITGPT}). The 2507 Instruct/Thinking releases (rope_theta 5e6, 262144 positions) are not "
               "aliases.",
        config="""{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2560,
  "initializer_range": 0.02,
  "intermediate_size": 9728,
  "max_position_embeddings": 40960,
  "max_window_layers": 36,
  "model_type": "qwen3",
  "num_attention_heads": 32,
  "num_hidden_layers": 36,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}""",
    ),
    dict(
        name="qwen3-8b",
        hf_id="Qwen/Qwen3-8B",
        aliases=["Qwen/Qwen3-8B-Base", "qwen-3-8b"],
        source=f"{hf('Qwen/Qwen3-8B')} (quoted verbatim in {LLM_PROF}; same keys in the commented qwen3_8b "
               f"preset of {MLC}; shape keys confirmed against {LITGPT})",
        config="""{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 12288,
  "max_position_embeddings": 40960,
  "max_window_layers": 36,
  "model_type": "qwen3",
  "num_attention_heads": 32,
  "num_hidden_layers": 36,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}""",
    ),
    dict(
        name="qwen3-14b",
        hf_id="Qwen/Qwen3-14B",
        aliases=["Qwen/Qwen3-14B-Base", "qwen-3-14b"],
        source=f"{hf('Qwen/Qwen3-14B')} (quoted verbatim in {LLM_PROF}; shape keys confirmed against "
               f"{LITGPT} (Qwen3-14B and -Base))",
        config="""{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 5120,
  "initializer_range": 0.02,
  "intermediate_size": 17408,
  "max_position_embeddings": 40960,
  "max_window_layers": 40,
  "model_type": "qwen3",
  "num_attention_heads": 40,
  "num_hidden_layers": 40,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}""",
    ),
    dict(
        name="qwen3-32b",
        hf_id="Qwen/Qwen3-32B",
        aliases=["qwen-3-32b"],
        source=f"{hf('Qwen/Qwen3-32B')} (quoted verbatim in {LLM_PROF}; shape keys confirmed against "
               f"{LITGPT})",
        config="""{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 5120,
  "initializer_range": 0.02,
  "intermediate_size": 25600,
  "max_position_embeddings": 40960,
  "max_window_layers": 64,
  "model_type": "qwen3",
  "num_attention_heads": 64,
  "num_hidden_layers": 64,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}""",
    ),
    dict(
        name="qwen3-30b-a3b",
        hf_id="Qwen/Qwen3-30B-A3B",
        aliases=["Qwen/Qwen3-30B-A3B-Base", "qwen-3-30b-a3b", "qwen3-30b"],
        source=f"{hf('Qwen/Qwen3-30B-A3B')} (quoted verbatim in {LLM_PROF}; shape keys confirmed against "
               f"{LITGPT} (Qwen3-30B-A3B and -Base) and the vllm-ascend moe_offload test fixture)",
        config="""{
  "architectures": ["Qwen3MoeForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "decoder_sparse_step": 1,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 6144,
  "max_position_embeddings": 40960,
  "max_window_layers": 48,
  "mlp_only_layers": [],
  "model_type": "qwen3_moe",
  "moe_intermediate_size": 768,
  "norm_topk_prob": true,
  "num_attention_heads": 32,
  "num_experts": 128,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 48,
  "num_key_value_heads": 4,
  "output_router_logits": false,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.001,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}""",
    ),
    # ------------------------------------------------------------------ Gemma 2
    dict(
        name="gemma-2-2b",
        hf_id="google/gemma-2-2b",
        aliases=["google/gemma-2-2b-it", "gemma2-2b", "gemma-2-2b-it"],
        source=f"{hf('google/gemma-2-2b')} (quoted verbatim in the torchKQI LLM task table; the -it file in "
               f"{MLC} (gemma2_2b) has the same shape keys; shape keys confirmed against {LITGPT})",
        config="""{
  "architectures": ["Gemma2ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": 50.0,
  "bos_token_id": 2,
  "cache_implementation": "hybrid",
  "eos_token_id": 1,
  "final_logit_softcapping": 30.0,
  "head_dim": 256,
  "hidden_act": "gelu_pytorch_tanh",
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 2304,
  "initializer_range": 0.02,
  "intermediate_size": 9216,
  "max_position_embeddings": 8192,
  "model_type": "gemma2",
  "num_attention_heads": 8,
  "num_hidden_layers": 26,
  "num_key_value_heads": 4,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "torch_dtype": "float32",
  "transformers_version": "4.42.4",
  "use_cache": true,
  "vocab_size": 256000
}""",
    ),
    dict(
        name="gemma-2-9b",
        hf_id="google/gemma-2-9b",
        aliases=["google/gemma-2-9b-it", "gemma2-9b", "gemma-2-9b-it"],
        source=f"{hf('google/gemma-2-9b')} (quoted verbatim in the torchKQI LLM task table; same shape keys "
               f"in {MLC} (gemma2_9b) and {LITGPT})",
        config="""{
  "architectures": ["Gemma2ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": 50.0,
  "bos_token_id": 2,
  "cache_implementation": "hybrid",
  "eos_token_id": 1,
  "final_logit_softcapping": 30.0,
  "head_dim": 256,
  "hidden_act": "gelu_pytorch_tanh",
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 8192,
  "model_type": "gemma2",
  "num_attention_heads": 16,
  "num_hidden_layers": 42,
  "num_key_value_heads": 8,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "sliding_window_size": 4096,
  "torch_dtype": "float32",
  "transformers_version": "4.42.0.dev0",
  "use_cache": true,
  "vocab_size": 256000
}""",
    ),
    dict(
        name="gemma-2-27b",
        hf_id="google/gemma-2-27b",
        aliases=["google/gemma-2-27b-it", "gemma2-27b", "gemma-2-27b-it"],
        source=f"{hf('google/gemma-2-27b')} (keys as quoted in {MLC} (gemma2_27b, minus the serving key "
               f"_attn_implementation); shape keys - head_dim 128, query_pre_attn_scalar 144 - confirmed "
               f"against {LITGPT}). torch_dtype in the base repo is recorded as float32 like the 2b/9b base "
               "files; the mlc copy says bfloat16 (the -it file).",
        config="""{
  "architectures": ["Gemma2ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": 50.0,
  "bos_token_id": 2,
  "cache_implementation": "hybrid",
  "eos_token_id": 1,
  "final_logit_softcapping": 30.0,
  "head_dim": 128,
  "hidden_act": "gelu_pytorch_tanh",
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 4608,
  "initializer_range": 0.02,
  "intermediate_size": 36864,
  "max_position_embeddings": 8192,
  "model_type": "gemma2",
  "num_attention_heads": 32,
  "num_hidden_layers": 46,
  "num_key_value_heads": 16,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 144,
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "sliding_window_size": 4096,
  "torch_dtype": "float32",
  "transformers_version": "4.42.0.dev0",
  "use_cache": true,
  "vocab_size": 256000
}""",
    ),
    # ------------------------------------------------------------------ Gemma 3 (text-only causal LM)
    dict(
        name="gemma-3-1b",
        hf_id="google/gemma-3-1b-it",
        aliases=["google/gemma-3-1b-pt", "gemma3-1b", "gemma-3-1b-it", "gemma-3-1b-pt"],
        source=f"{hf('google/gemma-3-1b-it')} (a text-only gemma3_text checkpoint; quoted in {MLC} "
               f"(gemma3_1b_it); shape keys - vocab 262144 - confirmed against {LITGPT} and third-party "
               "Gemma3 test payloads). The -pt file has the same shape keys.",
        config="""{
  "architectures": ["Gemma3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": null,
  "bos_token_id": 2,
  "cache_implementation": "hybrid",
  "eos_token_id": [1, 106],
  "final_logit_softcapping": null,
  "head_dim": 256,
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 1152,
  "initializer_range": 0.02,
  "intermediate_size": 6912,
  "max_position_embeddings": 32768,
  "model_type": "gemma3_text",
  "num_attention_heads": 4,
  "num_hidden_layers": 26,
  "num_key_value_heads": 1,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06,
  "rope_local_base_freq": 10000,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": 512,
  "sliding_window_pattern": 6,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.50.0.dev0",
  "use_cache": true,
  "vocab_size": 262144
}""",
    ),
    dict(
        name="gemma-3-4b",
        hf_id="google/gemma-3-4b-it",
        aliases=["google/gemma-3-4b-pt", "gemma3-4b", "gemma-3-4b-it", "gemma-3-4b-pt"],
        source=f"{hf('google/gemma-3-4b-it')} is the multimodal gemma3 config (Gemma3ForConditionalGeneration); "
               "this profile is its text_config {hidden_size 2560, intermediate_size 10240, num_hidden_layers "
               "34, rope_scaling linear x8, sliding_window 1024} merged into a gemma3_text config, with the keys "
               "the published text_config leaves to Gemma3TextConfig defaults written out (vocab_size 262208, "
               "8 heads, 4 kv heads, head_dim 256, query_pre_attn_scalar 256, 131072 positions, rope_theta 1e6, "
               "local base 1e4). text_config confirmed verbatim in two public test fixtures; vocab 262208 "
               "confirmed by third-party Gemma3 geometry tables. Counts the language model only: the SigLIP "
               "vision tower and projector of the published 4.3B are not in params_total.",
        config="""{
  "architectures": ["Gemma3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": null,
  "bos_token_id": 2,
  "eos_token_id": [1, 106],
  "final_logit_softcapping": null,
  "head_dim": 256,
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 2560,
  "initializer_range": 0.02,
  "intermediate_size": 10240,
  "max_position_embeddings": 131072,
  "model_type": "gemma3_text",
  "num_attention_heads": 8,
  "num_hidden_layers": 34,
  "num_key_value_heads": 4,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06,
  "rope_local_base_freq": 10000.0,
  "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
  "rope_theta": 1000000.0,
  "sliding_window": 1024,
  "sliding_window_pattern": 6,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.50.0.dev0",
  "use_cache": true,
  "vocab_size": 262208
}""",
    ),
    dict(
        name="gemma-3-12b",
        hf_id="google/gemma-3-12b-it",
        aliases=["google/gemma-3-12b-pt", "gemma3-12b", "gemma-3-12b-it", "gemma-3-12b-pt"],
        source=f"{hf('google/gemma-3-12b-it')} is the multimodal gemma3 config; this profile is its "
               "text_config (hidden_size 3840, intermediate_size 15360, 48 layers, 16 heads, 8 kv heads, "
               "rope_scaling linear x8, sliding_window 1024) merged into a gemma3_text config with "
               "Gemma3TextConfig defaults written out (vocab_size 262208, head_dim 256). The expanded "
               f"text_config is quoted in a public test fixture; shape keys confirmed against {LITGPT}. "
               "Language model only (no vision tower).",
        config="""{
  "architectures": ["Gemma3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": null,
  "bos_token_id": 2,
  "eos_token_id": [1, 106],
  "final_logit_softcapping": null,
  "head_dim": 256,
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 3840,
  "initializer_range": 0.02,
  "intermediate_size": 15360,
  "max_position_embeddings": 131072,
  "model_type": "gemma3_text",
  "num_attention_heads": 16,
  "num_hidden_layers": 48,
  "num_key_value_heads": 8,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 256,
  "rms_norm_eps": 1e-06,
  "rope_local_base_freq": 10000.0,
  "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
  "rope_theta": 1000000.0,
  "sliding_window": 1024,
  "sliding_window_pattern": 6,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.50.0.dev0",
  "use_cache": true,
  "vocab_size": 262208
}""",
    ),
    dict(
        name="gemma-3-27b",
        hf_id="google/gemma-3-27b-it",
        aliases=["google/gemma-3-27b-pt", "gemma3-27b", "gemma-3-27b-it", "gemma-3-27b-pt"],
        source=f"{hf('google/gemma-3-27b-it')} is the multimodal gemma3 config; this profile is its "
               "text_config {head_dim 128, hidden_size 5376, intermediate_size 21504, 62 layers, 32 heads, "
               "16 kv heads, query_pre_attn_scalar 168, rope_scaling linear x8, sliding_window 1024} (quoted "
               "verbatim in two public fixtures) merged into a gemma3_text config with Gemma3TextConfig "
               f"defaults written out (vocab_size 262208); shape keys confirmed against {LITGPT}. Language "
               "model only (no vision tower).",
        config="""{
  "architectures": ["Gemma3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "attn_logit_softcapping": null,
  "bos_token_id": 2,
  "eos_token_id": [1, 106],
  "final_logit_softcapping": null,
  "head_dim": 128,
  "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 5376,
  "initializer_range": 0.02,
  "intermediate_size": 21504,
  "max_position_embeddings": 131072,
  "model_type": "gemma3_text",
  "num_attention_heads": 32,
  "num_hidden_layers": 62,
  "num_key_value_heads": 16,
  "pad_token_id": 0,
  "query_pre_attn_scalar": 168,
  "rms_norm_eps": 1e-06,
  "rope_local_base_freq": 10000.0,
  "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
  "rope_theta": 1000000.0,
  "sliding_window": 1024,
  "sliding_window_pattern": 6,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.50.0.dev0",
  "use_cache": true,
  "vocab_size": 262208
}""",
    ),
    # ------------------------------------------------------------------ Phi
    dict(
        name="phi-2",
        hf_id="microsoft/phi-2",
        aliases=["phi2"],
        source=f"{hf('microsoft/phi-2')} (the transformers-native file (model_type phi) quoted verbatim in "
               "two public repositories - an onnx-diagnostic test helper linking this URL, and an LLM graph "
               f"builder; shape keys confirmed against {LITGPT})",
        config="""{
  "_name_or_path": "microsoft/phi-2",
  "architectures": ["PhiForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 50256,
  "embd_pdrop": 0.0,
  "eos_token_id": 50256,
  "hidden_act": "gelu_new",
  "hidden_size": 2560,
  "initializer_range": 0.02,
  "intermediate_size": 10240,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 2048,
  "model_type": "phi",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "partial_rotary_factor": 0.4,
  "qk_layernorm": false,
  "resid_pdrop": 0.1,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.37.0",
  "use_cache": true,
  "vocab_size": 51200
}""",
    ),
    dict(
        name="phi-3-mini-4k",
        hf_id="microsoft/Phi-3-mini-4k-instruct",
        aliases=["phi-3-mini", "phi3-mini", "phi-3-mini-4k-instruct", "phi3-mini-4k"],
        source=f"{hf('microsoft/Phi-3-mini-4k-instruct')} (current revision, transformers_version 4.40.2, "
               "quoted verbatim in NVIDIA/TensorRT-LLM tests (PHI3_MINI_4K_CONFIG) and an LLM graph builder; "
               f"an older revision (4.39.3) is in {MLC}; shape keys confirmed against {LITGPT})",
        config="""{
  "_name_or_path": "Phi-3-mini-4k-instruct",
  "architectures": ["Phi3ForCausalLM"],
  "attention_dropout": 0.0,
  "auto_map": {
    "AutoConfig": "configuration_phi3.Phi3Config",
    "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"
  },
  "bos_token_id": 1,
  "embd_pdrop": 0.0,
  "eos_token_id": 32000,
  "hidden_act": "silu",
  "hidden_size": 3072,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 4096,
  "model_type": "phi3",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "original_max_position_embeddings": 4096,
  "pad_token_id": 32000,
  "resid_pdrop": 0.0,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "sliding_window": 2047,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.2",
  "use_cache": true,
  "attention_bias": false,
  "vocab_size": 32064
}""",
    ),
    dict(
        name="phi-4",
        hf_id="microsoft/phi-4",
        aliases=["phi4"],
        source=f"{hf('microsoft/phi-4')} (shape keys - hidden 5120, intermediate 17920, 40 layers, 40 heads, "
               "10 kv heads, vocab 100352, 16384 positions, rope_theta 250000 - confirmed against "
               f"{LITGPT}, the GGUF metadata of a public phi-4 mirror and a bitnet test fixture; the "
               "non-shape keys (token ids, transformers_version) could not be seen in a stored copy and "
               "are as recalled from the Hub file; published size 14.66B)",
        config="""{
  "architectures": ["Phi3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 100257,
  "embd_pdrop": 0.0,
  "eos_token_id": 100265,
  "hidden_act": "silu",
  "hidden_size": 5120,
  "initializer_range": 0.02,
  "intermediate_size": 17920,
  "max_position_embeddings": 16384,
  "model_type": "phi3",
  "num_attention_heads": 40,
  "num_hidden_layers": 40,
  "num_key_value_heads": 10,
  "original_max_position_embeddings": 16384,
  "pad_token_id": 100349,
  "resid_pdrop": 0.0,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 250000,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.47.0",
  "use_cache": true,
  "vocab_size": 100352
}""",
    ),
    # ------------------------------------------------------------------ Baichuan (remote code)
    dict(
        name="baichuan-7b",
        hf_id="baichuan-inc/Baichuan-7B",
        aliases=["baichuan1-7b", "baichuan-inc/baichuan-7b-base"],
        source=f"{hf('baichuan-inc/Baichuan-7B')} (remote code: BaiChuanForCausalLM with fused W_pack; shape "
               "keys - vocab 64000, hidden 4096, intermediate 11008, 32 layers, 32 heads, 4096 context, "
               "rms eps 1e-06 - confirmed by a GGUF conversion manifest naming this hub id; auto_map as in "
               "lmdeploy's AUTO_MAP for BaiChuanForCausalLM; token ids and transformers_version as recalled "
               "from the Hub file). params_total computed by hand (W_pack = Linear(4096, 12288, bias=False), "
               "untied head) and equal to the published 7,000,559,616.",
        config="""{
  "architectures": ["BaiChuanForCausalLM"],
  "auto_map": {
    "AutoConfig": "configuration_baichuan.BaiChuanConfig",
    "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM"
  },
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 4096,
  "model_type": "baichuan",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "pad_token_id": 0,
  "rms_norm_eps": 1e-06,
  "tie_word_embeddings": false,
  "torch_dtype": "float32",
  "transformers_version": "4.29.1",
  "use_cache": true,
  "vocab_size": 64000
}""",
    ),
    # ------------------------------------------------------------------ BLOOM
    dict(
        name="bloom-560m",
        hf_id="bigscience/bloom-560m",
        aliases=["bloom560m"],
        source=f"{hf('bigscience/bloom-560m')} (keys as printed from the Hub file in a public bloom-560m "
               "weights note (minus the _name_or_path/transformers_version the printer adds); same values "
               "in PaddleNLP's bloom-560m init configuration; published total 559,214,592 (model card))",
        config="""{
  "apply_residual_connection_post_layernorm": false,
  "architectures": ["BloomForCausalLM"],
  "attention_dropout": 0.0,
  "attention_softmax_in_fp32": true,
  "bias_dropout_fusion": true,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_dropout": 0.0,
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "masked_softmax_fusion": true,
  "model_type": "bloom",
  "n_head": 16,
  "n_inner": null,
  "n_layer": 24,
  "offset_alibi": 100,
  "pad_token_id": 3,
  "pretraining_tp": 1,
  "skip_bias_add": true,
  "skip_bias_add_qkv": false,
  "slow_but_exact": false,
  "unk_token_id": 0,
  "use_cache": true,
  "vocab_size": 250880
}""",
    ),
    dict(
        name="bloom-389m-zh",
        hf_id="Langboat/bloom-389m-zh",
        aliases=["bloom-389m", "langboat-bloom-389m-zh"],
        source=f"{hf('Langboat/bloom-389m-zh')} - DERIVED, not seen verbatim: the model card states it is "
               "bigscience/bloom-560m with the vocabulary pruned from 250880 to 42437, so this is the "
               "bloom-560m config with vocab_size 42437 (the pruned repo's own file was not in any stored "
               "copy). Cross-checked: a user's print_trainable_parameters shows 'all params: 389,584,896' "
               "with 43,815,936 trainable (LoRA + a modules_to_save copy of word_embeddings), so the base "
               "is 389,584,896 - 43,815,936 = 345,768,960, which is exactly what this config builds "
               "(embeddings tied to the head).",
        config="""{
  "apply_residual_connection_post_layernorm": false,
  "architectures": ["BloomForCausalLM"],
  "attention_dropout": 0.0,
  "attention_softmax_in_fp32": true,
  "bias_dropout_fusion": true,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_dropout": 0.0,
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "masked_softmax_fusion": true,
  "model_type": "bloom",
  "n_head": 16,
  "n_inner": null,
  "n_layer": 24,
  "offset_alibi": 100,
  "pad_token_id": 3,
  "pretraining_tp": 1,
  "skip_bias_add": true,
  "skip_bias_add_qkv": false,
  "slow_but_exact": false,
  "unk_token_id": 0,
  "use_cache": true,
  "vocab_size": 42437
}""",
    ),
    # ------------------------------------------------------------------ GPT-2 / OPT / Falcon / GPT-NeoX
    dict(
        name="gpt2",
        hf_id="openai-community/gpt2",
        aliases=["gpt2-small", "gpt-2"],
        source=f"{hf('openai-community/gpt2')} (formerly 'gpt2'; quoted verbatim in {MLC} (gpt2) and in the "
               "torchKQI LLM task table; published total 124,439,808)",
        config="""{
  "activation_function": "gelu_new",
  "architectures": ["GPT2LMHeadModel"],
  "attn_pdrop": 0.1,
  "bos_token_id": 50256,
  "embd_pdrop": 0.1,
  "eos_token_id": 50256,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "gpt2",
  "n_ctx": 1024,
  "n_embd": 768,
  "n_head": 12,
  "n_layer": 12,
  "n_positions": 1024,
  "resid_pdrop": 0.1,
  "summary_activation": null,
  "summary_first_dropout": 0.1,
  "summary_proj_to_labels": true,
  "summary_type": "cls_index",
  "summary_use_proj": true,
  "task_specific_params": {
    "text-generation": {
      "do_sample": true,
      "max_length": 50
    }
  },
  "vocab_size": 50257
}""",
    ),
    dict(
        name="opt-125m",
        hf_id="facebook/opt-125m",
        aliases=["opt125m"],
        source=f"{hf('facebook/opt-125m')} (quoted verbatim in a public opt-125m model note and, with "
               "torch_dtype rewritten, in a Mamba experiment; shape keys confirmed by several OPT "
               "tables; peft golden count opt-125m LoRA r=8 q/v = 294,912 rests on this shape)",
        config="""{
  "_name_or_path": "facebook/opt-125m",
  "activation_dropout": 0.0,
  "activation_function": "relu",
  "architectures": ["OPTForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 2,
  "do_layer_norm_before": true,
  "dropout": 0.1,
  "eos_token_id": 2,
  "ffn_dim": 3072,
  "hidden_size": 768,
  "init_std": 0.02,
  "layerdrop": 0.0,
  "max_position_embeddings": 2048,
  "model_type": "opt",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "prefix": "</s>",
  "torch_dtype": "float16",
  "transformers_version": "4.21.0.dev0",
  "use_cache": true,
  "vocab_size": 50272,
  "word_embed_proj_dim": 768
}""",
    ),
    dict(
        name="opt-1.3b",
        hf_id="facebook/opt-1.3b",
        aliases=["opt1.3b", "opt-1b3"],
        source=f"{hf('facebook/opt-1.3b')} (first keys seen in a DeepSpeed-Chat diff of this file; shape keys "
               "- hidden 2048, ffn 8192, 24 layers, 32 heads, word_embed_proj_dim 2048, pre-LN - confirmed "
               "by an inference_profile OPT test table; remaining keys follow the opt-125m file of the same "
               "release)",
        config="""{
  "_name_or_path": "facebook/opt-1.3b",
  "activation_dropout": 0.0,
  "activation_function": "relu",
  "architectures": ["OPTForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 2,
  "do_layer_norm_before": true,
  "dropout": 0.1,
  "eos_token_id": 2,
  "ffn_dim": 8192,
  "hidden_size": 2048,
  "init_std": 0.02,
  "layerdrop": 0.0,
  "max_position_embeddings": 2048,
  "model_type": "opt",
  "num_attention_heads": 32,
  "num_hidden_layers": 24,
  "pad_token_id": 1,
  "prefix": "</s>",
  "torch_dtype": "float16",
  "transformers_version": "4.21.0.dev0",
  "use_cache": true,
  "vocab_size": 50272,
  "word_embed_proj_dim": 2048
}""",
    ),
    dict(
        name="falcon-7b",
        hf_id="tiiuae/falcon-7b",
        aliases=["tiiuae/falcon-7b-instruct", "falcon-7b-instruct"],
        source=f"{hf('tiiuae/falcon-7b')} (falcon-7b-instruct's file, same shape keys, is quoted in "
               "tenstorrent tt-metal model_config_entries; shape keys - hidden 4544, 71 heads, multi_query, "
               f"parallel_attn, no bias, vocab 65024 - confirmed against {LITGPT}; transformers_version as "
               "recalled from the Hub file; published total 6.92B)",
        config="""{
  "alibi": false,
  "apply_residual_connection_post_layernorm": false,
  "architectures": ["FalconForCausalLM"],
  "attention_dropout": 0.0,
  "auto_map": {
    "AutoConfig": "configuration_falcon.FalconConfig",
    "AutoModel": "modeling_falcon.FalconModel",
    "AutoModelForSequenceClassification": "modeling_falcon.FalconForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_falcon.FalconForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_falcon.FalconForQuestionAnswering",
    "AutoModelForCausalLM": "modeling_falcon.FalconForCausalLM"
  },
  "bias": false,
  "bos_token_id": 11,
  "eos_token_id": 11,
  "hidden_dropout": 0.0,
  "hidden_size": 4544,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "falcon",
  "multi_query": true,
  "new_decoder_architecture": false,
  "num_attention_heads": 71,
  "num_hidden_layers": 32,
  "parallel_attn": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.27.4",
  "use_cache": true,
  "vocab_size": 65024
}""",
    ),
    dict(
        name="pythia-1.4b",
        hf_id="EleutherAI/pythia-1.4b",
        aliases=["EleutherAI/pythia-1.4b-deduped", "pythia-1.4b-deduped"],
        source=f"{hf('EleutherAI/pythia-1.4b')} (shape keys - hidden 2048, 24 layers, 16 heads - from "
               f"{LITGPT}; the remaining keys are those of the pythia-1b file quoted field-for-field in a "
               "public mlxcel test (same suite, same release); published total 1,414,647,808 (Pythia "
               "paper table))",
        config="""{
  "architectures": ["GPTNeoXForCausalLM"],
  "bos_token_id": 0,
  "eos_token_id": 0,
  "hidden_act": "gelu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 2048,
  "model_type": "gpt_neox",
  "num_attention_heads": 16,
  "num_hidden_layers": 24,
  "rotary_emb_base": 10000,
  "rotary_pct": 0.25,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.24.0",
  "use_cache": true,
  "use_parallel_residual": true,
  "vocab_size": 50304
}""",
    ),
    # ------------------------------------------------------------------ DeepSeek R1 distills
    dict(
        name="deepseek-r1-distill-qwen-7b",
        hf_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        aliases=["r1-distill-qwen-7b", "deepseek-r1-qwen-7b"],
        source=f"{hf('deepseek-ai/DeepSeek-R1-Distill-Qwen-7B')} (Qwen2.5-Math-7B base: shape keys equal to "
               "Qwen2.5-7B; a public model note that diffed the two files records rope_theta 10000 and "
               "sliding_window 4096 as the only differences; max_position_embeddings 131072 confirmed by a "
               "public llama.cpp setup; remaining keys as recalled from the Hub file)",
        config="""{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 131072,
  "max_window_layers": 28,
  "model_type": "qwen2",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000,
  "sliding_window": 4096,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.44.0",
  "use_cache": true,
  "use_mrope": false,
  "use_sliding_window": false,
  "vocab_size": 152064
}""",
    ),
    dict(
        name="deepseek-r1-distill-llama-8b",
        hf_id="deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        aliases=["r1-distill-llama-8b", "deepseek-r1-llama-8b"],
        source=f"{hf('deepseek-ai/DeepSeek-R1-Distill-Llama-8B')} (Llama-3.1-8B base; shape keys confirmed "
               f"against {LITGPT} (R1-Distill-Llama-8B: Llama-3.1-8B shapes, vocab 128256, 131072 "
               "positions); non-shape keys follow the Llama-3.1-8B base file)",
        config="""{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
}""",
    ),
]


# ------------------------------------------------------------------------------------------- counting
def count_params(config: dict) -> int:
    """Unique parameters of the model transformers builds from ``config`` (meta device, no memory)."""
    model_type = config["model_type"]
    if model_type in HAND_COUNTS:
        return HAND_COUNTS[model_type](config)
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def build_profile(entry: dict) -> dict:
    config = json.loads(entry["config"])
    return {
        "name": entry["name"],
        "hf_id": entry["hf_id"],
        "aliases": list(entry["aliases"]),
        "source": entry["source"],
        "params_total": count_params(config),
        "config": config,
    }


def render(profile: dict) -> str:
    return yaml.safe_dump(profile, sort_keys=False, allow_unicode=True, width=110, default_flow_style=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Compare with the files on disk; write nothing.")
    parser.add_argument("names", nargs="*", help="Only these profiles (default: all).")
    args = parser.parse_args(argv)

    names = [e["name"] for e in MODELS]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate profile names in the table")
    selected = [e for e in MODELS if not args.names or e["name"] in args.names]
    stale = []
    for entry in selected:
        profile = build_profile(entry)
        text = render(profile)
        path = MODELS_DIR / f"{entry['name']}.yaml"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
        print(f"{entry['name']:32s} {profile['params_total']:>18,}", file=sys.stderr)
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
