"""The CUDA kernels a GPU run would pick, forced on the meta device, and their workspaces.

* ``F.scaled_dot_product_attention`` on meta always takes the math path and saves the ``seq × seq`` scores.
  :class:`CudaKernels` picks the backend as ``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`` does on an
  sm80/sm90 GPU — flash when the inputs are fp16/bf16, there is no mask and ``head_dim <= 256`` (grouped-query
  attention natively); else memory-efficient when the heads match (a boolean mask is first converted to a
  float bias, ``attention.cpp::preprocess_mask``, which the kernel saves); else math, with fp16/bf16 inputs
  upcast to fp32 (``allow_fp16_bf16_reduction_math_sdp`` is off by default) — and calls that ATen op directly.
* The flash backward allocates workspaces the meta kernel does not (``flash_api.cpp::mha_bwd``): ``softmax_d``
  (batch × heads × seq rounded to 128, fp32), ``dq_accum`` (batch × seq₁₂₈ × heads × head_dim rounded to 32,
  fp32) and, with grouped-query attention, ``dk_expanded``/``dv_expanded`` at the query head count.
  :func:`workspace_for` allocates them for the duration of the op so the tracker sees them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_LOW = (torch.float16, torch.bfloat16)


def _round(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any, enable_gqa: bool,
                 is_causal: bool) -> str:
    """``flash``, ``efficient`` or ``math``: the backend CUDA SDPA would choose (sm80+, default flags)."""
    hd = q.shape[-1]
    same_heads = q.shape[-3] == k.shape[-3] == v.shape[-3] if q.dim() >= 3 else True
    gqa_ok = same_heads or enable_gqa
    causal_ok = not (is_causal and q.shape[-2] != k.shape[-2])
    if (q.dtype in _LOW and attn_mask is None and hd <= 256 and k.shape[-1] == hd == v.shape[-1] and gqa_ok
            and causal_ok and q.dim() == 4):
        return "flash"
    if same_heads and q.dim() == 4 and hd % (8 if q.dtype in _LOW else 4) == 0 and k.shape[-1] == hd:
        return "efficient"
    return "math"


class CudaKernels(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` to the ATen kernel CUDA would run (see module docstring).

    ``used`` counts the backends chosen, reported in the result.
    """

    def __init__(self) -> None:
        super().__init__()
        self.used: dict[str, int] = {}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "scaled_dot_product_attention":
            return self.sdpa(*args, **kwargs)
        return func(*args, **kwargs)

    def sdpa(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
             dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
             enable_gqa: bool = False) -> torch.Tensor:
        backend = sdpa_backend(query, key, value, attn_mask, enable_gqa, is_causal)
        self.used[backend] = self.used.get(backend, 0) + 1
        aten = torch.ops.aten
        if backend == "flash":
            out = aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, False,
                                                           scale=scale)
            return out[0]
        if backend == "efficient":
            bias = attn_mask
            if bias is not None and bias.dtype == torch.bool:
                # attention.cpp::convert_boolean_attn_mask: a float bias in the query dtype, made per call
                bias = torch.where(bias.logical_not(), torch.tensor(float("-inf"), dtype=query.dtype,
                                                                     device=query.device),
                                   torch.tensor(0.0, dtype=query.dtype, device=query.device))
            if bias is not None:
                bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
            need_lse = query.requires_grad or key.requires_grad or value.requires_grad
            out = aten._scaled_dot_product_efficient_attention(query, key, value, bias, need_lse, dropout_p,
                                                               is_causal, scale=scale)
            return out[0]
        # math (attention.cpp::_scaled_dot_product_attention_math): fp16/bf16 upcast to fp32 on CUDA
        dt = query.dtype
        q, k, v = query, key, value
        if dt in _LOW:
            q, k, v = q.float(), k.float(), v.float()
        if enable_gqa and k.shape[-3] != q.shape[-3]:
            rep = q.shape[-3] // k.shape[-3]
            k = k.repeat_interleave(rep, dim=-3)
            v = v.repeat_interleave(rep, dim=-3)
        mask = attn_mask
        if mask is not None and mask.dtype not in (torch.bool,) and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        out = aten._scaled_dot_product_attention_math(q, k, v, mask, dropout_p, is_causal, scale=scale)[0]
        return out.to(dt) if dt in _LOW else out


def workspace_for(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor] | None:
    """Workspaces a CUDA kernel allocates that the meta kernel does not; ``None`` for most ops."""
    if func is torch.ops.aten._scaled_dot_product_flash_attention_backward.default:
        q, k = args[1], args[2]
        b, h, s, d = q.shape
        hk, sk = k.shape[1], k.shape[2]
        dev = q.device
        ws = [torch.empty((b, h, _round(s, 128)), dtype=torch.float32, device=dev),
              torch.empty((b, _round(s, 128), h, _round(d, 32) if d <= 192 else 256), dtype=torch.float32,
                          device=dev)]
        if hk != h:
            ws += [torch.empty((b, sk, h, d), dtype=q.dtype, device=dev) for _ in range(2)]
        return ws
    return None


def cuda_meta_override(func: Any, args: tuple, kwargs: dict) -> Any:
    """Meta kernels stricter than the CUDA ones; ``NotImplemented`` to run the registered kernel.

    ``aten::_grouped_mm``: the meta registration accepts bf16 only, while CUDA runs other dtypes through
    ``_grouped_mm_fallback`` (a loop of ``mm_out`` into one output, ``aten/src/ATen/native/cuda/GroupedBlas.cpp``)
    — what an fp32 full fine-tune of a transformers-5 MoE (``grouped_mm`` experts) runs. Same output shape, the
    input dtype (``_resolve_grouped_mm_out_dtype``).
    """
    if func is torch.ops.aten._grouped_mm.default:
        a, b = args[0], args[1]
        if a.dtype == torch.bfloat16 and b.dtype == torch.bfloat16:
            return NotImplemented
        out = func(a.to(torch.bfloat16), b.to(torch.bfloat16), *args[2:], **kwargs)
        return torch.empty(out.shape, dtype=kwargs.get("out_dtype") or a.dtype, device=out.device)
    return NotImplemented


#: the attention implementation name registered for ``--attn flash``
FLASH_IMPLEMENTATION = "vramplan_tiled"   # a name containing "flash" would make transformers look for a hub kernel


def flash_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                            is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``attn_implementation="flash_attention_2"`` as far as memory goes, on meta.

    The flash-attn package (CUDA only) saves q, k, v at the key/value head count, the output and a fp32
    log-sum-exp per query row (``flash_attn_interface.py::_flash_attn_forward``), handles causal masking,
    sliding windows and softcapping inside the kernel (no mask tensor), and needs no ``repeat_kv`` — the same
    saves as PyTorch's own flash kernel, which runs here (``aten::_scaled_dot_product_flash_attention``).
    Inputs arrive as ``(batch, heads, seq, head_dim)``; the output is returned as ``(batch, seq, heads,
    head_dim)`` like ``transformers/integrations/flash_attention.py``.
    """
    target = _fa_target_dtype(query, module)
    if target is not None:            # integrations/flash_attention.py: fp32 q/k/v are cast (new tensors)
        query, key, value = query.to(target), key.to(target), value.to(target)
    if query.dtype not in _LOW:
        from ..errors import SimulationError

        raise SimulationError("flash-attn runs in fp16/bf16 only, and this setup's attention inputs are "
                              f"{query.dtype}; use --attn sdpa or a 16-bit --precision")
    q_len = query.shape[2]
    causal = q_len > 1 if is_causal is None else (bool(is_causal) and q_len > 1)
    if getattr(module, "is_causal", True) is False:
        causal = False
    out = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout, causal, False,
                                                             scale=scaling)[0]
    return out.transpose(1, 2), None


#: the autocast dtype of the running simulation (set by the driver), for :func:`_fa_target_dtype`
AUTOCAST_DTYPE: list[torch.dtype] = []


def _fa_target_dtype(query: torch.Tensor, module: Any) -> torch.dtype | None:
    """``transformers/integrations/flash_attention.py::get_target_dtype``, with the emulated autocast."""
    if query.dtype != torch.float32:
        return None
    if AUTOCAST_DTYPE and torch.is_autocast_enabled():
        return AUTOCAST_DTYPE[-1]
    if hasattr(module.config, "_is_quantized"):
        return module.config.dtype
    return next(m for m in module.modules() if isinstance(m, torch.nn.Linear)).weight.dtype


def register_flash() -> None:
    """Register :func:`flash_attention_forward` (and FA2's mask function) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(FLASH_IMPLEMENTATION, flash_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FLASH_IMPLEMENTATION, flash_attention_mask)
