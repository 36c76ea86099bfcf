"""Per-layer activation coefficients from 1- and 2-layer simulations, for the analytic path."""

from __future__ import annotations

import pytest
from sim_helpers import lora_all, tiny_spec

from vramplan.dtypes import BYTES
from vramplan.profiles import cache_dir
from vramplan.setup import Setup
from vramplan.simulate import calibrated_layer_bytes
from vramplan.simulate.calibrate import calibrate


def _analytic_coefficients(spec, setup) -> tuple[int, int, int]:
    from vramplan.estimate.structure import static_structure

    tr = static_structure(spec, setup.with_(batch=1, seq=1)).layer_traces[1]
    return (sum(s.size.per_token * BYTES[s.dtype] for s in tr.saved),
            sum(s.size.per_bss * BYTES[s.dtype] for s in tr.saved),
            sum(s.size.const * BYTES[s.dtype] for s in tr.saved))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_known_family_coefficients_equal_the_analytic_ones(attn):
    spec = tiny_spec()
    setup = Setup.create(method="lora", attn=attn, lora=lora_all(8))
    cal = calibrate(spec, setup, use_cache=False)
    assert (cal.per_token_bytes, cal.per_bss_bytes, cal.const_bytes) == _analytic_coefficients(spec, setup)
    assert (cal.per_bss_bytes > 0) == (attn == "eager"), "only eager attention saves seq² scores"


def test_unknown_family_is_calibrated_and_predicts_another_length():
    """olmo2 is not in the analytic family tables (q/k norms over the whole projection)."""
    from vramplan.shapes.from_config import FAMILIES
    from vramplan.simulate.step import run

    spec = tiny_spec("olmo2", num_key_value_heads=4)
    assert spec.model_type not in FAMILIES
    setup = Setup.create(method="full")
    cal = calibrate(spec, setup, use_cache=False)
    seq = 96
    measured = run(spec, setup.with_(seq=seq), 2).saved_per_layer_raw[1]
    assert cal.const_bytes + cal.per_token_bytes * seq + cal.per_bss_bytes * seq * seq == measured


def test_calibration_is_cached_per_config(monkeypatch):
    spec = tiny_spec(layers=3)
    setup = Setup.create(method="full", precision="bf16-true")
    first = calibrated_layer_bytes(spec, setup)
    assert first is not None and first[0] > 0
    files = list((cache_dir() / "calibration").glob("*.json"))
    assert files, "written under vramplan.profiles.cache_dir()/calibration"

    def no_run(*a, **k):
        raise AssertionError("a cached calibration must not simulate again")

    monkeypatch.setattr("vramplan.simulate.step.run", no_run)
    assert calibrated_layer_bytes(spec, setup.with_(batch=4, seq=4096)) == first, "batch/seq are not in the key"


def test_none_when_the_model_cannot_be_simulated():
    spec = tiny_spec("jetmoe", num_key_value_heads=4, kv_channels=32, num_local_experts=4, num_experts_per_tok=2)
    assert calibrated_layer_bytes(spec, Setup.create(method="full")) is None
    assert calibrated_layer_bytes(tiny_spec(), Setup.create(method="inference")) is None
