"""estimate_counters — the sweep's batch evaluator — equals estimate(..., detail=False) at every point."""

from __future__ import annotations

import re

import pytest

from vramplan.errors import VramplanError
from vramplan.estimate import estimate
from vramplan.estimate.grid import estimate_counters
from vramplan.lora import LoraConfig
from vramplan.profiles import resolve_gpu, resolve_model
from vramplan.setup import Setup

ALL_LINEAR = LoraConfig(targets=("all-linear",))
SETUPS = [
    dict(method="lora"),
    dict(method="lora", grad_ckpt=False, attn="eager", lora=LoraConfig(r=64, targets=("all-linear",))),
    dict(method="qlora", lora=ALL_LINEAR),
    dict(method="qlora", grad_ckpt=False, optim="paged-adamw-8bit", loss="chunked", lora=ALL_LINEAR),
    dict(method="full"),
    dict(method="full", grad_ckpt=False, attn="eager", optim="adafactor"),
    dict(method="full", loss="chunked", optim="adamw-8bit"),
    dict(method="full", gpus=8, strategy="zero3", offload="optimizer"),
    dict(method="full", gpus=4, strategy="zero2", grad_ckpt=False),
    dict(method="full", gpus=2, strategy="ddp"),
    dict(method="lora", gpus=4, strategy="fsdp", lora=ALL_LINEAR),
    dict(method="inference"),
    dict(method="inference", new_tokens=100, attn="eager"),
]
POINTS = [(1, 512), (4, 2048), (2, 8192), (3, 333), (16, 4096), (1, 129)]


@pytest.mark.parametrize("model", ["llama-3.2-1b", "qwen3-30b-a3b", "gemma-2-2b", "mistral-7b-v0.3", "gpt2"])
@pytest.mark.parametrize("kw", SETUPS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items() if k != "lora"))
@pytest.mark.parametrize("gpu", [None, "a100-80gb", "mi300x"])
def test_counters_equal_estimate(model, kw, gpu):
    spec = resolve_model(model).spec
    card = resolve_gpu(gpu) if gpu is not None else None
    setup = Setup.create(batch=1, seq=512, **kw)
    try:
        estimate(spec, setup, card, detail=False)
    except VramplanError as exc:     # e.g. default targets on gpt2 / a MoE model: the grid refuses alike
        with pytest.raises(type(exc), match=re.escape(str(exc))):
            estimate_counters(spec, setup, POINTS, card)
        return
    got = estimate_counters(spec, setup, POINTS, card)
    want = []
    for b, s in POINTS:
        e = estimate(spec, setup.with_(batch=b, seq=s), card, detail=False)
        want.append((e.peak_allocated_bytes, e.peak_reserved_bytes, e.device_used_bytes, e.peak_phase))
    assert [tuple(c) for c in got] == want


def test_phases_covered():
    """The cases above reach more than one phase (the comparison exercises the phase choice, not one branch)."""
    spec = resolve_model("llama-3.2-1b").spec
    phases = {c.peak_phase for kw in SETUPS for c in estimate_counters(spec, Setup.create(**kw), POINTS)}
    assert {"backward", "backward (layers)", "optimizer", "prefill"} <= phases, phases


def test_refused_structure_raises_like_estimate():
    spec = resolve_model("gpt2").spec
    setup = Setup.create(method="lora", lora=LoraConfig(targets=("q_proj",)))
    with pytest.raises(VramplanError) as want:
        estimate(spec, setup, detail=False)
    with pytest.raises(VramplanError) as got:
        estimate_counters(spec, setup, [(1, 512)])
    assert str(got.value) == str(want.value)
