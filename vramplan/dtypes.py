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
