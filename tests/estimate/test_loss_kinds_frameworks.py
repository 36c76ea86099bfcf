"""The stacks' losses, run from the frameworks themselves (torchtune 0.6.1, litgpt 0.5.13, trl 1.16.0) on CPU, against
:func:`vramplan.estimate.logits.loss_bytes` — the same comparisons as ``test_loss_kinds.py``, whose plain-torch
copies run in CI. Each test skips when its framework is not installed (CI pins none of them); run them in a venv
with ``pip install torch==2.13.0 torchtune==0.6.1 torchao==0.10.0 litgpt==0.5.13 trl==1.16.0`` and this
checkout on ``PYTHONPATH``.
"""

from __future__ import annotations

import types

import pytest

from vramplan.estimate.logits import LITGPT, TORCHTUNE, TRL, logits_kept, loss_bytes

torch = pytest.importorskip("torch")
from vramplan.simulate.tracker import Tracker  # noqa: E402

V, H = 8192, 64
TOL = 0.005


def _run(inputs, forward, backward):
    with Tracker() as tr:
        for t in inputs:
            tr.see(t)
        base = tr.total
        tr.enter("forward")
        state = forward()
        tr.enter("backward")
        backward(state)
        del state
    p = tr.phase_peaks()
    return p["forward"].bytes - base, p["backward"].bytes - base


def _close(measured: int, expected: int, what: str) -> None:
    assert abs(measured - expected) <= TOL * expected, (
        f"{what}: measured {measured:,} B, loss_bytes gives {expected:,} B ({(measured - expected) / expected:+.3%})")


@pytest.mark.parametrize("b, s", [(1, 1024), (2, 300)])
def test_torchtune_ce_with_chunked_output_loss(b, s):
    pytest.importorskip("torchao")
    tt_loss = pytest.importorskip("torchtune.modules.loss")
    tt_transformer = pytest.importorskip("torchtune.modules.transformer")
    torch.manual_seed(0)
    head = torch.nn.Linear(H, V, bias=False, dtype=torch.bfloat16).requires_grad_(False)
    x = torch.randn(b, s, H, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, V, (b, s))
    loss_fn = tt_loss.CEWithChunkedOutputLoss(num_output_chunks=8)
    decoder = types.SimpleNamespace(output=head, num_output_chunks=loss_fn.num_output_chunks)

    def forward():
        logits = tt_transformer.TransformerDecoder.chunked_output(decoder, x)   # the model's chunked output
        loss = loss_fn(logits, labels)
        del logits                                     # recipes/lora_finetune_single_device.py:659
        return loss

    f, k = _run((head.weight, x, labels), forward, lambda loss: loss.backward())
    lb = loss_bytes(b * s, V, H, 2, 2, TORCHTUNE, False, seq=s)
    _close(f, lb.saved + lb.forward_tmp, "torchtune forward")
    _close(k, lb.saved + lb.backward_tmp, "torchtune backward")


@pytest.mark.parametrize("b, s, autocast", [(1, 1024, False), (2, 300, True)])
def test_litgpt_chunked_cross_entropy(b, s, autocast):
    litgpt_utils = pytest.importorskip("litgpt.utils")
    litgpt_model = pytest.importorskip("litgpt.model")
    from litgpt import Config

    torch.manual_seed(0)
    # the real GPT head path: GPT.forward(..., lm_head_chunk_size=128) ends with the chunked lm_head (model.py:177-179)
    cfg = Config(n_layer=1, n_head=2, n_embd=H, block_size=s, vocab_size=V, padded_vocab_size=V, bias=False)
    model = litgpt_model.GPT(cfg).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(b, s, H, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, V, (b, s))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)

    def forward():
        with ctx:
            logits = [model.lm_head(x_i) for x_i in x.split(128, dim=1)]      # model.py:179 (no softcapping)
            logits[-1] = logits[-1][..., :-1, :]                             # finetune/lora.py:356
            loss = litgpt_utils.chunked_cross_entropy(logits, targets[..., 1:])
        return loss, logits                                                  # `logits` lives through backward

    f, k = _run((model.lm_head.weight, x, targets), forward, lambda st: st[0].backward())
    lb = loss_bytes(b * s, V, H, 2, 2, LITGPT, False, autocast, seq=s)
    kept = logits_kept(b * s, V, 2, LITGPT, seq=s)
    _close(f, kept + lb.saved + lb.forward_tmp, "litgpt forward")
    _close(k, kept + lb.saved + lb.backward_tmp, "litgpt backward")


@pytest.mark.parametrize("N, vocab", [(1000, 40000), (5000, 8192)])
def test_trl_chunked_logprob_function(N, vocab, monkeypatch):
    kernels = pytest.importorskip("trl.kernels.chunked_logprob")
    trl_utils = pytest.importorskip("trl.trainer.utils")
    # the Triton path's memory: the per-row kernels fold each tile in registers and write the gradient in place;
    # CUDA's addmm(out_dtype=fp32, out=acc) accumulates without copies (chunked_logprob.py:52-62)
    monkeypatch.setattr(kernels, "_forward_tile", lambda *a, **k: None)
    monkeypatch.setattr(kernels, "_backward_tile", lambda *a, **k: None)
    monkeypatch.setattr(kernels, "_addmm_fp32", lambda acc, a, b: None)
    torch.manual_seed(0)
    w = torch.randn(vocab, H, dtype=torch.bfloat16)
    hs = torch.randn(1, N + 1, H, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, vocab, (1, N + 1))
    saved: dict[int, int] = {}

    def pack(t):
        if t is not w:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def forward():
        h, lab = hs[:, :-1], labels[:, 1:]                      # trainer/utils.py:1615-1617
        mask = lab != -100
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lp, *_ = kernels.ChunkedLogProbFunction.apply(   # :1644-1654 with compact=True (Triton devices)
                h[mask], w, None, lab[mask], 1.0, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                ("log_probs", "entropy", "is_top1"))
        lp = lp.new_zeros(mask.shape).masked_scatter(mask, lp)
        return -lp.sum() / mask.sum()

    f, k = _run((w, hs, labels), forward, lambda loss: loss.backward())
    lb = loss_bytes(N + 1, vocab, H, 2, 2, TRL, False, True, 2, 2, False, seq=N + 1)
    # saved: the compacted hidden states, targets (int64), log_z and entropy (fp32), the bool mask h[mask] keeps
    # for its backward — never N x V
    assert sum(saved.values()) == N * H * 2 + 8 * N + 2 * 4 * N + N
    _close(f, lb.saved + lb.forward_tmp, "trl forward")
    _close(k, lb.saved + lb.backward_tmp, "trl backward")      # the compacted copy lives through backward
