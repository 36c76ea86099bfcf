"""estimate(..., detail=False) — the sweep's fast path — gives the same counters, phase and fit."""

from __future__ import annotations

import pytest

from vramplan.estimate import estimate
from vramplan.lora import LoraConfig
from vramplan.profiles import resolve_gpu, resolve_model
from vramplan.setup import Setup

SETUPS = [
    dict(method="qlora", lora=LoraConfig(targets=("all-linear",))),
    dict(method="lora", lora=LoraConfig(r=64, targets=("all-linear",)), attn="eager"),
    dict(method="full"),
    dict(method="full", gpus=8, strategy="zero3", offload="optimizer"),
    dict(method="lora", gpus=4, strategy="fsdp", lora=LoraConfig(targets=("all-linear",))),
    dict(method="inference"),
    dict(method="qlora", optim="paged-adamw-8bit", loss="chunked", lora=LoraConfig(targets=("all-linear",))),
]


@pytest.mark.parametrize("model", ["llama-3-8b", "qwen3-30b-a3b", "gemma-2-2b", "phi-3-mini-4k"])
@pytest.mark.parametrize("kw", SETUPS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items() if k != "lora"))
def test_fast_path_equals_detailed(model, kw):
    spec = resolve_model(model).spec
    gpu = resolve_gpu("a100-80gb")
    for batch, seq in ((1, 512), (4, 2048), (2, 8192)):
        setup = Setup.create(batch=batch, seq=seq, **kw)
        a = estimate(spec, setup, gpu)
        b = estimate(spec, setup, gpu, detail=False)
        assert (a.peak_allocated_bytes, a.peak_reserved_bytes, a.device_used_bytes, a.peak_phase, a.fit) == \
            (b.peak_allocated_bytes, b.peak_reserved_bytes, b.device_used_bytes, b.peak_phase, b.fit)
        assert a.components and (b.components == () or setup.method == "inference")
