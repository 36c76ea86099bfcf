"""Every model id the corpus configs name resolves offline to a bundled profile (issue 15, item 5), or is listed
here with the reason it does not.

The corpus (``tests/data/configs``) holds example configs published by LLaMA-Factory, axolotl, ms-swift,
torchtune and TRL; ``expected.yaml`` records the model each one names. A CI gate reading those files offline must
know the model, not stop on "not bundled".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vramplan.errors import UnknownModelError
from vramplan.profiles import resolve_model

EXPECTED = Path(__file__).resolve().parents[1] / "data" / "configs" / "expected.yaml"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

#: ids that do not resolve to a bundled profile, and why
NOT_BUNDLED = {
    "ISTA-DASLab/Meta-Llama-3-8B-Instruct-AQLM-2Bit-1x16": "pre-quantized AQLM checkpoint (issue 16)",
    "TechxGenus/Meta-Llama-3-8B-Instruct-AWQ": "pre-quantized AWQ checkpoint (issue 16)",
    "TechxGenus/Meta-Llama-3-8B-Instruct-GPTQ": "pre-quantized GPTQ checkpoint (issue 16)",
    "Skywork/Skywork-Reward-V2-Qwen3-8B": "a reward model (sequence classification); its stage is not modelled",
    "alignment-handbook/zephyr-7b-sft-qlora": "a LoRA adapter repository, not a base model",
    # litgpt 0.5.13 config.py gives vocab 32768 for mistralai's base and Instruct files (bundled: mixtral-8x22b);
    # no source here shows the community conversion's own config.json, 32000 or 32768
    "mistral-community/Mixtral-8x22B-v0.1": "vocab_size of the community conversion (32000 or 32768) not confirmed "
                                            "offline; mistralai/Mixtral-8x22B-v0.1 is bundled as mixtral-8x22b",
}

#: ids first bundled for the corpus, and the profile each is by its model card (same shapes)
NEW_IDS = {
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "tinyllama-1.1b",
    "Qwen/Qwen2-1.5B-Instruct": "qwen2-1.5b",
    "Qwen/Qwen3-4B-Instruct-2507": "qwen3-4b-instruct-2507",
    "HuggingFaceTB/SmolLM2-1.7B": "smollm2-1.7b",
    "google/gemma-7b": "gemma-7b",
    "casperhansen/llama-3-70b-fp16": "llama-3-70b",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistral-7b-v0.2",
}


def _corpus_ids() -> list[str]:
    ids: set[str] = set()

    def walk(x: object) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "model" and isinstance(v, str) and HUB_ID.fullmatch(v) and not v.startswith("models/"):
                    ids.add(v)
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(yaml.safe_load(EXPECTED.read_text(encoding="utf-8")))
    return sorted(ids)


CORPUS_IDS = _corpus_ids()


def test_corpus_names_the_models_listed_here():
    assert len(CORPUS_IDS) >= 40
    assert set(NOT_BUNDLED) <= set(CORPUS_IDS) | {"mistralai/Mistral-7B-Instruct-v0.2"}
    assert set(NEW_IDS) <= set(CORPUS_IDS) | {"mistralai/Mistral-7B-Instruct-v0.2"}


@pytest.mark.parametrize("model_id", [i for i in CORPUS_IDS if i not in NOT_BUNDLED])
def test_corpus_model_resolves_offline(model_id, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = resolve_model(model_id)
    assert r.origin == "profile", f"{model_id} resolved from {r.origin} {r.source}"
    if model_id in NEW_IDS:
        assert r.name == NEW_IDS[model_id]


@pytest.mark.parametrize("model_id", sorted(NOT_BUNDLED))
def test_unbundled_corpus_model_is_a_one_line_error_offline(model_id, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError) as e:
        resolve_model(model_id)
    assert "\n" not in str(e.value) and model_id in str(e.value)
