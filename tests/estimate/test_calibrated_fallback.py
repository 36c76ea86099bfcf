"""Layers the analytic replay cannot handle fall back to coefficients calibrated by simulation."""

from __future__ import annotations

import pytest

from vramplan.errors import SimulationError
from vramplan.estimate import estimate, states
from vramplan.estimate import structure as S
from vramplan.estimate.graph import Tracer, tok
from vramplan.estimate.layers import LayerInfo, Program, UnknownLayout
from vramplan.lora import LoraConfig
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 256,
        "max_position_embeddings": 512, "tie_word_embeddings": False}


def test_unknown_layout_uses_the_simulation_calibration(monkeypatch):
    spec = spec_from_config(TINY, name="tiny-unknown")
    setup = Setup.create(method="lora", lora=LoraConfig(r=8, targets=("all-linear",)), batch=2, seq=256)
    exact = estimate(spec, setup)
    states.clear_caches()

    def unknown(*args, **kwargs):
        raise UnknownLayout("layer 0 has no 'attn_q' linear")

    monkeypatch.setattr(S, "trace_layer", unknown)
    spec2 = spec_from_config(TINY, name="tiny-unknown")
    calibrated = estimate(spec2, setup)
    a = sum(c.bytes for c in exact.components if c.name.startswith("activations/") and c.name != "activations/head")
    b = sum(c.bytes for c in calibrated.components if c.name.startswith("activations/")
            and c.name != "activations/head")
    # the calibration prices every layer like a middle one (layer 0 with frozen embeddings saves a little less)
    assert abs(a - b) <= 0.06 * a, (a, b)
    assert "calibrated" in " ".join(c.formula for c in calibrated.components)


def test_unsimulatable_unknown_layout_is_one_clear_error(monkeypatch):
    spec = spec_from_config(TINY, name="tiny-unknown-2")
    setup = Setup.create(method="lora", lora=LoraConfig(r=8, targets=("all-linear",)), seq=64)
    monkeypatch.setattr(S, "trace_layer",
                        lambda *a, **k: (_ for _ in ()).throw(UnknownLayout("layer 0 has no 'attn_q' linear")))

    def fail(*a, **k):
        raise SimulationError("cannot simulate: aten::nonzero needs real values")

    import vramplan.simulate.calibrate as C

    monkeypatch.setattr(C, "calibrate", fail)
    with pytest.raises(SimulationError) as e:
        estimate(spec, setup)
    assert "attn_q" in str(e.value) and "nonzero" in str(e.value) and "\n" not in str(e.value)


def test_a_layer_without_a_q_projection_is_an_unknown_layout():
    """The replay itself says when a layout is unknown: a layer whose modules carry no q (or fused qkv) role."""
    spec = spec_from_config(TINY, name="tiny-unknown-3")
    setup = Setup.create(method="full", seq=64)
    tr = Tracer(None)
    x = tr.external("input", tok(spec.hidden_size), "fp32", True)
    with pytest.raises(UnknownLayout, match=r"layer 3 has no 'attn_q' linear .*its roles: none"):
        Program(spec, setup).layer(tr, x, LayerInfo(3))


def test_a_bug_in_the_replay_is_not_mistaken_for_an_unknown_family(monkeypatch):
    """A KeyError (or any other exception) from inside the replay is a bug: it propagates, unmasked by the
    calibration fallback (which would otherwise hide it behind a simulation)."""
    spec = spec_from_config(TINY, name="tiny-bug")
    setup = Setup.create(method="lora", lora=LoraConfig(r=8, targets=("all-linear",)), seq=64)
    states.clear_caches()

    def buggy(self, *a, **k):
        raise KeyError("a typo in a dict lookup")

    import vramplan.simulate.calibrate as C

    monkeypatch.setattr(C, "calibrate", lambda *a, **k: pytest.fail("the fallback must not run for a bug"))
    monkeypatch.setattr(Program, "linear", buggy)
    with pytest.raises(KeyError, match="a typo"):
        estimate(spec, setup)
    monkeypatch.setattr(Program, "linear", lambda self, *a, **k: (_ for _ in ()).throw(AttributeError("oops")))
    with pytest.raises(AttributeError, match="oops"):
        estimate(spec_from_config(TINY, name="tiny-bug-2"), setup)
