"""The allocation tracker: 512-B rounding, frees through weakrefs, views, phases and the replay."""

from __future__ import annotations

import torch

from vramplan.simulate.kernels import workspace_for
from vramplan.simulate.tracker import Tracker


def test_storage_rounded_to_512_bytes_like_the_caching_allocator():
    t = Tracker()
    with t:
        a = torch.empty(1, dtype=torch.uint8, device="meta")       # 1 B -> one 512-B block
        b = torch.empty(129, dtype=torch.float32, device="meta")   # 516 B -> 1024
    assert [r.nbytes for r in t.records] == [512, 1024]
    assert [r.raw_nbytes for r in t.records] == [1, 516]
    assert t.total == 1536
    del a, b


def test_views_and_in_place_results_share_their_base_storage():
    t = Tracker()
    with t:
        x = torch.empty(1024, dtype=torch.bfloat16, device="meta")
        v = x.view(32, 32).t()
        x.mul_(2)
        y = x[:512]
    assert len(t.records) == 1 and t.total == 2048, "a view or an in-place op is no new allocation"
    del x, v, y


def test_a_dying_storage_is_freed_and_the_peak_remembers():
    t = Tracker()
    with t:
        t.enter("forward")
        a = torch.empty(4096, device="meta")               # 16 KiB
        b = torch.empty(4096, device="meta")
        del a
        c = torch.empty(1024, device="meta")               # 4 KiB
    assert t.total == 16384 + 4096
    peaks = t.phase_peaks()
    assert peaks["forward"].bytes == 2 * 16384, "the peak is when a and b were both alive"
    snap = t.snapshot(peaks["forward"].event)
    assert snap.total == 32768 and len(snap.records) == 2
    del b, c
    assert t.total == 0


def test_flash_attention_backward_workspace_is_counted_while_the_op_runs():
    """flash_api.cpp::mha_bwd: softmax_d (b, h, s128) fp32 + dq_accum (b, s128, h, d32) fp32 + GQA dk/dv."""
    b, h, hk, s, d = 1, 8, 2, 200, 64
    q = torch.empty(b, h, s, d, dtype=torch.bfloat16, device="meta", requires_grad=True)
    k = torch.empty(b, hk, s, d, dtype=torch.bfloat16, device="meta", requires_grad=True)
    v = torch.empty(b, hk, s, d, dtype=torch.bfloat16, device="meta", requires_grad=True)
    t = Tracker()
    t.on_op = workspace_for
    with t:
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False)[0]
        out.sum().backward()
    ws = [r for r in t.records if r.category == "workspace"]
    assert sorted(r.raw_nbytes for r in ws) == sorted([b * h * 256 * 4, b * 256 * h * 64 * 4,
                                                       b * s * h * d * 2, b * s * h * d * 2])
    assert all(r.rid not in t.live.values() for r in ws), "workspaces die with the op"


def test_flash_philox_seed_and_offset_live_on_the_host():
    q = torch.empty(1, 4, 64, 64, dtype=torch.bfloat16, device="meta")
    t = Tracker()
    with t:
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, q, q, 0.0, True, False)
    assert sorted(r.raw_nbytes for r in t.records) == [4 * 64 * 4, 4 * 64 * 64 * 2], \
        "output and fp32 logsumexp only; CUDA returns the philox seed/offset as CPU tensors without dropout"
    del out
