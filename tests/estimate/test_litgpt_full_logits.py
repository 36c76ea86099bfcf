"""LitGPT full fine-tuning's logits and loss (``--loss litgpt-full``, issue 14): litgpt 0.5.13 ``finetune/full.py:282-284``
makes one batch × seq × vocab logits tensor, kept alive by the loop, and ``chunked_cross_entropy`` flattens the
shifted logits (a copy at batch > 1) into 128-row chunks; backward concatenates the chunk gradients and builds the
zero-filled gradient of every position.

The pinned peaks were measured on CPU with torch 2.13.0 and litgpt 0.5.13 by
``benchmarks/frameworks/litgpt_full_logits.py`` (the model's ``lm_head`` on bf16 hidden states, vocab 8,192, hidden
64, vramplan's allocation tracker: every storage rounded to 512 B); the reproduction at the end runs litgpt itself
and skips without it (CI does not install it).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from vramplan.dtypes import alloc
from vramplan.estimate.estimator import estimate
from vramplan.estimate.logits import (
    LITGPT,
    LITGPT_FULL,
    LOSS_KINDS,
    STANDARD_FP32_OUTPUT,
    STANDARD_SHIFTED,
    litgpt_full_loss_bytes,
    logits_kept,
    loss_bytes,
    loss_code,
)
from vramplan.profiles import resolve_model
from vramplan.setup import Setup

V, H = 8192, 64
#: (batch, seq, autocast) -> (forward peak, backward peak) above the head weight, hidden states and targets, bytes
MEASURED = {
    (1, 1024, False): (33_549_312, 50_316_288),
    (2, 300, False): (29_438_464, 29_459_456),
    (4, 257, False): (50_416_640, 50_463_744),
    (2, 300, True): (42_051_584, 36_413_440),
    (1, 1024, True): (54_468_608, 58_627_072),
}
#: the loss's own small vectors (per-row fp32 losses, their concatenation, the mask count) are not modelled
TOL = 0.001


def _estimated(b: int, s: int, autocast: bool) -> tuple[int, int]:
    lb = loss_bytes(b * s, V, H, 2, 2, LITGPT_FULL, False, autocast, seq=s)
    kept = logits_kept(b * s, V, 2, LITGPT_FULL, seq=s)
    return kept + lb.saved + lb.forward_tmp, kept + lb.saved + lb.backward_tmp


@pytest.mark.parametrize("case", sorted(MEASURED))
def test_litgpt_full_loss_matches_litgpt_on_cpu(case):
    for what, measured, est in zip(("forward", "backward"), MEASURED[case], _estimated(*case), strict=True):
        assert abs(measured - est) <= TOL * est, f"{case} {what}: measured {measured:,} B, estimated {est:,} B"


def test_litgpt_full_is_a_loss_kind():
    assert loss_code("litgpt-full") == LITGPT_FULL
    assert LITGPT_FULL not in range(len(LOSS_KINDS))
    with pytest.raises(ValueError, match="litgpt-full"):        # the choices the error lists
        loss_code("litgpt-ful")
    # the transformers-release variants of the standard loss stay distinct codes
    assert len({LITGPT_FULL, STANDARD_SHIFTED, STANDARD_FP32_OUTPUT}) == 3
    assert loss_bytes(2048, V, H, 2, 2, LITGPT_FULL, False, seq=1024) == litgpt_full_loss_bytes(2, 1024, V, 2)


def test_the_whole_logits_tensor_is_kept():
    """One b x s x V tensor, the last position included (the LoRA script's chunks hold the same positions)."""
    assert logits_kept(2 * 300, V, 2, LITGPT_FULL, seq=300) == alloc(2 * 300 * V * 2)


def test_first_principles_at_batch_1_and_2():
    """Batch 1: the shifted slice is a view, saved = the bf16 log-probs of the 1,023 rows, and the backward ends with
    the concatenated chunk gradients (R·V·2) and the zero-filled b·s·V·2 gradient. Batch 2: the reshape copy of all
    598 shifted rows joins the forward."""
    b1 = litgpt_full_loss_bytes(1, 1024, V, 2)
    rows = 1023
    assert b1.saved == 7 * alloc(128 * V * 2) + alloc(127 * V * 2)
    assert b1.forward_tmp == 0
    assert b1.saved + b1.backward_tmp == alloc(rows * V * 2) + alloc(1024 * V * 2)
    b2 = litgpt_full_loss_bytes(2, 300, V, 2)
    assert b2.forward_tmp == alloc(598 * V * 2)


def test_where_the_full_script_differs_from_the_lora_script():
    """Against the LoRA scripts' 128-token head chunks (--loss litgpt-chunked), at batch 2 x 1,024, bf16-true: the
    forward gains the copy of every shifted logit (LoRA: of the last chunk only) and backward's end the two
    R·V-sized gradients."""
    full = litgpt_full_loss_bytes(2, 1024, V, 2)
    lora = loss_bytes(2048, V, H, 2, 2, LITGPT, False, seq=1024)
    assert full.forward_tmp - lora.forward_tmp == alloc(2 * 1023 * V * 2) - alloc(2 * 127 * V * 2)
    assert full.saved + full.backward_tmp > lora.saved + lora.backward_tmp


def test_llama3_8b_full_fine_tuning_with_the_litgpt_full_loss():
    """The estimator takes the kind through Setup.loss (passed explicitly here: ``--loss litgpt-full`` is the lead's
    declaration). Llama-3-8B, LitGPT full fine-tuning, 2 x 2048: the forward peak holds the 1 GB reshape copy."""
    spec = resolve_model("llama-3-8b").spec
    s = Setup.create(method="full", stack="litgpt", seq=2048, batch=2)
    chunked, full = (estimate(spec, replace(s, loss=k)) for k in ("litgpt-chunked", "litgpt-full"))
    # fp32 logits: Fabric's _FabricModule casts the model's output to fp32 (lightning 2.6.6 fabric/wrappers.py:138)
    lb_c = loss_bytes(4096, spec.vocab_size, spec.hidden_size, 4, 2, LITGPT, False, s.autocast, seq=2048)
    lb_f = litgpt_full_loss_bytes(2, 2048, spec.vocab_size, 4, s.autocast)
    assert full.phases["forward"] - chunked.phases["forward"] == \
        (lb_f.saved + lb_f.forward_tmp) - (lb_c.saved + lb_c.forward_tmp)
    assert {c.name: c.bytes for c in full.components}.get("logits/kept_by_loop") == \
        alloc(4096 * spec.vocab_size * 4)


# ------------------------------------------------------------------ reproduction (litgpt installed)
@pytest.mark.parametrize("case", [(2, 300, False), (1, 1024, True)])
def test_reproduce_with_litgpt(case):
    pytest.importorskip("torch")
    pytest.importorskip("litgpt")
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[2] / "benchmarks" / "frameworks" / "litgpt_full_logits.py"
    spec = importlib.util.spec_from_file_location("litgpt_full_logits", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.measure(*case)
    assert (m["forward_peak"], m["backward_peak"]) == MEASURED[case]
