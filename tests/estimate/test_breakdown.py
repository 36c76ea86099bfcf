"""The allocated components itemize the peak: they sum to it because each is a real part, never because a
balancing entry makes up the difference (there is no ``buffers/other``)."""

from __future__ import annotations

import pytest

from vramplan.estimate import estimate
from vramplan.estimate import estimator as M
from vramplan.estimate.result import BreakdownError
from vramplan.estimate.structure import LayerTrace
from vramplan.lora import LoraConfig
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 256,
        "max_position_embeddings": 512, "tie_word_embeddings": False}


def test_a_sum_that_is_off_names_the_difference():
    comps = {"weights/base": [1_000, "", "allocated"], "overhead/allocator": [64, "", "reserved"]}
    with pytest.raises(BreakdownError, match=r"sum to 1,000 B, the peak is 1,512 B \(difference \+512 B\)"):
        M.check_breakdown(comps, 1_512, "forward")
    M.check_breakdown(comps, 1_000, "forward")       # the reserved entry is not part of the allocated peak


def test_an_itemization_that_drifts_from_the_timeline_raises(monkeypatch):
    """Without checkpointing the saved activations are itemized by category (LayerTrace.by_category) while the
    peak adds LayerTrace.saved_at: one extra 512-B block per category must be caught, not balanced."""
    spec = spec_from_config(TINY, name="tiny-breakdown")
    setup = Setup.create(method="lora", lora=LoraConfig(r=8, targets=("all-linear",)), grad_ckpt=False,
                         batch=2, seq=64)
    e = estimate(spec, setup)
    assert e.peak_phase in ("forward", "backward"), e.peak_phase
    assert sum(c.bytes for c in e.components if c.counter == "allocated") == e.peak_allocated_bytes
    assert all(c.name != "buffers/other" for c in e.components)
    real = LayerTrace.by_category
    monkeypatch.setattr(LayerTrace, "by_category",
                        lambda self, T, bss: {k: v + 512 for k, v in real(self, T, bss).items()})
    with pytest.raises(BreakdownError, match="difference"):
        estimate(spec, setup.with_(batch=3))
