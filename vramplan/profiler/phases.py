"""Phases of a step, the allocator peaks around each, and injected faults for tests.

Around every phase the tracker synchronizes, reads ``torch.cuda.memory_stats()`` peaks
(``allocated_bytes.all.peak``, ``reserved_bytes.all.peak``, ``active_bytes.all.peak``) and resets them with
``torch.cuda.reset_peak_memory_stats``. Before each reset the peaks since the previous reset are folded into
the run's maxima, so an allocation *between* phases (gradient clipping, ``zero_grad``, the data collator) still
counts toward the measured peak even though it belongs to no phase.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import VramplanError

PHASE_NAMES: tuple[str, ...] = ("load", "forward", "backward", "optimizer", "prefill", "decode")
PEAK_KEYS = {"peak_allocated_bytes": "allocated_bytes.all.peak", "peak_reserved_bytes": "reserved_bytes.all.peak",
             "peak_active_bytes": "active_bytes.all.peak"}

#: Environment variable read by the runner for an injected fault (``oom@backward:2``); tests only.
FAULT_ENV = "VRAMPLAN_PROFILE_FAULT"

_SIZE_UNITS = {"b": 1, "bytes": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
               "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_TRIED_RE = re.compile(r"tried to allocate\s+([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)", re.IGNORECASE)


def requested_bytes(message: str) -> int | None:
    """The size an OOM message says was requested.

    CUDA: ``"CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ..."`` (torch's
    ``c10/cuda/CUDACachingAllocator.cpp``, binary units, two decimals — so the value is rounded to 0.01 of its
    unit); CPU: ``"DefaultCPUAllocator: can't allocate memory: you tried to allocate 1048576 bytes"``.
    """
    m = _TRIED_RE.search(message)
    if not m:
        return None
    unit = _SIZE_UNITS.get(m.group(2).lower())
    if unit is None:
        return None
    return int(round(float(m.group(1)) * unit))


def is_oom(exc: BaseException) -> bool:
    """A CUDA OOM, or the CPU allocator's out-of-memory RuntimeError."""
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower())


class FaultError(VramplanError):
    """A malformed fault specification."""


@dataclass(frozen=True)
class Fault:
    """An injected failure at the start of phase ``phase`` of step ``step`` (tests only).

    ``kind``: ``oom`` raises ``torch.OutOfMemoryError`` with a CUDA-style message; ``interrupt`` sends this
    process SIGINT (as Ctrl-C does); ``error`` raises ``RuntimeError``.
    """

    kind: str
    phase: str
    step: int | None
    when: tuple[str, int] | None = None     # ("batch", 4): only in runs with batch >= 4 (--until-oom tests);
    #                                         ("rank", 1): only on rank 1 of a multi-process run

    @classmethod
    def parse(cls, text: str | None) -> Fault | None:
        """``"oom@backward:2"``, ``"interrupt@forward:1"``, ``"error@load"``, ``"oom@forward:0 if batch>=4"``,
        ``"oom@backward:1 if rank==1"``; ``None``/empty -> ``None``."""
        if not text:
            return None
        m = re.fullmatch(r"(oom|interrupt|error)@([a-z]+)(?::([0-9]+))?"
                         r"(?:\s+if\s+(?:(batch|seq)>=([0-9]+)|rank==([0-9]+)))?", text.strip())
        if not m or m.group(2) not in PHASE_NAMES:
            raise FaultError(f"{FAULT_ENV}={text!r} is not a fault: write KIND@PHASE[:STEP][ if batch|seq>=N | "
                             f"if rank==R] with KIND one of oom, interrupt, error and PHASE one of "
                             f"{', '.join(PHASE_NAMES)} (e.g. oom@backward:2)")
        when = (m.group(4), int(m.group(5))) if m.group(4) else ("rank", int(m.group(6))) if m.group(6) else None
        return cls(m.group(1), m.group(2), int(m.group(3)) if m.group(3) is not None else None, when)

    def applies_to(self, setup: Any, rank: int = 0) -> bool:
        """Whether this fault is armed for a run of ``setup`` on ``rank`` (0 in a single-process run)."""
        if self.when is None:
            return True
        if self.when[0] == "rank":
            return rank == self.when[1]
        return getattr(setup, self.when[0]) >= self.when[1]

    def matches(self, phase: str, step: int | None) -> bool:
        return self.phase == phase and (self.step is None or self.step == step)

    def fire(self) -> None:
        if self.kind == "oom":
            import torch

            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
                f"1.02 GiB is free. (injected by {FAULT_ENV}={self.kind}@{self.phase}:{self.step})")
        if self.kind == "interrupt":
            if threading.current_thread() is threading.main_thread():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1.0)     # the handler raises KeyboardInterrupt at the next bytecode boundary
            raise KeyboardInterrupt
        raise RuntimeError(f"injected failure ({FAULT_ENV}={self.kind}@{self.phase}:{self.step})")


class PhaseTracker:
    """Records phases with their allocator peaks, NVML and RSS readings, on the run's clock.

    Args:
        t0: the run's clock origin (``time.perf_counter()``).
        cuda_index: CUDA device index, or ``None`` on the CPU (allocator peaks are then null).
        read_device_used: returns NVML device-used bytes, or ``None``.
        read_rss: returns the process RSS, or ``None``.
        fault: an injected failure, fired when its phase begins.
    """

    def __init__(self, t0: float, *, cuda_index: int | None, read_device_used: Callable[[], int | None],
                 read_rss: Callable[[], int | None], fault: Fault | None = None) -> None:
        self.t0 = t0
        self.cuda_index = cuda_index
        self.read_device_used = read_device_used
        self.read_rss = read_rss
        self.fault = fault
        self.phases: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self.step: int | None = None
        self.measure_from_step = 0
        self.t_measure: float | None = None      # start of the first measured step
        self.window_peaks: dict[str, int | None] = {k: None for k in PEAK_KEYS}
        self.all_peaks: dict[str, int | None] = {k: None for k in PEAK_KEYS}
        self.step_starts: dict[int, float] = {}
        self.on_step_end: Callable[[int], None] | None = None
        self._torch: Any = None
        if cuda_index is not None:
            import torch

            self._torch = torch

    # --------------------------------------------------------------------------------------- allocator
    def _sync(self) -> None:
        if self._torch is not None:
            self._torch.cuda.synchronize(self.cuda_index)

    def _read_peaks(self) -> dict[str, int | None]:
        if self._torch is None:
            return {k: None for k in PEAK_KEYS}
        stats = self._torch.cuda.memory_stats(self.cuda_index)
        return {k: int(stats.get(v, 0)) for k, v in PEAK_KEYS.items()}

    def _fold(self, peaks: dict[str, int | None]) -> None:
        for k, v in peaks.items():
            if v is None:
                continue
            a = self.all_peaks[k]
            self.all_peaks[k] = v if a is None else max(a, v)
            if self.measuring:
                w = self.window_peaks[k]
                self.window_peaks[k] = v if w is None else max(w, v)

    def _reset(self) -> None:
        if self._torch is not None:
            self._fold(self._read_peaks())
            self._torch.cuda.reset_peak_memory_stats(self.cuda_index)

    @property
    def measuring(self) -> bool:
        return self.step is not None and self.step >= self.measure_from_step

    def now(self) -> float:
        return time.perf_counter() - self.t0

    # ------------------------------------------------------------------------------------------- steps
    def step_begin(self, step: int) -> None:
        self._sync()
        self._reset()           # gap since the last phase belongs to the previous step
        self.step = step
        self.step_starts[step] = self.now()
        if self.measuring and self.t_measure is None:
            self.t_measure = self.step_starts[step]

    def step_end(self, step: int) -> None:
        self._sync()
        self._fold(self._read_peaks())
        if self.on_step_end is not None:
            self.on_step_end(step)

    # ------------------------------------------------------------------------------------------ phases
    def begin(self, name: str, step: int | None) -> None:
        if self.current is not None:      # a phase left open (an exception inside a wrapped call)
            self.end()
        self._sync()
        self._reset()
        self.current = {"name": name, "step": step, "t_start": self.now()}
        if self.fault is not None and self.fault.matches(name, step):
            fault, self.fault = self.fault, None
            fault.fire()

    def end(self, status: str | None = None) -> dict[str, Any] | None:
        """Close the open phase (``status`` marks one that failed: ``oom``, ``interrupted``, ``error``)."""
        if self.current is None:
            return None
        phase = self.current
        self.current = None
        with contextlib.suppress(Exception):   # after an OOM or a CUDA error, still write what we can
            self._sync()
        try:
            peaks = self._read_peaks()
        except Exception:
            peaks = {k: None for k in PEAK_KEYS}
        self._fold(peaks)
        phase["t_end"] = self.now()
        phase.update(peaks)
        phase["device_used_bytes"] = self.read_device_used()
        phase["rss_bytes"] = self.read_rss()
        if status is not None:
            phase["status"] = status
        self.phases.append(phase)
        return phase

    @contextlib.contextmanager
    def phase(self, name: str, step: int | None) -> Iterator[None]:
        self.begin(name, step)
        try:
            yield
        except BaseException:
            # Leave it open: the runner closes it with the failure's status.
            raise
        self.end()
