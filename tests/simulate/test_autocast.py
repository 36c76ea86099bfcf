"""The emulated CUDA autocast (aten/src/ATen/autocast_mode.h policy and cast cache) on meta tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vramplan.simulate.autocast import EmulatedAutocast


def test_matmuls_run_in_bf16_and_fp32_weights_are_cast_once_per_region():
    w = torch.nn.Parameter(torch.empty(64, 32, device="meta"))
    x = torch.empty(8, 32, device="meta")
    casts = []
    ac = EmulatedAutocast(torch.bfloat16)
    ac.on_cached_cast = lambda src, copy: casts.append((src, copy))
    with ac, ac.region(True):
        y1 = F.linear(x, w)
        y2 = x @ w.t()
        z = F.linear(x, w)
    assert y1.dtype == y2.dtype == z.dtype == torch.bfloat16
    assert len(casts) == 1 and casts[0][0] is w, "the leaf weight is cast once and cached (cached_cast)"
    assert not ac._cache, "the cache is cleared when the outermost region exits"


def test_fp32_policies_softmax_sum_and_layer_norm():
    x = torch.empty(4, 16, dtype=torch.bfloat16, device="meta")
    ac = EmulatedAutocast(torch.bfloat16)
    with ac, ac.region(True):
        assert F.softmax(x, dim=-1).dtype == torch.float32          # fp32_set_opt_dtype
        assert x.sum().dtype == torch.float32
        assert F.softmax(x, dim=-1, dtype=torch.bfloat16).dtype == torch.bfloat16   # an explicit dtype wins
        assert F.layer_norm(x, (16,)).dtype == torch.float32         # fp32
        assert (x * x).dtype == torch.bfloat16                       # not listed: unchanged


def test_a_disabled_region_inside_an_enabled_one():
    w = torch.empty(8, 8, device="meta")
    ac = EmulatedAutocast(torch.bfloat16)
    with ac, ac.region(True):
        with ac.region(False):
            assert F.linear(w, w).dtype == torch.float32
        assert F.linear(w, w).dtype == torch.bfloat16
