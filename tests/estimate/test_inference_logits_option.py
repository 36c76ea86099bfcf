"""``--logits all``: an inference plan of a plain forward (``logits_to_keep=0``) holds every position's logits."""

from __future__ import annotations

from vramplan.estimate import estimate
from vramplan.profiles import resolve_model
from vramplan.setup import Setup


def test_all_positions_logits_are_batch_x_prompt_x_vocab_in_the_compute_dtype():
    spec = resolve_model("qwen2.5-0.5b").spec
    last = estimate(spec, Setup.create(method="inference", seq=1024, precision="bf16-true"))
    full = estimate(spec, Setup.create(method="inference", seq=1024, precision="bf16-true", logits="all"))
    comp = {c.name: c.bytes for c in full.components}
    # first principles: the lm_head output of 1,024 positions x 151,936 vocab in bf16, 512-B aligned
    assert comp["logits/all_positions"] >= 1024 * spec.vocab_size * 2
    assert "logits/last_token" not in comp
    assert full.peak_allocated_bytes > last.peak_allocated_bytes + 1024 * spec.vocab_size * 2 - 64 * 2**20
