"""Extrapolating from a few simulated layers reproduces a full-depth simulation exactly."""

from __future__ import annotations

import pytest
from sim_helpers import lora_all, spec_of, tiny_spec

from vramplan.errors import SetupError
from vramplan.lora import LoraConfig
from vramplan.setup import Setup
from vramplan.simulate import simulate
from vramplan.simulate.extrapolate import layer_signatures, period, plan_depths


@pytest.mark.parametrize("kw", [
    dict(method="lora", seq=64),
    dict(method="lora", seq=64, grad_ckpt=True, attn="eager", batch=2),
    dict(method="qlora", seq=64),
    dict(method="full", seq=32),
], ids=["lora", "lora-ckpt-eager", "qlora", "full"])
def test_extrapolated_equals_all_layers_on_a_small_model(kw):
    spec = tiny_spec(layers=7)
    setup = Setup.create(lora=lora_all(8) if kw["method"] != "full" else None, **kw)
    fast = simulate(spec, setup)
    full = simulate(spec, setup, sim_layers="all")
    assert fast.extra["simulation"]["layers"] == [2, 3] and full.extra["simulation"]["layers"] == "all"
    assert fast.phases == full.phases
    assert fast.peak_phase == full.peak_phase
    assert fast.breakdown_bytes == full.breakdown_bytes
    assert (fast.params_total, fast.params_trainable) == (full.params_total, full.params_trainable)
    assert fast.extra["simulation"]["saved_per_layer_bytes"] == full.extra["simulation"]["saved_per_layer_bytes"]


def test_alternating_layers_extrapolate_by_period():
    """Gemma-2 alternates sliding and full attention (config layer_types): period 2, simulated at 4 and 6."""
    spec = spec_of("gemma-2-9b", layers=8)
    setup = Setup.create(method="lora", attn="eager", seq=32, lora=LoraConfig(r=8))
    assert period(layer_signatures(spec, setup)) == 2
    assert plan_depths(spec, setup).depths == (4, 6)
    fast, full = simulate(spec, setup), simulate(spec, setup, sim_layers="all")
    assert fast.phases == full.phases and fast.breakdown_bytes == full.breakdown_bytes


def test_layers_that_do_not_repeat_are_simulated_in_full():
    spec = tiny_spec(layers=6)
    setup = Setup.create(method="lora", lora=LoraConfig(r=8, targets=("q_proj",), layers_to_transform=(0, 1, 4)))
    plan = plan_depths(spec, setup)
    assert plan.depths == (6,) and "do not repeat" in plan.reason


def test_sim_layers_must_cover_two_periods():
    with pytest.raises(SetupError, match="--sim-layers 1 must be a multiple"):
        plan_depths(tiny_spec(layers=6), Setup.create(method="full"), 1)
    assert plan_depths(tiny_spec(layers=6), Setup.create(method="full"), 3).depths == (3, 4)


@pytest.mark.slow
def test_llama3_8b_extrapolated_equals_full_depth():
    spec = spec_of("llama-3-8b", layers=None)
    setup = Setup.create(method="lora", seq=2048, lora=lora_all())
    fast, full = simulate(spec, setup), simulate(spec, setup, sim_layers="all")
    assert fast.peak_allocated_bytes == full.peak_allocated_bytes
    assert fast.breakdown_bytes == full.breakdown_bytes
