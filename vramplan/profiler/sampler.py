"""Memory counters and the background sampler.

Three views of memory, each with its own blind spots, are sampled side by side:

* NVML (``nvmlDeviceGetMemoryInfo(...).used``): what ``nvidia-smi`` shows for the whole device — the CUDA
  context, every allocator's reserved segments, cuBLAS/cuDNN workspaces, other processes. Per-process usage
  (``nvmlDeviceGetComputeRunningProcesses``) is unavailable in many containers (PID namespaces); then null.
* The PyTorch caching allocator (``torch.cuda.memory_allocated``/``memory_reserved``): tensors alive and the
  segments cached for them. Blind to the context and to memory allocated outside PyTorch.
* Process RSS (``/proc/self/statm``; psutil elsewhere): the only counter on the CPU.

NVML that is missing or failing degrades to one warning line and null columns; it never raises.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

SAMPLE_COLUMNS: tuple[str, ...] = ("t", "device_used_bytes", "process_used_bytes", "allocated_bytes",
                                   "reserved_bytes", "rss_bytes")


class RssReader:
    """This process's resident set size.

    On Linux, ``pread`` of ``/proc/self/statm`` through a descriptor kept open (resident pages x page size —
    the file psutil reads too): ~5 us per reading instead of psutil's ~50 us, which matters at 100+ Hz because
    the sampler holds the GIL while it reads. Elsewhere psutil. ``None`` when neither works.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._page = 4096
        self._proc: Any = None
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
            self._page = os.sysconf("SC_PAGE_SIZE")
            int(os.pread(self._fd, 128, 0).split()[1])
        except (OSError, ValueError, IndexError, AttributeError):
            self.close()
            try:
                import psutil

                self._proc = psutil.Process()
            except Exception:
                self._proc = None

    def __call__(self) -> int | None:
        try:
            if self._fd is not None:
                return int(os.pread(self._fd, 128, 0).split()[1]) * self._page
            if self._proc is not None:
                return int(self._proc.memory_info().rss)
        except Exception:  # the platform refuses; RSS is then simply unknown
            return None
        return None

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def __del__(self) -> None:
        self.close()


_RSS: RssReader | None = None


def rss_bytes() -> int | None:
    """Resident set size of this process, or ``None`` when it cannot be read."""
    global _RSS
    if _RSS is None:
        _RSS = RssReader()
    return _RSS()


class Nvml:
    """NVML for the run's device; every reading is ``None`` when NVML is unavailable.

    NVML is initialised on construction, before CUDA; :meth:`bind` picks the device once PyTorch has
    initialised CUDA, by UUID, because ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` renumber devices for
    PyTorch but not for NVML (and asking PyTorch for the UUID initialises CUDA, which the context
    measurement must not do too early). :meth:`used_by_uuid` reads every device without binding.

    Args:
        warn: called once with a one-line reason when NVML cannot be used.
    """

    def __init__(self, *, warn: Callable[[str], None] | None = None) -> None:
        self.handle: Any = None
        self.error: str | None = None
        self._pynvml: Any = None
        self._pid = os.getpid()
        self._proc_ok = True
        try:
            import pynvml

            pynvml.nvmlInit()
            self._pynvml = pynvml
        except Exception as exc:  # NVMLError_LibraryNotFound without a driver, ImportError, ...
            self.error = _nvml_reason(exc)
            if warn is not None:
                warn(f"NVML unavailable ({self.error}): device-used and per-process counters are recorded as null")

    @property
    def available(self) -> bool:
        return self._pynvml is not None

    @property
    def ok(self) -> bool:
        return self.handle is not None

    def bind(self, torch_index: int) -> bool:
        """Use the device PyTorch calls ``cuda:<torch_index>`` (initialises CUDA if it is not yet)."""
        if self._pynvml is None:
            return False
        p = self._pynvml
        try:
            import torch

            uuid = str(torch.cuda.get_device_properties(torch_index).uuid)
            uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
            self.handle = p.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:  # older torch without .uuid, MIG slices: fall back to the index
            try:
                self.handle = p.nvmlDeviceGetHandleByIndex(torch_index)
            except Exception as exc:
                self.error = _nvml_reason(exc)
                self.handle = None
        return self.handle is not None

    def used_by_uuid(self) -> dict[str, int]:
        """``{uuid: used bytes}`` for every device NVML sees; ``{}`` without NVML."""
        if self._pynvml is None:
            return {}
        p = self._pynvml
        out: dict[str, int] = {}
        try:
            for i in range(p.nvmlDeviceGetCount()):
                h = p.nvmlDeviceGetHandleByIndex(i)
                uuid = p.nvmlDeviceGetUUID(h)
                out[uuid.decode() if isinstance(uuid, bytes) else uuid] = int(p.nvmlDeviceGetMemoryInfo(h).used)
        except Exception:
            return out
        return out

    def uuid(self) -> str | None:
        if self.handle is None:
            return None
        try:
            u = self._pynvml.nvmlDeviceGetUUID(self.handle)
            return u.decode() if isinstance(u, bytes) else u
        except Exception:
            return None

    def device_used(self) -> int | None:
        if self.handle is None:
            return None
        try:
            return int(self._pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        except Exception:
            return None

    def device_total(self) -> int | None:
        if self.handle is None:
            return None
        try:
            return int(self._pynvml.nvmlDeviceGetMemoryInfo(self.handle).total)
        except Exception:
            return None

    def process_used(self) -> int | None:
        """This process's usage as NVML reports it; ``None`` when NVML cannot see our PID (containers)."""
        if self.handle is None or not self._proc_ok:
            return None
        try:
            for proc in self._pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if proc.pid == self._pid:
                    used = proc.usedGpuMemory
                    return int(used) if used is not None else None
        except Exception:
            self._proc_ok = False   # not supported here: stop asking at every tick
        return None

    def info(self) -> dict[str, Any]:
        """Driver and, once bound, name, memory total and UUID of the device, for the environment block."""
        if self._pynvml is None:
            return {"nvml": self.error}
        p = self._pynvml
        out: dict[str, Any] = {"nvml": "ok"}
        getters: list[tuple[str, Callable[[], Any]]] = [
            ("driver", p.nvmlSystemGetDriverVersion), ("nvml_cuda_driver_version", p.nvmlSystemGetCudaDriverVersion)]
        if self.handle is not None:
            getters += [("name", lambda: p.nvmlDeviceGetName(self.handle)),
                        ("memory_total_bytes", lambda: int(p.nvmlDeviceGetMemoryInfo(self.handle).total)),
                        ("uuid", lambda: p.nvmlDeviceGetUUID(self.handle))]
        for key, fn in getters:
            try:
                value = fn()
                out[key] = value.decode() if isinstance(value, bytes) else value
            except Exception:
                out[key] = None
        return out


def _nvml_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text and text != name else name


class Sampler:
    """A daemon thread that records the memory counters at ``hz`` samples per second.

    Columns are kept as lists of equal length (``None`` where a counter is unavailable) so the record is
    columnar as it is written. ``t`` is seconds on ``time.perf_counter`` minus ``t0``, the clock the phases
    use too.

    Args:
        hz: samples per second (the thread sleeps ``1/hz`` minus the time a sample took).
        t0: the run's clock origin (``time.perf_counter()`` at its start).
        cuda_index: the CUDA device to read allocator counters from; ``None`` on the CPU.
        nvml: an :class:`Nvml`, or ``None`` to leave the NVML columns null.
    """

    def __init__(self, hz: float, t0: float, *, cuda_index: int | None = None, nvml: Nvml | None = None) -> None:
        if hz <= 0:
            raise ValueError(f"sample rate must be > 0 Hz, got {hz}")
        self.period = 1.0 / hz
        self.t0 = t0
        self.cuda_index = cuda_index
        self.nvml = nvml if nvml is not None and nvml.ok else None
        self.columns: dict[str, list[Any]] = {c: [] for c in SAMPLE_COLUMNS}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._rss = RssReader()
        self._torch_cuda: Any = None
        if cuda_index is not None:
            import torch

            self._torch_cuda = torch.cuda

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self.sample()
        self._thread = threading.Thread(target=self._run, name="vramplan-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (joins it) and take one last sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(2.0, 10 * self.period))
        self.sample()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            next_t += self.period
            try:
                self.sample()
            except Exception:  # a failing counter must never kill the run; the column stays as it was
                pass
            delay = next_t - time.perf_counter()
            if delay < 0:           # fell behind (GIL held by a long kernel launch): don't burst to catch up
                next_t = time.perf_counter()
                delay = 0.0
            self._stop.wait(delay)

    # ------------------------------------------------------------------------------------------- readings
    def read(self) -> dict[str, Any]:
        """One reading of every counter (``t`` included)."""
        t = time.perf_counter() - self.t0
        allocated = reserved = None
        if self._torch_cuda is not None:
            try:
                allocated = int(self._torch_cuda.memory_allocated(self.cuda_index))
                reserved = int(self._torch_cuda.memory_reserved(self.cuda_index))
            except Exception:
                pass
        rss = self._rss()
        return {"t": t,
                "device_used_bytes": self.nvml.device_used() if self.nvml else None,
                "process_used_bytes": self.nvml.process_used() if self.nvml else None,
                "allocated_bytes": allocated, "reserved_bytes": reserved, "rss_bytes": rss}

    def sample(self) -> None:
        row = self.read()
        with self._lock:
            for c in SAMPLE_COLUMNS:
                self.columns[c].append(row[c])

    def snapshot(self) -> dict[str, list[Any]]:
        """A copy of the columns so far (safe while the thread runs)."""
        with self._lock:
            return {c: list(v) for c, v in self.columns.items()}

    def max_in(self, column: str, t_from: float | None = None, t_to: float | None = None) -> int | None:
        """Largest non-null value of ``column`` among samples with ``t_from <= t <= t_to``."""
        cols = self.snapshot()
        best: int | None = None
        for t, v in zip(cols["t"], cols[column], strict=True):
            if v is None or (t_from is not None and t < t_from) or (t_to is not None and t > t_to):
                continue
            best = v if best is None else max(best, v)
        return best
