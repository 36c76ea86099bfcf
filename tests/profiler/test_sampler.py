"""The background sampler and the NVML reader, without a model."""

from __future__ import annotations

import statistics
import threading
import time

import pytest

from vramplan.profiler.sampler import SAMPLE_COLUMNS, Nvml, Sampler, rss_bytes

MB = 10**6


def test_sampler_starts_and_stops_cleanly():
    before = threading.active_count()
    s = Sampler(200, time.perf_counter()).start()
    assert s.running
    time.sleep(0.2)
    s.stop()
    assert not s.running and threading.active_count() == before
    cols = s.snapshot()
    n = len(cols["t"])
    assert set(cols) == set(SAMPLE_COLUMNS) and all(len(v) == n for v in cols.values())
    assert 10 <= n <= 60, f"200 Hz for 0.2 s gives ~40 samples, got {n}"
    assert cols["t"] == sorted(cols["t"])
    assert all(v is None for v in cols["allocated_bytes"] + cols["device_used_bytes"]), "no CUDA, no NVML given"
    assert all(isinstance(v, int) and v > 0 for v in cols["rss_bytes"])


def test_sampler_catches_a_100ms_spike_of_200MB():
    import torch

    t0 = time.perf_counter()
    with Sampler(200, t0) as s:
        time.sleep(0.1)
        t_spike = time.perf_counter() - t0
        buf = torch.ones(200 * MB // 4, dtype=torch.float32)    # touched pages: RSS really grows
        time.sleep(0.1)
        t_end = time.perf_counter() - t0
        del buf
        time.sleep(0.1)
    cols = s.snapshot()
    baseline = statistics.median(v for t, v in zip(cols["t"], cols["rss_bytes"], strict=True) if t < t_spike)
    peak = s.max_in("rss_bytes", t_spike, t_end + 0.01)
    assert peak - baseline >= 180 * MB, f"spike seen as {(peak - baseline) / MB:.0f} MB above baseline"


def test_sampler_rejects_nonpositive_rate():
    with pytest.raises(ValueError, match="sample rate must be > 0 Hz"):
        Sampler(0, 0.0)


def test_nvml_missing_gives_one_warning_and_null_readings(no_nvml):
    warnings: list[str] = []
    nvml = Nvml(warn=warnings.append)
    assert warnings == ["NVML unavailable (NVMLError_LibraryNotFound: NVML Shared Library Not Found): "
                        "device-used and per-process counters are recorded as null"]
    assert not nvml.available and not nvml.bind(0)
    assert nvml.device_used() is None and nvml.process_used() is None and nvml.used_by_uuid() == {}
    assert nvml.info() == {"nvml": "NVMLError_LibraryNotFound: NVML Shared Library Not Found"}


def test_rss_is_positive():
    assert rss_bytes() > 10 * MB
