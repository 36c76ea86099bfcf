"""PyTorch's own allocator tests, ported: ``test/test_cuda.py`` ``test_allocator_settings``,
``test_roundup_power2_divisions_0`` / ``_1`` and the refused settings (read in the torch_mlu mirror of those
tests, which keeps upstream's sizes, helper and assertions). Their expected values come from the tests'
``power2_div`` helper, restated here as upstream writes it, not from the replay."""

from __future__ import annotations

import pytest

from vramplan.allocator import Alloc, AllocConfError, parse_alloc_conf, replay_trace

MiB = 1 << 20


def power2_div(size: int, div_factor: int) -> int:
    """upstream's helper: the next of ``div_factor`` steps between the powers of two around ``size``."""
    pow2 = 1
    while pow2 < size:
        pow2 *= 2
    if pow2 == size:
        return pow2
    step = pow2 // 2 // div_factor
    ret = pow2 // 2
    while ret < size:
        ret += step
    return ret


def roundup_512(size: int) -> int:
    return 512 if size < 512 else 512 * ((size + 511) // 512)


def allocated(nbytes: int, conf: str) -> int:
    """``active_bytes.all.allocated`` after one ``torch.rand(nbytes // 4)`` on an empty cache."""
    return replay_trace([Alloc(0, nbytes)], parse_alloc_conf(conf)).peak_allocated_bytes


NBYTES = 4 * 21 * MiB           # nelems = 21 * 1024 * 1024 floats
NBYTES_BIG = 4 * 100 * MiB


def test_allocator_settings():
    assert allocated(NBYTES, "") == NBYTES
    assert allocated(NBYTES, "roundup_power2_divisions:4") == power2_div(NBYTES, 4)          # 96 MiB
    assert allocated(NBYTES, "garbage_collection_threshold:0.5,max_split_size_mb:70") == NBYTES
    knob = "garbage_collection_threshold:0.5,roundup_power2_divisions:[64:8,128:2,256:2,512:2,1024:1,>:1]"
    assert allocated(NBYTES, knob) == power2_div(NBYTES, 8)                                   # 88 MiB
    assert allocated(NBYTES_BIG, knob) == power2_div(NBYTES_BIG, 2)                           # 512 MiB


def test_roundup_power2_divisions_0():
    conf = "roundup_power2_divisions:[128:1,256:0,512:4]"
    assert allocated(4 * 67 * MiB, conf) == 4 * 67 * MiB                  # [256, 512) MB: 0 = no roundup
    assert allocated(4 * 130 * MiB, conf) == power2_div(4 * 130 * MiB, 4)  # [512, 1024) MB in 4: 640 MiB


def test_roundup_power2_divisions_1():
    nbytes = 4 * 21 * 125 * 125
    assert allocated(nbytes, "") == roundup_512(nbytes)
    assert allocated(nbytes, "roundup_power2_divisions:1") == roundup_512(nbytes)


@pytest.mark.parametrize("bad", ["foo:1,bar:2", "garbage_collection_threshold:1.2", "max_split_size_mb:2"])
def test_refused_settings(bad):
    with pytest.raises(AllocConfError):
        parse_alloc_conf(bad)


def test_raises_oom():
    # torch.empty(1024 ** 4 bytes) raises OutOfMemoryError, with and without max_split_size_mb
    for conf in ("max_split_size_mb:1024", ""):
        r = replay_trace([Alloc(0, 1024 ** 4)], parse_alloc_conf(conf), 80 * 1024 ** 3)
        assert r.oom is not None and r.oom.event == 0


def test_memory_fraction_oom_then_release_available_cached_blocks():
    # upstream's test_garbage_collect / expandable-toggling tests set a fraction allowing 120 MiB, fill it with
    # three 40 MiB tensors (max_split_size_mb:40), expect OutOfMemoryError on a fourth, then free all and
    # allocate 120 MiB; the expandable toggling between allocations is not modelled (one conf per run)
    from vramplan.allocator import Free

    conf = "max_split_size_mb:40,per_process_memory_fraction:0.5"
    full = [Alloc(i, 40 * MiB) for i in range(3)]
    r = replay_trace(full + [Alloc(3, 40 * MiB)], parse_alloc_conf(conf), 240 * MiB)
    assert r.oom is not None and r.oom.event == 3
    r = replay_trace(full + [Free(0), Free(1), Free(2), Alloc(4, 120 * MiB)], parse_alloc_conf(conf), 240 * MiB)
    # release_available_cached_blocks frees the three oversize 40 MiB blocks (largest first) before any retry
    assert r.oom is None and r.reserved_bytes == 120 * MiB and r.num_alloc_retries == 0
