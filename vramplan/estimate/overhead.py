"""Memory outside the tensors: CUDA context, cuBLAS workspaces, the caching allocator's slack.

These constants are not derivable from shapes. Each says where it comes from; those marked *uncalibrated*
wait for measurements on real GPUs with fully known configurations (issue 8, ``vramplan validate``) and
are the largest known error of the device-level prediction.
"""

from __future__ import annotations

from typing import Any

from ..setup import Setup
from ..stacks import STACKS
from ..units import MiB
from .result import Fit

#: CUDA context + loaded kernels of torch (CUDA_MODULE_LOADING=LAZY, default since torch 2.x / CUDA 11.7)
#: as nvidia-smi shows it once a training step has run; per GPU architecture. Published readings:
#: * "around 400MB if CUDA >= 11.7 is used and lazy module loading enabled" — PyTorch maintainer, pytorch/pytorch
#:   issue 109888 (2023); "~300MB" on a smaller setup in issue 107667;
#: * 426 MiB after ``torch.cuda.mem_get_info`` on an RTX 6000 Ada, torch 2.10 + CUDA 13.0 (unsloth-zoo PR 1053);
#: * a bare context (no kernels used yet) of 256 MiB on an RTX 3090, torch 2.7.1 + CUDA 12.8 (InvokeAI issue 9413).
#: Kernels loaded lazily during the step (cuBLAS, attention, bitsandbytes) add to the bare context, so the values
#: below sit above it. *Uncalibrated* until measured by ``vramplan validate``: Hopper, Blackwell and CDNA3 are
#: extrapolated; the profiler records the real value (``measured.cuda_context_bytes``).
CUDA_CONTEXT_BYTES = {
    "volta": 310 * MiB, "turing": 310 * MiB, "ampere": 420 * MiB, "ada": 430 * MiB,
    "hopper": 520 * MiB, "blackwell": 560 * MiB, "cdna3": 600 * MiB, "": 500 * MiB,
}

#: bitsandbytes loads its own CUDA library into the context when used (``libbitsandbytes_cuda*.so``).
#: *Uncalibrated* estimate of its module image and workspace.
BNB_CONTEXT_BYTES = 40 * MiB

#: cuBLAS workspace per handle/stream, allocated through the caching allocator
#: (``aten/src/ATen/cuda/CublasHandlePool.cpp::getChosenWorkspaceSize``: ":4096:8" = 8 × 4 MiB on sm90 and
#: earlier since torch 2.3) plus the cuBLASLt workspace (``TORCH_CUBLASLT_WORKSPACE_SIZE`` default 1 MiB).
CUBLAS_WORKSPACE_BYTES = 4096 * 1024 * 8 + 1 * MiB

#: Reserved beyond allocated: segment rounding (2 MiB large blocks, 20 MiB segments for 1–10 MiB blocks,
#: ``CUDACachingAllocator.cpp``) and fragmentation when activations of different sizes are freed and
#: re-allocated. *Uncalibrated*: a fraction of the peak allocated plus a floor.
ALLOCATOR_FRAGMENTATION = 0.06
ALLOCATOR_FLOOR_BYTES = 64 * MiB


def cuda_context_bytes(architecture: str | None, bitsandbytes: bool) -> int:
    base = CUDA_CONTEXT_BYTES.get((architecture or "").lower(), CUDA_CONTEXT_BYTES[""])
    return base + (BNB_CONTEXT_BYTES if bitsandbytes else 0)


def allocator_overhead_bytes(peak_allocated: int) -> int:
    return max(ALLOCATOR_FLOOR_BYTES, int(peak_allocated * ALLOCATOR_FRAGMENTATION))


#: ``--optim`` choices that run bitsandbytes kernels (``bitsandbytes.optim``: AdamW8bit, PagedAdamW,
#: PagedAdamW8bit, Lion): the library's CUDA module is loaded into the context.
BNB_OPTIMIZERS = ("adamw-8bit", "paged-adamw", "paged-adamw-8bit", "lion")


def uses_bitsandbytes(setup: Setup) -> bool:
    """Whether the step loads bitsandbytes' CUDA library: bitsandbytes 4/8-bit weights (not a GPTQ/AWQ/FP8
    checkpoint, nor torchao's nf4 under torchtune) or a bitsandbytes optimizer."""
    torchao = setup.quant == "nf4" and STACKS[setup.stack].nf4_kernel == "torchao"
    return (setup.bnb and not torchao) or setup.optim in BNB_OPTIMIZERS


def usable_bytes(memory_bytes: int, margin: float) -> int:
    """The bytes of a card a plan may fill: its memory less ``margin`` (a fraction of it kept free)."""
    return int(memory_bytes * (1 - margin))


def fit_verdict(gpu: Any, device_used_bytes: int, margin: float) -> Fit:
    """Whether ``device_used_bytes`` fit ``gpu`` (a :class:`vramplan.profiles.Gpu`) with ``margin`` kept free."""
    cap = usable_bytes(gpu.memory_bytes, margin)
    return Fit(gpu.name, gpu.memory_bytes, cap - device_used_bytes, device_used_bytes <= cap, margin)
