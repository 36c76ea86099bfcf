"""dtypes and quantization formats -> exact storage in bytes.

Every function returns the bytes of each CUDA allocation separately, because the caching allocator rounds
each one up to 512 B (``c10/cuda/CUDACachingAllocator.cpp``: ``kMinBlockSize = 512``) and that rounded size
is what ``torch.cuda.max_memory_allocated`` counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import SetupError
from .units import ceil_div

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "uint8": 1, "int64": 8, "bool": 1}

#: kMinBlockSize in c10/cuda/CUDACachingAllocator.cpp
ALLOC_GRANULARITY = 512


def nbytes(numel: int, dtype: str) -> int:
    try:
        return numel * BYTES[dtype]
    except KeyError:
        raise SetupError(f"unknown dtype {dtype!r}; choose one of {', '.join(BYTES)}") from None


def alloc(n_bytes: int) -> int:
    """Bytes the CUDA caching allocator accounts for one allocation of ``n_bytes`` (512-B blocks)."""
    # round_up(n_bytes, ALLOC_GRANULARITY) inlined: called ~10^5 times per sweep while building structures
    return -(-n_bytes // ALLOC_GRANULARITY) * ALLOC_GRANULARITY if n_bytes > 0 else 0


def bnb_4bit_parts(numel: int, blocksize: int = 64, double_quant: bool = True) -> dict[str, int]:
    """Allocations of one bitsandbytes 4-bit (nf4/fp4) weight, ``bitsandbytes/functional.py::quantize_4bit``.

    * packed data: two 4-bit codes per byte, ``uint8`` (``bnb_4bit_quant_storage`` default), ceil(n/2) B;
    * ``absmax``: one fp32 scale per block of ``blocksize`` values; with double quantization
      (``compress_statistics``) the absmax are themselves quantized blockwise (blocksize 256) to ``uint8``
      after subtracting their mean (``offset``, one fp32), with nested fp32 absmax per 256 and a 256-entry
      fp32 dynamic code (``create_dynamic_map``);
    * ``code``: the 16-entry fp32 nf4/fp4 code book.

    A 4096×4096 weight: 9,437,248 B without double quantization, 8,655,940 B with it (FINDINGS.md).
    """
    blocks = ceil_div(numel, blocksize)
    parts = {"packed": ceil_div(numel, 2), "code": 16 * 4}
    if double_quant:
        parts.update({"absmax_uint8": blocks, "nested_absmax": ceil_div(blocks, 256) * 4,
                      "nested_code": 256 * 4, "offset": 4})
    else:
        parts["absmax_fp32"] = blocks * 4
    return parts


#: torchao ``to_nf4(tensor, block_size=64, scaler_block_size=256)`` defaults (torchao 0.10.0 dtypes/nf4tensor.py:988),
#: which torchtune 0.6.1 ``LoRALinear(quantize_base=True)`` and ``FrozenNF4Linear`` use (no quantization kwargs)
TORCHAO_NF4_BLOCK, TORCHAO_NF4_SCALER_BLOCK = 64, 256


def torchao_nf4_parts(numel: int, dtype: str = "bf16", block_size: int = TORCHAO_NF4_BLOCK,
                      scaler_block_size: int = TORCHAO_NF4_SCALER_BLOCK) -> dict[str, int]:
    """Allocations of one torchao ``NF4Tensor`` (torchtune QLoRA), ``NF4Tensor.from_tensor`` (torchao 0.10.0
    dtypes/nf4tensor.py:559-630; unchanged in 0.17.0), with ``dtype`` the dtype of the weight it quantizes:

    * ``quantized_data``: two 4-bit codes per byte, ``uint8``, n/2 B (``convert_to_norm_float_weight``);
    * ``quantized_scalers``: the per-block absmax minus their mean, quantized to ``int8``, one per block of
      ``block_size`` (``double_quantize_scalers``: always double quantization);
    * ``quantization_factor``: one per ``scaler_block_size`` scalers, in ``dtype`` (``256 / (2 * absmax)``);
    * ``scaler_mean``: a 0-dim tensor in ``dtype``; ``nf4``: the 16-entry lookup table in ``dtype``, one per weight.

    A 4096×4096 bf16 weight: 8,388,608 + 262,144 + 2,048 + 2 + 32 = 8,652,834 B, measured storage by storage
    (benchmarks/frameworks/torchtune_nf4.py). ``to_nf4`` asserts ``numel`` divisible by ``block_size`` and the
    block count by ``scaler_block_size``; other sizes are rounded up here.
    """
    q = BYTES[dtype]
    blocks = ceil_div(numel, block_size)
    return {"quantized_data": ceil_div(numel, 2), "quantized_scalers": blocks,
            "quantization_factor": ceil_div(blocks, scaler_block_size) * q, "scaler_mean": q, "nf4": 16 * q}


def torchao_nf4_dequant_bytes(numel: int, dtype: str = "bf16", out_dtype: str | None = None,
                              block_size: int = TORCHAO_NF4_BLOCK) -> int:
    """Allocator bytes alive at the peak of ``NF4Tensor.to(out_dtype)`` — what ``linear_nf4`` runs in forward
    (``F.linear(input, weight.to(input.dtype))``) and in backward (``grad_output @ weight.to(grad_output.dtype)``),
    torchao 0.10.0 dtypes/nf4tensor.py:964-975; the same in 0.17.0.

    ``get_original_weight`` (:756-783) keeps its locals to the end: the high and low codes as ``int64`` indices
    (``.to(torch.long)``: n/2 × 8 B each), both halves looked up in the table (n/2 each, in ``dtype``), the
    dequantized scalers (n/``block_size``), both scaled halves (n/2 each) and ``torch.stack`` of them (n): at
    ``stack`` 8n + 3·q·n + q·n/``block_size`` B for q = bytes of ``dtype`` (14.03 B per weight for bf16, measured
    on CPU: 7,356,416 B for 512 × 1024). When ``out_dtype`` differs, the returned weight's cast copy joins it.
    """
    q = BYTES[dtype]
    half = ceil_div(numel, 2)
    at_stack = (2 * alloc(half * 8) + 4 * alloc(half * q) + alloc(ceil_div(numel, block_size) * q)
                + alloc(numel * q))
    if out_dtype is None or out_dtype == dtype:
        return at_stack
    return max(at_stack, alloc(numel * q) + alloc(numel * BYTES[out_dtype]))


def bnb_int8_parts(out_features: int, in_features: int) -> dict[str, int]:
    """LLM.int8 (``Linear8bitLt``, ``Int8Params``): int8 weight + one fp32 row scale (``SCB``) per output row."""
    return {"packed": out_features * in_features, "scb": out_features * 4}


def adam8bit_state_parts(numel: int, min_8bit_size: int = 4096, blocksize: int = 256) -> dict[str, int]:
    """bitsandbytes 8-bit blockwise Adam states (``bitsandbytes/optim/optimizer.py::Optimizer2State.init_state``).

    Tensors with fewer than ``min_8bit_size`` (4096) elements keep two fp32 states; larger ones get two
    ``uint8`` states plus fp32 ``absmax`` per block of 256. The quantization maps are shared by all params.
    """
    if numel < min_8bit_size:
        return {"state1": numel * 4, "state2": numel * 4}
    blocks = ceil_div(numel, blocksize)
    return {"state1": numel, "state2": numel, "absmax1": blocks * 4, "absmax2": blocks * 4}


#: ``get_state_buffer`` pages (cudaMallocManaged) only tensors with at least 1e5 elements.
PAGED_MIN_NUMEL = 100_000


def alloc_sum(terms: Iterable[tuple[int, int, int]], tokens: int, bss: int) -> int:
    """Σ :func:`alloc` of allocations whose bytes are ``const + per_token·tokens + per_bss·bss`` — the saved
    storages of a layer at ``tokens`` = batch × seq and ``bss`` = batch × seq² — given as ``(const, per_token,
    per_bss)`` bytes each (all ≥ 0). :func:`alloc` unrolled: the sweep evaluates it for every row."""
    g = ALLOC_GRANULARITY
    total = 0
    for c, a, q in terms:
        total += -(-(c + a * tokens + q * bss) // g) * g
    return total
