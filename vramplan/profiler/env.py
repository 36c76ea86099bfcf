"""The environment block of a run record: what produced the numbers, so that two runs can be compared."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

#: Allocator settings change reserved memory; record them with every run.
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "CUDA_MODULE_LOADING",
            "PYTORCH_NO_CUDA_MEMORY_CACHING", "TORCH_CUDNN_V8_API_DISABLED")
PACKAGES = ("vramplan", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "nvidia-ml-py", "psutil")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def collect_environment(device: Any, nvml: Any = None) -> dict[str, Any]:
    """Versions, platform, host memory, the device and (on CUDA) the GPU as torch and NVML see it.

    The keys the report shows sit at the top level (``device`` = ``cuda``/``cpu``, ``gpu_name``, ``driver``,
    ``cuda``, ``torch``, ...); ``versions`` and ``gpu`` hold the rest.
    """
    import torch

    versions = package_versions()
    dev = torch.device(device)
    env: dict[str, Any] = {
        "device": dev.type, "device_index": dev.index if dev.type == "cuda" else None,
        "gpu_name": None, "driver": None, "cuda": torch.version.cuda,
        "torch": versions["torch"], "transformers": versions["transformers"], "peft": versions["peft"],
        "bitsandbytes": versions["bitsandbytes"], "accelerate": versions["accelerate"],
        "vramplan": versions["vramplan"],
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
    }
    try:
        import psutil

        env["host_memory_bytes"] = int(psutil.virtual_memory().total)
    except Exception:
        env["host_memory_bytes"] = None
    gpu: dict[str, Any] | None = None
    if torch.device(device).type == "cuda":
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        gpu = {"name": props.name, "memory_total_bytes": int(props.total_memory),
               "compute_capability": f"{props.major}.{props.minor}",
               "multi_processor_count": props.multi_processor_count,
               "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
               "bf16_supported": bool(torch.cuda.is_bf16_supported())}
    if nvml is not None:
        info = nvml.info()
        if gpu is None:
            gpu = {}
        for k, v in info.items():       # torch's name and total win; NVML adds driver, UUID, its status
            gpu.setdefault(k, v)
    env["gpu"] = gpu
    if gpu:
        env["gpu_name"] = gpu.get("name")
        env["driver"] = gpu.get("driver")
    return env
