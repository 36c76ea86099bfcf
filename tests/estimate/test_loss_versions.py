"""The standard loss as older transformers releases run it (``versions.CHANGES``, issue 14):
:func:`vramplan.estimate.logits.loss_bytes` against the live bytes of the release's own code, reproduced line for
line with plain torch ops on CPU under the simulation's allocation tracker (512-B blocks), as
``test_loss_kinds.py`` does for the stacks' losses. The real releases run the same measurement in
``benchmarks/versions/transformers_logits.py`` (numbers pinned below).

* transformers 4.44.2 ``LlamaForCausalLM.forward`` (models/llama/modeling_llama.py:1208-1222): ``logits =
  logits.float()`` inside the forward, then ``logits[..., :-1, :].contiguous()`` and ``CrossEntropyLoss``;
* 4.48.3 ``ForCausalLMLoss`` (loss/loss_utils.py:36-44): the model returns 16-bit logits; ``logits.float()``,
  the same shifted copy, ``fixed_cross_entropy``;
* 4.49.0 and later (5.24 today): the labels are padded and shifted instead, no copy of the logits.

The HF Trainer drops the model outputs when ``compute_loss`` returns, before backward. Tolerance 0.5 %: labels and
scalars are not modelled.
"""

from __future__ import annotations

import pytest

from vramplan.estimate.logits import STANDARD, STANDARD_FP32_OUTPUT, STANDARD_SHIFTED, loss_bytes, loss_code
from vramplan.versions import modelled_versions

torch = pytest.importorskip("torch")
from vramplan.simulate.tracker import Tracker  # noqa: E402

V, H = 8192, 64
TOL = 0.005
F = torch.nn.functional


def _run(inputs, forward):
    with Tracker() as tr:
        for t in inputs:
            tr.see(t)
        base = tr.total
        tr.enter("forward")
        loss = forward()
        tr.enter("backward")
        loss.backward()
        del loss
    p = tr.phase_peaks()
    return p["forward"].bytes - base, p["backward"].bytes - base


def _step(b: int, s: int, release: str):
    torch.manual_seed(0)
    w = torch.randn(V, H, dtype=torch.bfloat16)
    x = torch.randn(b, s, H, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, V, (b, s))

    def forward():
        logits = F.linear(x, w)                                  # lm_head
        if release == "4.44.2":
            logits = logits.float()                              # modeling_llama.py:1209
            shift_logits = logits[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            return torch.nn.CrossEntropyLoss()(shift_logits.view(-1, V), shift_labels.view(-1))
        f32 = logits.float()                                     # ForCausalLMLoss: the model output stays bf16
        if release == "4.48.3":
            shift_logits = f32[..., :-1, :].contiguous()
            shift_labels = labels[..., 1:].contiguous()
            return F.cross_entropy(shift_logits.view(-1, V), shift_labels.view(-1), ignore_index=-100)
        padded = F.pad(labels, (0, 1), value=-100)               # 4.49.0+: loss_utils.py pads the labels
        return F.cross_entropy(f32.view(-1, V), padded[..., 1:].contiguous().view(-1), ignore_index=-100)

    return (w, x, labels), forward


@pytest.mark.parametrize("release, code", [("4.44.2", STANDARD_FP32_OUTPUT), ("4.48.3", STANDARD_SHIFTED),
                                           ("5.24.0", STANDARD)])
@pytest.mark.parametrize("b, s", [(1, 1024), (2, 500), (3, 300)])
def test_standard_loss_by_release_matches_its_code(release, code, b, s):
    assert loss_code("standard", modelled_versions(f"transformers={release}")) == code
    f, k = _run(*_step(b, s, release))
    lb = loss_bytes(b * s, V, H, 2, 2, code, False, seq=s)
    for what, measured, expected in (("forward", f, lb.saved + lb.forward_tmp),
                                     ("backward", k, lb.saved + lb.backward_tmp)):
        assert abs(measured - expected) <= TOL * expected, (
            f"transformers {release} {b}x{s} {what}: measured {measured:,} B, loss_bytes {expected:,} B "
            f"({(measured - expected) / expected:+.3%})")


def test_first_principles_at_batch_2():
    # 2 x 500 tokens: the fp32 logits 4TV, the shifted copy 4(T-2)V, log_softmax's fp32 output 4(T-2)V
    T, R = 1000, 998
    old = loss_bytes(T, V, H, 2, 2, STANDARD_FP32_OUTPUT, False, seq=500)
    new = loss_bytes(T, V, H, 2, 2, STANDARD, False, seq=500)
    assert (old.saved, old.forward_tmp) == (4 * R * V, 4 * T * V + 4 * R * V)
    assert (new.saved, new.forward_tmp) == (4 * T * V, 2 * T * V + 4 * T * V)
    mid = loss_bytes(T, V, H, 2, 2, STANDARD_SHIFTED, False, seq=500)
    assert mid.forward_tmp - new.forward_tmp == 4 * R * V      # the shifted copy


def test_pinned_releases_use_todays_loss():
    assert loss_code("standard", modelled_versions(None)) == STANDARD
    assert loss_code("standard", modelled_versions("transformers=4.49.0")) == STANDARD
    assert loss_code("chunked", modelled_versions("transformers=4.44.2")) != STANDARD_FP32_OUTPUT


#: ``benchmarks/versions/transformers_logits.py`` run on CPU with torch 2.13.0 under each release (2026-12-03):
#: a tiny Llama (hidden 64, 2 layers, vocab 8192), batch 2 x 1000, ``model(input_ids, labels=labels).loss`` then
#: backward, only the final norm trainable; peak bytes of new storages in forward / in backward
MEASURED = {"4.44.2": (197_022_720, 196_684_800), "4.48.3": (229_790_720, 196_684_800),
            "5.24.0": (164_385_792, 196_865_024)}


@pytest.mark.parametrize("release", sorted(MEASURED))
def test_the_real_releases_step_peaks(release):
    # the loss dominates the step (2000 x 8192 logits); the two layers' hidden-64 activations are the rest (< 0.5 %)
    code = loss_code("standard", modelled_versions(f"transformers={release}"))
    lb = loss_bytes(2000, 8192, 64, 2, 2, code, False, seq=1000)
    for measured, expected in zip(MEASURED[release], (lb.saved + lb.forward_tmp, lb.saved + lb.backward_tmp),
                                  strict=True):
        assert 0 <= measured - expected <= TOL * expected, (release, measured, expected)
