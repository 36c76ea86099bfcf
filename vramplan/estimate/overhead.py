"""Memory outside the tensors: CUDA context, cuBLAS workspaces, the caching allocator's slack.

These constants are not derivable from shapes. Each says where it comes from; those marked *uncalibrated*
wait for measurements on real GPUs with fully known configurations (issue 8, ``vramplan validate``) and
are the largest known error of the device-level prediction.
"""

from __future__ import annotations

from ..units import MiB

#: CUDA context + loaded kernels of torch (CUDA_MODULE_LOADING=LAZY, default since torch 2.x / CUDA 11.7)
#: as nvidia-smi shows it right after ``torch.cuda.init()``; per GPU architecture. *Uncalibrated*: typical
#: readings reported for torch 2.x are 300–600 MiB; the profiler measures it (``measured.cuda_context_bytes``).
CUDA_CONTEXT_BYTES = {
    "volta": 310 * MiB, "turing": 310 * MiB, "ampere": 420 * MiB, "ada": 420 * MiB,
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
