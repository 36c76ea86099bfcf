"""CUDA autocast, emulated for tensors on the ``meta`` device.

The simulation runs on ``meta`` tensors, which carry no autocast dispatch key: ``torch.autocast("cuda")`` has no
effect on them and ``torch.autocast("meta")`` does not exist. What autocast does to memory matters, though —
under ``bf16-mixed`` every matmul input is a bf16 copy, fp32 trainable weights get a cached bf16 copy that
autograd saves, and softmax/log_softmax/sum run in fp32. :class:`EmulatedAutocast` applies the CUDA policy of
``aten/src/ATen/autocast_mode.h`` (``AT_FORALL_LOWER_PRECISION_FP``, ``AT_FORALL_FP32``,
``AT_FORALL_FP32_SET_OPT_DTYPE``, ``AT_FORALL_PROMOTE``) and the cast cache of ``autocast_mode.cpp``
(``cached_cast``: fp32 leaves that require grad, cleared when the outermost region exits) at the
``__torch_function__`` level, above autograd, so the casts are recorded by autograd exactly as CUDA's
``AutocastCUDA`` kernels record them.

Known difference (documented in ``docs/simulation.md``): real autocast also reaches listed ops that a
composite op calls internally (e.g. the ``bmm`` inside ``einsum`` — ``einsum`` itself is listed, so only
composites of unlisted ops differ); here only the Python-level call is seen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

#: AT_FORALL_LOWER_PRECISION_FP (CUDA), by the Python-level names through which they are reached
LOWER_PRECISION = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "convolution", "prelu", "addmm", "addmv", "addr", "matmul", "__matmul__", "__rmatmul__", "einsum", "mm", "mv",
    "vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "multi_dot", "lstm_cell", "gru_cell",
    "rnn_tanh_cell", "rnn_relu_cell", "scaled_dot_product_attention",
})
#: AT_FORALL_FP32
FP32 = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow", "__pow__", "__rpow__", "softplus", "layer_norm", "group_norm", "cosine_similarity",
    "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "hinge_embedding_loss", "kl_div", "l1_loss",
    "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss", "multilabel_margin_loss",
    "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss", "binary_cross_entropy_with_logits", "dist",
    "pdist", "cdist", "renorm", "logsumexp", "cross_entropy",
})
#: AT_FORALL_FP32_SET_OPT_DTYPE: run in fp32 by setting ``dtype=float32`` when the caller gave none
FP32_SET_OPT_DTYPE = frozenset({"prod", "softmax", "log_softmax", "cumprod", "cumsum", "vector_norm",
                                "matrix_norm", "sum"})
#: AT_FORALL_PROMOTE: run in the widest floating dtype among the inputs
PROMOTE = frozenset({"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler",
                     "index_put", "index_put_", "tensordot", "scatter_add", "scatter_add_"})

_LOW = (torch.float16, torch.bfloat16)


def _name(func: Any) -> str:
    return getattr(func, "__name__", "") or ""


class EmulatedAutocast(TorchFunctionMode):
    """``torch.autocast("cuda", dtype)`` for meta tensors. Enter it once; switch it with :meth:`region`.

    Args:
        dtype: the lower-precision dtype (``torch.bfloat16`` or ``torch.float16``).
    """

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.enabled = False
        self.depth = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.on_cached_cast: Any = None     # called with each new cached weight copy (the tracker tags it)

    @contextlib.contextmanager
    def region(self, enabled: bool = True) -> Iterator[None]:
        """An autocast region (``with torch.autocast(...)``); the cast cache is cleared when the outermost
        enabled region exits, as ``autocast_mode.cpp::clear_cache`` does."""
        prev = self.enabled
        self.enabled = enabled
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            self.enabled = prev
            if self.depth == 0:
                self._cache.clear()

    # ----------------------------------------------------------------------------------------- casts
    def _cast(self, x: Any, to: torch.dtype) -> Any:
        if isinstance(x, torch.Tensor):
            if not x.is_floating_point() or x.dtype == torch.float64 or x.dtype == to:
                return x
            cacheable = (to == self.dtype and x.dtype == torch.float32 and x.requires_grad and x.is_leaf
                         and not x._is_view())
            if cacheable:
                hit = self._cache.get(id(x))
                if hit is not None and hit[0] is x:
                    return hit[1]
                y = x.to(to)
                self._cache[id(x)] = (x, y)
                if self.on_cached_cast is not None:
                    self.on_cached_cast(x, y)
                return y
            return x.to(to)
        if isinstance(x, (list, tuple)):
            return type(x)(self._cast(v, to) for v in x)
        return x

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if not self.enabled:
            return func(*args, **kwargs)
        name = _name(func)
        if name in LOWER_PRECISION:
            return func(*self._cast(args, self.dtype), **{k: self._cast(v, self.dtype) for k, v in kwargs.items()})
        if name in FP32:
            return func(*self._cast(args, torch.float32),
                        **{k: self._cast(v, torch.float32) for k, v in kwargs.items()})
        if name in FP32_SET_OPT_DTYPE:
            first = args[0] if args else None
            if (isinstance(first, torch.Tensor) and first.is_floating_point() and first.dtype != torch.float64
                    and kwargs.get("dtype") is None):
                kwargs = dict(kwargs, dtype=torch.float32)
            return func(*args, **kwargs)
        if name in PROMOTE:
            floats = [a.dtype for a in _tensors(args, kwargs) if a.is_floating_point() and a.dtype != torch.float64]
            if floats:
                to = self.dtype
                for d in floats:
                    if d == torch.float32:
                        to = torch.float32
                return func(*self._cast(args, to), **{k: self._cast(v, to) for k, v in kwargs.items()})
        return func(*args, **kwargs)


def _tensors(args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (v for v in a if isinstance(v, torch.Tensor))
