"""A plan on a card that cannot run it as asked says so (issue 18): bf16 and FlashAttention 2 need compute 8.0+
(transformers TrainingArguments refuses bf16 without is_torch_bf16_gpu_available(); flash-attn 2 supports Ampere,
Ada and Hopper), so a T4 (Turing, 7.5) or a V100 (Volta, 7.0) plan with them warns instead of a silent FITS."""

from __future__ import annotations

import pytest

from vramplan.estimate import estimate
from vramplan.profiles import resolve_gpu, resolve_model
from vramplan.setup import setup_from_options

SPEC = resolve_model("llama-3.2-1b").spec


def _warnings(gpu: str, **options) -> list[str]:
    return list(estimate(SPEC, setup_from_options({"method": "lora", **options}), resolve_gpu(gpu)).warnings)


@pytest.mark.parametrize("gpu", ["t4", "v100-16gb"])
def test_bf16_and_flash_before_ampere_warn(gpu):
    w = _warnings(gpu, attn="flash")
    assert any("has no bf16" in x for x in w) and any("FlashAttention 2 needs Ampere" in x for x in w)


def test_fp16_sdpa_on_a_t4_says_nothing():
    assert _warnings("t4", precision="fp16-mixed") == []


@pytest.mark.parametrize("gpu", ["a100-80gb", "rtx-4090", "24GB"])
def test_ampere_and_newer_or_a_bare_size_say_nothing(gpu):
    assert _warnings(gpu, attn="flash") == []
