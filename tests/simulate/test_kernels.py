"""The SDPA backend CUDA would choose (sm80+, sdp_utils.cpp) and what each saves."""

from __future__ import annotations

import pytest
import torch

from vramplan.simulate.kernels import sdpa_backend


def _qkv(dtype, heads=8, kv=8, s=128, d=64):
    q = torch.empty(1, heads, s, d, dtype=dtype, device="meta")
    k = torch.empty(1, kv, s, d, dtype=dtype, device="meta")
    return q, k, k


@pytest.mark.parametrize("dtype, kv, mask, gqa, expected", [
    (torch.bfloat16, 2, None, True, "flash"),        # flash runs grouped-query attention natively
    (torch.float16, 8, None, False, "flash"),
    (torch.bfloat16, 8, "mask", False, "efficient"),  # a mask rules out flash
    (torch.float32, 8, None, False, "efficient"),     # fp32 rules out flash
    (torch.float32, 2, None, True, "math"),           # efficient has no GQA: check_batch_size_and_num_heads_dense<false>
    (torch.bfloat16, 2, "mask", True, "math"),
])
def test_backend_choice(dtype, kv, mask, gqa, expected):
    q, k, v = _qkv(dtype, kv=kv)
    m = torch.empty(1, 1, 128, 128, dtype=torch.bool, device="meta") if mask else None
    assert sdpa_backend(q, k, v, m, gqa, is_causal=m is None) == expected


def test_head_dim_over_256_is_not_flash():
    q, k, v = _qkv(torch.bfloat16, d=512)
    assert sdpa_backend(q, k, v, None, False, True) != "flash"
