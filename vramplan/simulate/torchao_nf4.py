"""torchao's ``NF4Tensor`` and ``linear_nf4`` on the meta device: torchtune QLoRA's nf4 base (``Stack.nf4_kernel``).

torchtune 0.6.1 quantizes every Linear of the decoder layers with ``to_nf4(weight)`` (``LoRALinear(quantize_base=
True)`` for the LoRA targets, ``FrozenNF4Linear`` for the others; the output head stays ``nn.Linear``:
models/llama3_1/_component_builders.py:128-130, :251-256, modules/peft/lora.py:74-78) and runs them through
``linear_nf4``. torchao is not a dependency of vramplan, so the simulation does not import it: it runs a
transcription of the torchao 0.10.0 code that allocates (dtypes/nf4tensor.py; the same in 0.17.0, the newest release
that has the module), so that the tracker sees the same storages being made and freed as the real code makes:

* the stored layout, ``NF4Tensor.from_tensor`` (:559-630): ``quantized_data`` (uint8, two codes per byte),
  ``quantized_scalers`` (int8, one per 64-value block), ``quantization_factor`` (one per 256 scalers, in the
  weight's dtype), ``scaler_mean`` (0-dim) and ``nf4`` (the 16-entry table), each its own storage; the outer
  ``NF4Tensor`` is a wrapper subclass with no storage of its own (here: a zero-stride parameter of the weight's
  shape and dtype, whose storage is 0 bytes, so PEFT reads the dtype and shape it reads on the real tensor);
* ``LinearNF4`` (:964-975): forward saves the weight only (no new bytes) and returns ``F.linear(input,
  weight.to(input.dtype))``; backward is ``grad_output @ weight.to(grad_output.dtype)``; each ``.to`` runs
  ``get_original_weight`` (:756-783), whose int64 code indices make the dequantization transient.

The transcription is checked against the real torchao on the same tracker by
``tests/simulate/test_torchao_nf4_sim.py`` (pinned numbers measured with torch 2.13.0 + torchao 0.10.0, and a
reproduction that runs when torchao is installed).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..dtypes import TORCHAO_NF4_BLOCK, TORCHAO_NF4_SCALER_BLOCK

#: the inner tensors of an NF4Tensor (``NF4Tensor.__tensor_flatten__``, torchao 0.10.0 dtypes/nf4tensor.py:805-827),
#: each with the component the analytic estimator gives it (vramplan.estimate.weights.place_weights)
INNER = ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")
COMPONENT = {"quantized_data": "weights/quantized", "quantized_scalers": "weights/quant_constants",
             "quantization_factor": "weights/quant_constants", "scaler_mean": "weights/quant_constants",
             "nf4": "weights/quant_constants"}


class NF4Linear(torch.nn.Linear):
    """``FrozenNF4Linear`` / ``LoRALinear(quantize_base=True)``'s base: an ``nn.Linear`` whose weight is an NF4Tensor.

    Built from an existing (meta) ``nn.Linear``, in the weight's dtype (torchtune quantizes under
    ``set_default_dtype(bf16)``). The bias, if any, stays a frozen parameter added after ``linear_nf4``
    (modules/low_precision/nf4_linear.py:72-76).
    """

    def __init__(self, linear: torch.nn.Linear, block_size: int = TORCHAO_NF4_BLOCK,
                 scaler_block_size: int = TORCHAO_NF4_SCALER_BLOCK) -> None:
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight
        n = w.numel()
        if n % block_size or (n // block_size) % scaler_block_size:
            # to_nf4 asserts both (dtypes/nf4tensor.py:567-569, :651-654, :662-664)
            raise ValueError(f"torchao to_nf4 needs numel divisible by {block_size} and the block count by "
                             f"{scaler_block_size}: weight {tuple(w.shape)} has {n:,} values (the analytic path rounds the "
                             "blocks up)")
        self.block_size, self.scaler_block_size = block_size, scaler_block_size
        dev, dt = w.device, w.dtype
        blocks = n // block_size
        # NF4Tensor.from_tensor's results (:597-630): convert_to_norm_float_weight's combined_blocks.to(uint8),
        # double_quantize_scalers' int8 scalers, quantization_factor.view(n_scaler_blocks).contiguous(), the
        # scalers' mean, and the nf4 table torch.tensor([...16 values], dtype=input_tensor.dtype)
        inner = {"quantized_data": torch.empty(n // 2, dtype=torch.uint8, device=dev),
                 "quantized_scalers": torch.empty(blocks, dtype=torch.int8, device=dev),
                 "quantization_factor": torch.empty(blocks // scaler_block_size, dtype=dt, device=dev),
                 "scaler_mean": torch.empty((), dtype=dt, device=dev),
                 "nf4": torch.empty(16, dtype=dt, device=dev)}
        for name in INNER:
            self.register_buffer(name, inner[name], persistent=False)
        # the wrapper: the weight's shape and dtype, no storage (torch.Tensor._make_wrapper_subclass, :495-534)
        outer = torch.empty(0, dtype=dt, device=dev).as_strided(tuple(w.shape), (0, 0))
        self.weight = torch.nn.Parameter(outer, requires_grad=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.data, requires_grad=False)

    def inner(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in INNER)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """``NF4Tensor.to(dtype)``: ``get_original_weight().to(dtype)`` (``function_to_dtype``, :1006-1027)."""
        return original_weight(*self.inner(), self.block_size, self.scaler_block_size,
                               tuple(self.weight.shape)).to(dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = LinearNF4.apply(input, self)
        if self.bias is not None:
            out = out + self.bias
        return out


def original_weight(quantized_data: torch.Tensor, quantized_scalers: torch.Tensor,
                    quantization_factor: torch.Tensor, scaler_mean: torch.Tensor, nf4: torch.Tensor,
                    block_size: int, scaler_block_size: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``NF4Tensor.get_original_weight`` (torchao 0.10.0 dtypes/nf4tensor.py:756-783, with ``dequantize`` :794-797
    and ``dequantize_scalers`` :691-715), op for op and with the same local lifetimes: every local lives to the
    ``torch.stack`` at the end, which is the transient's peak."""
    first_elements = (quantized_data >> 4).to(torch.long)
    second_elements = (quantized_data & 0b1111).to(torch.long)
    dequantized_first = nf4[first_elements]
    dequantized_second = nf4[second_elements]
    n_scaler_blocks = quantized_scalers.numel() // scaler_block_size
    scalers = (quantized_scalers.view(n_scaler_blocks, scaler_block_size)
               / quantization_factor.unsqueeze(-1)).flatten().to(nf4.dtype) + scaler_mean
    repeated = scalers.unsqueeze(-1).expand(scalers.size(0), block_size // 2)
    scaled_first = dequantized_first * repeated.flatten()
    scaled_second = dequantized_second * repeated.flatten()
    scaled_first = scaled_first.unsqueeze(-1).transpose(0, 1)
    scaled_second = scaled_second.unsqueeze(-1).transpose(0, 1)
    return torch.stack([scaled_first, scaled_second], dim=-1).reshape(shape)


class LinearNF4(torch.autograd.Function):
    """``torchao.dtypes.nf4tensor.LinearNF4`` (:964-975): the weight never requires grad, only it is saved."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, module: NF4Linear) -> torch.Tensor:
        ctx.save_for_backward(*module.inner())          # ctx.save_for_backward(weight): stored bytes only
        ctx.module = module
        return F.linear(input, module.dequantize(input.dtype))

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.saved_tensors                               # noqa: B018 - unpack as the real backward does
        return grad_output @ ctx.module.dequantize(grad_output.dtype), None


def replace_linears(model: torch.nn.Module, skip: list[str], block_size: int) -> int:
    """Swap every ``nn.Linear`` that transformers' ``replace_with_bnb_linear`` would quantize (the same selection:
    ``should_convert_module`` over ``get_keys_to_not_convert``, which leaves the output head alone, as torchtune
    does) for an :class:`NF4Linear`; returns how many were swapped."""
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    count = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, Conv1D) and should_convert_module(name, skip):
            # bitsandbytes' replacement takes Conv1D too; torchtune builds no such model and its NF4 Linear
            # has no transposed-weight form
            raise ValueError(f"torchao NF4 (the stack's nf4 library) quantizes nn.Linear weights only: {name} is "
                             "a transformers Conv1D")
        if type(mod) is not torch.nn.Linear or not should_convert_module(name, skip):
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, NF4Linear(mod, block_size))
        count += 1
    return count
