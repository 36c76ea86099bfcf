"""Fixtures for the profiler tests: a tiny llama-shaped config (2 layers, hidden 64, vocab 256)."""

from __future__ import annotations

import json

import pytest

TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 256, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "bfloat16"}


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-llama") / "config.json"
    path.write_text(json.dumps(TINY_LLAMA))
    return str(path)


@pytest.fixture
def no_nvml(monkeypatch):
    """NVML as on a machine without an NVIDIA driver, whatever this machine has."""
    import pynvml

    def missing() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
