"""``--loss`` kinds of the stacks (issue 14): :func:`vramplan.estimate.logits.loss_bytes` against the live bytes of
each stack's loss, reproduced here with plain torch ops that follow the framework's code line for line (the real
frameworks run in ``test_loss_kinds_frameworks.py`` when installed), on CPU under the simulation's allocation
tracker (each storage 512-B rounded, as the CUDA caching allocator counts it).

A loss's forward peak is ``saved + forward_tmp`` (+ the logits a loop keeps, :func:`logits_kept`), its backward
peak ``saved + backward_tmp`` (+ kept): the timeline adds exactly these to the rest of the step
(``timeline.py::phase_peaks``). The head's own inputs (hidden states, weight) are created before the tracker
counts. Tolerance 0.5 %: the label vectors (int64, ``T`` elements) and scalars are not modelled.
"""

from __future__ import annotations

import math

import pytest

from vramplan.estimate.logits import (
    LITGPT,
    LOSS_KINDS,
    STANDARD,
    TORCHTUNE,
    TRL,
    logits_kept,
    loss_bytes,
    loss_code,
)

torch = pytest.importorskip("torch")
from vramplan.simulate.tracker import Tracker  # noqa: E402

V, H = 8192, 64
TOL = 0.005


def _run(inputs, forward, backward):
    """Peak tracked bytes in forward and in backward, less the inputs."""
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


# ------------------------------------------------------------------------------------------ torchtune
def _torchtune_step(b: int, s: int):
    """torchtune 0.6.1: ``TransformerDecoder.chunked_output`` (modules/transformer.py:498-501) feeds
    ``CEWithChunkedOutputLoss(8)`` (modules/loss/ce_chunked_output_loss.py:35-80: per chunk
    ``F.cross_entropy(logits.float(), labels, reduction="sum")``); the recipe deletes the logits before backward
    (recipes/lora_finetune_single_device.py:656-659)."""
    torch.manual_seed(0)
    w = torch.randn(V, H, dtype=torch.bfloat16)
    x = torch.randn(b, s, H, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, V, (b, s))

    def forward():
        logits = [torch.nn.functional.linear(c, w) for c in x.chunk(8, dim=1)]
        lab = [t.reshape(-1) for t in labels.chunk(8, dim=1)]
        chunks = [c.reshape(-1, c.size(-1)) for c in logits]
        total = 0.0
        for c, t in zip(chunks, lab, strict=True):
            total += torch.nn.functional.cross_entropy(c.float(), t, reduction="sum")
        del logits, chunks                                  # del logits
        return total / labels.numel()

    return (w, x, labels), forward, lambda loss: loss.backward()


@pytest.mark.parametrize("b, s", [(1, 1024), (2, 300)])
def test_torchtune_chunked_loss_matches_its_code(b, s):
    inputs, fwd, bwd = _torchtune_step(b, s)
    f, k = _run(inputs, fwd, bwd)
    lb = loss_bytes(b * s, V, H, 2, 2, TORCHTUNE, False, seq=s)
    _close(f, lb.saved + lb.forward_tmp, "torchtune forward")
    _close(k, lb.saved + lb.backward_tmp, "torchtune backward")
    # first principles at 1 x 1024: chunks 2TV + saved fp32 4TV + one chunk's fp32 copy 4TV/8; backward 4TV + 2·4TV/8
    if (b, s) == (1, 1024):
        TV = 1024 * V
        assert (lb.saved, lb.forward_tmp, lb.backward_tmp) == (4 * TV, 2 * TV + 4 * TV // 8, 2 * 4 * TV // 8)


# ------------------------------------------------------------------------------------------ litgpt
def _litgpt_step(b: int, s: int, autocast: bool):
    """litgpt 0.5.13: ``model(input_ids, lm_head_chunk_size=128)`` -> ``[lm_head(x_i) for x_i in x.split(128, 1)]``
    (model.py:177-179); ``logits[-1] = logits[-1][..., :-1, :]`` and ``chunked_cross_entropy`` (finetune/lora.py:
    355-358; utils.py:302-330: per chunk ``cross_entropy(reduction="none")``, then ``cat(...).sum() / n``); the
    ``logits`` list is still referenced during backward."""
    torch.manual_seed(0)
    w = torch.randn(V, H, dtype=torch.bfloat16)
    x = torch.randn(b, s, H, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, V, (b, s))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else (
        lambda: torch.autocast("cpu", enabled=False))

    def forward():
        with ctx():
            logits = [torch.nn.functional.linear(x_i, w) for x_i in x.split(128, dim=1)]
            logits[-1] = logits[-1][..., :-1, :]
            tg = targets[..., 1:]
            chunks = [c.reshape(-1, c.size(-1)) for c in logits]
            tchunks = [t.reshape(-1) for t in tg.split(logits[0].size(1), dim=1)]
            losses = [torch.nn.functional.cross_entropy(c, t, reduction="none")
                      for c, t in zip(chunks, tchunks, strict=True)]
            del chunks
            loss = torch.cat(losses).sum() / tg.numel()
        return loss, logits                                # the loop keeps `logits`

    return (w, x, targets), forward, lambda st: st[0].backward()


@pytest.mark.parametrize("b, s, autocast", [(1, 1024, False), (1, 1024, True), (2, 300, True), (1, 1000, False)])
def test_litgpt_chunked_loss_matches_its_code(b, s, autocast):
    inputs, fwd, bwd = _litgpt_step(b, s, autocast)
    f, k = _run(inputs, fwd, bwd)
    lb = loss_bytes(b * s, V, H, 2, 2, LITGPT, False, autocast, seq=s)
    kept = logits_kept(b * s, V, 2, LITGPT, seq=s)
    _close(f, kept + lb.saved + lb.forward_tmp, "litgpt forward")
    _close(k, kept + lb.saved + lb.backward_tmp, "litgpt backward")
    if (b, s) == (1, 1024):
        TV, c = 1024 * V, 128 * V
        out = 4 if autocast else 2                 # log_softmax's output: fp32 under autocast, else the logits'
        assert kept == 2 * TV
        assert lb.saved == out * (TV - V)          # the label shift drops one position
        # backward visits the shifted last chunk (127 positions) first: its two gradients; then a full chunk's two,
        # with the last chunk's log-probs freed and its bf16 logits gradient kept
        assert lb.backward_tmp == max(2 * out * 127 * V, 2 * out * c - out * 127 * V + 2 * 127 * V)


# ------------------------------------------------------------------------------------------ TRL
def _trl_step(N: int, vocab: int, w_dtype, head_trainable: bool = False):
    """trl 1.16.0 ``ChunkedLogProbFunction`` (kernels/chunked_logprob.py:310-465) on its Triton path, with the
    per-row Triton kernels (``_forward_kernel``/``_backward_kernel``, which fold each tile in registers and write
    the gradient into the tile in place) as no-ops and CUDA's ``addmm(out_dtype=fp32, out=acc)``
    (``_addmm_fp32``) as an in-place accumulate: the allocations are the function's own."""
    torch.manual_seed(0)
    w = torch.randn(vocab, H, dtype=w_dtype, requires_grad=head_trainable)
    hs = torch.randn(1, N + 1, H, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, vocab, (1, N + 1))
    tok, cols, cdt = 4096, 32768, torch.bfloat16

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets):
            n_tok = hidden.shape[0]
            stats = [torch.zeros(n_tok) for _ in range(7)]          # :340-346
            mm_buf = torch.empty((min(n_tok, tok), cols), dtype=cdt)  # :347
            for t0 in range(0, n_tok, tok):
                hc = hidden[t0:t0 + tok].to(cdt)
                for v0 in range(0, weight.shape[0], cols):
                    tile = mm_buf[:hc.shape[0], :min(cols, weight.shape[0] - v0)]
                    torch.mm(hc, weight[v0:v0 + cols].to(cdt).t(), out=tile)
            log_z = stats[0] + torch.log(stats[1])                   # :378-380
            logprobs = stats[6] - log_z
            entropy = log_z - stats[2] / stats[1]
            ctx.save_for_backward(hidden, weight, targets, log_z, entropy)   # :386
            return logprobs, entropy

        @staticmethod
        def backward(ctx, g, _):
            hidden, weight, targets, log_z, entropy = ctx.saved_tensors
            grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32)    # :406-408
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32) if ctx.needs_input_grad[1] else None
            mm_buf = torch.empty((min(hidden.shape[0], tok), cols), dtype=cdt)
            g = g.float().contiguous()
            for t0 in range(0, hidden.shape[0], tok):
                hc = hidden[t0:t0 + tok].to(cdt)
                for v0 in range(0, weight.shape[0], cols):
                    wc = weight[v0:v0 + cols].to(cdt)
                    tile = mm_buf[:hc.shape[0], :wc.shape[0]]
                    torch.mm(hc, wc.t(), out=tile)
            return (grad_hidden.to(hidden.dtype),
                    grad_weight.to(weight.dtype) if grad_weight is not None else None, None)

    def forward():
        h = hs[:, :-1]                                  # trainer/utils.py:1615-1617
        lab = labels[:, 1:]
        mask = lab != -100
        lp, _ = Fn.apply(h[mask], w, lab[mask])         # :1644-1654, compact (Triton devices)
        lp = lp.new_zeros(mask.shape).masked_scatter(mask, lp)
        return -lp.sum() / mask.sum()

    return (w, hs, labels), forward, lambda loss: loss.backward()


@pytest.mark.parametrize("N, vocab, w_dtype, trains", [
    (1000, 40000, torch.bfloat16, False),     # two vocabulary tiles, N below one token tile
    (5000, 8192, torch.bfloat16, False),      # two token tiles of up to 4,096
    (1000, 40000, torch.float32, False),      # an fp32 head: the weight tile is cast per tile
    (1000, 8192, torch.bfloat16, True),       # a trained head: fp32 accumulator and its cast
])
def test_trl_fused_head_matches_its_code(N, vocab, w_dtype, trains):
    inputs, fwd, bwd = _trl_step(N, vocab, w_dtype, trains)
    f, k = _run(inputs, fwd, bwd)
    wb = 4 if w_dtype == torch.float32 else 2
    lb = loss_bytes(N + 1, vocab, H, 2, 2, TRL, False, True, 2, wb, trains, seq=N + 1)
    _close(f, lb.saved + lb.forward_tmp, "trl forward")
    # the compacted hidden states stay saved through backward: the estimate counts them as the head's saved input
    _close(k - (-(-N * H * 2 // 512) * 512), lb.saved + lb.backward_tmp, "trl backward")
    tile = min(N, 4096) * 32768 * 2                 # mm_buf is 32,768 wide whatever the vocabulary
    assert lb.forward_tmp >= tile and lb.backward_tmp >= tile + N * H * 4     # the buffer, never N x V


# ------------------------------------------------------------------------------------------ the kinds
def test_loss_codes_and_bad_kind():
    assert [loss_code(k) for k in LOSS_KINDS] == list(range(len(LOSS_KINDS)))
    assert loss_code("standard") == STANDARD == False  # noqa: E712 - the earlier bool signature still works
    with pytest.raises(ValueError, match="'fused'.*standard, chunked, torchtune-chunked"):
        loss_code("fused")


def test_stack_losses_below_standard_at_llama3_2k():
    """The stacks' losses at Llama-3-8B's vocabulary and 2,048 tokens, from the formulas: every kind's backward
    start is below the standard loss's 3 · 4TV (docs/stacks.md, Magnitudes)."""
    T, Vl, h = 2048, 128_256, 4096
    std = loss_bytes(T, Vl, h, 2, 2, STANDARD, False, seq=T)
    assert std.saved + std.backward_tmp == 3 * 4 * T * Vl
    tt = loss_bytes(T, Vl, h, 2, 2, TORCHTUNE, False, seq=T)
    assert tt.saved + tt.backward_tmp == 4 * T * Vl + 2 * 4 * T * Vl // 8           # ≈ 1,002 + 250 MiB
    lg = loss_bytes(T, Vl, h, 2, 2, LITGPT, False, seq=T)
    assert math.isclose(lg.saved + lg.backward_tmp + logits_kept(T, Vl, 2, LITGPT, seq=T),
                        2 * T * Vl + 2 * T * Vl + 2 * 2 * 128 * Vl, rel_tol=1e-3)  # ≈ 501 + 501 + 63 MiB
    tr = loss_bytes(T, Vl, h, 2, 2, TRL, False, True, 2, 2, False, seq=T)
    assert tr.backward_tmp < 200 * 2**20 and tr.forward_tmp < 200 * 2**20              # tile 128 MiB + vectors


@pytest.mark.parametrize("kw", [dict(loss=k) for k in LOSS_KINDS[2:]] + [
    dict(act_offload=True, grad_ckpt=True), dict(act_offload=True, grad_ckpt=True, stack="unsloth")])
def test_sweep_grid_equals_estimate(kw):
    """The sweep's evaluator and the estimator read the same terms (grid.py): counters equal at every point."""
    from vramplan.estimate import estimate
    from vramplan.estimate.grid import estimate_counters
    from vramplan.profiles import resolve_model
    from vramplan.setup import Setup

    spec = resolve_model("qwen2.5-0.5b").spec
    s = Setup.create(method="lora", **kw)
    points = [(2, 1000), (1, 4096)]
    for (b, q), c in zip(points, estimate_counters(spec, s, points), strict=True):
        e = estimate(spec, s.with_(batch=b, seq=q))           # detail=True: the components sum to the peak
        assert (c.peak_allocated_bytes, c.peak_phase) == (e.peak_allocated_bytes, e.peak_phase)
