"""The replay against the caching allocator's documented rules, on hand-made traces.

Every expected number is worked out by hand from the rules of ``c10/cuda/CUDACachingAllocator.cpp`` (the
function named in each test) and the CUDA semantics notes ("Memory management", "Optimizing memory usage with
PYTORCH_CUDA_ALLOC_CONF"); none is read back from the replay.
"""

from __future__ import annotations

import pytest

from vramplan.allocator import (
    Alloc,
    EmptyCache,
    Free,
    Mark,
    TraceError,
    parse_alloc_conf,
    replay_trace,
    round_size,
)
from vramplan.allocator.replay import allocation_size, roundup_power2_next_division

KiB, MiB = 1 << 10, 1 << 20


def run(events, conf: str = "", capacity: int | None = None):
    return replay_trace(events, parse_alloc_conf(conf), capacity)


# -- round_size, get_allocation_size ----------------------------------------------------------------------

def test_one_byte_is_512_bytes_in_a_2mib_small_segment():
    r = run([Alloc(1, 1)])
    assert r.peak_allocated_bytes == 512          # kMinBlockSize
    assert r.peak_reserved_bytes == 2 * MiB       # kSmallBuffer


def test_rounding_to_512_multiples():
    assert round_size(513) == 1024
    assert round_size(512) == 512
    assert round_size(3 * MiB + 1) == 3 * MiB + 512


def test_one_mib_request_is_small_and_two_share_one_segment():
    # kSmallSize = 1 MiB is the largest small request: two fit one 2 MiB segment, the third needs another
    r = run([Alloc(1, MiB), Alloc(2, MiB)])
    assert r.peak_reserved_bytes == 2 * MiB and r.segments == 1
    r = run([Alloc(1, MiB), Alloc(2, MiB), Alloc(3, MiB)])
    assert r.peak_reserved_bytes == 4 * MiB and r.segments == 2


def test_segment_sizes_kminlargealloc_and_kroundlarge():
    assert run([Alloc(1, MiB + 1)]).peak_reserved_bytes == 20 * MiB     # 1 MiB < size < 10 MiB: kLargeBuffer
    assert run([Alloc(1, 5 * MiB)]).peak_reserved_bytes == 20 * MiB
    assert run([Alloc(1, 10 * MiB - 512)]).peak_reserved_bytes == 20 * MiB
    assert run([Alloc(1, 10 * MiB)]).peak_reserved_bytes == 10 * MiB    # >= kMinLargeAlloc: itself, 2 MiB-rounded
    assert run([Alloc(1, 12 * MiB)]).peak_reserved_bytes == 12 * MiB
    assert run([Alloc(1, 12 * MiB + 1)]).peak_reserved_bytes == 14 * MiB
    assert allocation_size(MiB) == 2 * MiB and allocation_size(MiB + 512) == 20 * MiB


def test_roundup_power2_divisions():
    # the C++ comment's example: 1200 between 1024 and 2048 in 4 divisions -> 1280
    assert roundup_power2_next_division(1200, 4) == 1280
    assert roundup_power2_next_division(1024, 4) == 1024
    c4 = parse_alloc_conf("roundup_power2_divisions:4")
    assert round_size(1200, c4) == 1536            # 1200 <= 512 * 4: plain 512 B rounding
    assert round_size(MiB + 1, c4) == MiB + 256 * KiB
    assert round_size(5 * MiB + 1, c4) == 6 * MiB  # interval [4, 8) MiB in steps of 1 MiB
    per = parse_alloc_conf("roundup_power2_divisions:[256:1,512:2,>:4]")
    assert round_size(300 * MiB, per) == 300 * MiB  # [256, 512) MiB: 1 division = no power-of-2 rounding
    assert round_size(600 * MiB, per) == 768 * MiB  # [512, 1024) MiB in 2 divisions
    assert round_size(1100 * MiB, per) == 1280 * MiB


# -- get_free_block, should_split, free_block ------------------------------------------------------------

def test_split_remainder_is_reused():
    # 5 MiB takes a 20 MiB segment, split; three more 5 MiB fit its remainder; the fifth needs a new segment
    four = [Alloc(i, 5 * MiB) for i in range(4)]
    assert run(four).peak_reserved_bytes == 20 * MiB
    assert run(four + [Alloc(9, 5 * MiB)]).peak_reserved_bytes == 40 * MiB


def test_freed_neighbours_merge_and_serve_a_larger_request():
    r = run([Alloc(1, 5 * MiB), Alloc(2, 5 * MiB), Free(1), Free(2), Alloc(3, 18 * MiB)])
    assert r.peak_reserved_bytes == 20 * MiB and r.segments == 1


def test_large_block_not_split_when_remainder_at_most_1mib():
    # 11.5 MiB reuses the free 12 MiB block; 0.5 MiB left is not > kSmallSize: the whole block is handed out
    r = run([Alloc(1, 12 * MiB), Free(1), Alloc(2, 11 * MiB + 512 * KiB)])
    assert r.peak_reserved_bytes == 12 * MiB
    assert r.allocated_bytes == 12 * MiB           # memory_allocated counts the block, not the request


def test_best_fit_takes_the_smallest_block_that_fits():
    r = run([Alloc(1, 40 * MiB), Alloc(2, 30 * MiB), Free(1), Free(2), Alloc(3, 28 * MiB), Alloc(4, 39 * MiB)])
    assert r.peak_reserved_bytes == 70 * MiB       # 28 -> the 30 block, 39 -> the 40 block: no new segment


def test_streams_do_not_share_blocks():
    assert run([Alloc(1, 5 * MiB), Free(1), Alloc(2, 5 * MiB)]).peak_reserved_bytes == 20 * MiB
    assert run([Alloc(1, 5 * MiB, 0), Free(1), Alloc(2, 5 * MiB, 1)]).peak_reserved_bytes == 40 * MiB


# -- max_split_size_mb, max_non_split_rounding -----------------------------------------------------------

def test_max_split_size_keeps_large_cached_blocks_whole():
    trace = [Alloc(1, 100 * MiB), Free(1), Alloc(2, 30 * MiB)]
    assert run(trace).peak_reserved_bytes == 100 * MiB                        # split: 30 + 70
    assert run(trace, "max_split_size_mb:64").peak_reserved_bytes == 130 * MiB  # oversize block refused


def test_oversize_block_serves_requests_within_20mib():
    conf = "max_split_size_mb:64"
    r = run([Alloc(1, 100 * MiB), Free(1), Alloc(2, 90 * MiB)], conf)
    assert r.peak_reserved_bytes == 100 * MiB and r.allocated_bytes == 100 * MiB   # 100 < 90 + 20: reused whole
    r = run([Alloc(1, 100 * MiB), Free(1), Alloc(2, 80 * MiB)], conf)
    assert r.peak_reserved_bytes == 180 * MiB                                      # 100 >= 80 + 20: not reused


def test_release_available_cached_blocks_frees_an_oversize_block_before_the_full_flush():
    conf = "max_split_size_mb:64"
    r = run([Alloc(1, 100 * MiB), Free(1), Alloc(2, 30 * MiB)], conf, capacity=120 * MiB)
    assert r.oom is None and r.reserved_bytes == 30 * MiB
    assert r.num_alloc_retries == 0                # freed by release_available_cached_blocks, not the retry


# -- OOM: release_cached_blocks and retry ----------------------------------------------------------------

def test_oom_retry_frees_cached_blocks():
    r = run([Alloc(1, 100 * MiB), Free(1), Alloc(2, 150 * MiB)], capacity=200 * MiB)
    assert r.oom is None
    assert r.reserved_bytes == 150 * MiB and r.peak_reserved_bytes == 150 * MiB
    assert r.num_alloc_retries == 1 and r.num_device_free == 1


def test_oom_when_live_memory_does_not_fit():
    r = run([Mark("step 1"), Alloc(1, 150 * MiB), Alloc(2, 100 * MiB)], capacity=200 * MiB)
    assert r.oom is not None
    assert (r.oom.event, r.oom.mark, r.oom.size_bytes) == (2, "step 1", 100 * MiB)
    assert r.oom.allocated_bytes == 150 * MiB


def test_oom_from_a_split_segment_with_little_allocated():
    # a live 5 MiB block pins its 20 MiB segment: 30 MiB more does not fit 40 MiB although 5 MiB is allocated
    r = run([Alloc(1, 5 * MiB), Alloc(2, 5 * MiB), Free(1), Alloc(3, 30 * MiB)], capacity=40 * MiB)
    assert r.oom is not None and r.oom.allocated_bytes == 5 * MiB and r.oom.reserved_bytes == 20 * MiB


def test_empty_cache_releases_only_unsplit_segments():
    r = run([Alloc(1, 5 * MiB), Alloc(2, 50 * MiB), Free(2), EmptyCache()])
    assert r.reserved_bytes == 20 * MiB            # the 50 MiB segment went back; the split 20 MiB one stays
    r = run([Alloc(1, 5 * MiB), Alloc(2, 50 * MiB), Free(2), Free(1), EmptyCache()])
    assert r.reserved_bytes == 0


# -- garbage_collection_threshold ------------------------------------------------------------------------

GC_TRACE = [Alloc(1, 60 * MiB), Free(1), Alloc(2, 70 * MiB), Free(2), Alloc(3, 80 * MiB)]


def test_gc_threshold_alone_does_nothing():
    # garbage_collect_cached_blocks runs only when set_fraction: 60 + 70 + 80 stay reserved
    r = run(GC_TRACE, "garbage_collection_threshold:0.5", capacity=400 * MiB)
    assert r.reserved_bytes == 210 * MiB


def test_gc_with_memory_fraction_frees_the_oldest_cached_block():
    # allowed = 0.5 * 400 = 200 MiB; gc above 0.5 * 200 = 100 MiB. At the 80 MiB request: 130 MiB reserved,
    # ages (get_free_block calls since cached) 60 MiB: 2, 70 MiB: 1, average 1.5 -> only the 60 MiB block goes
    r = run(GC_TRACE, "garbage_collection_threshold:0.5,per_process_memory_fraction:0.5", capacity=400 * MiB)
    assert r.reserved_bytes == 150 * MiB and r.num_alloc_retries == 0


def test_memory_fraction_without_gc_flushes_everything_on_the_limit():
    # 130 + 80 > 200 allowed: the full flush frees both cached blocks, then the retry reserves 80
    r = run(GC_TRACE, "per_process_memory_fraction:0.5", capacity=400 * MiB)
    assert r.reserved_bytes == 80 * MiB and r.num_alloc_retries == 1


# -- expandable segments ---------------------------------------------------------------------------------

def test_expandable_maps_pages_of_2mib_small_and_20mib_large():
    es = "expandable_segments:True"
    assert run([Alloc(1, 1)], es).peak_reserved_bytes == 2 * MiB
    assert run([Alloc(1, 5 * MiB)], es).peak_reserved_bytes == 20 * MiB
    assert run([Alloc(1, 25 * MiB)], es).peak_reserved_bytes == 40 * MiB
    # several requests tile one segment: 3 x 12 MiB = 36 MiB -> 2 pages, not 3 segments of 12 MiB + ...
    assert run([Alloc(i, 12 * MiB) for i in range(3)], es).peak_reserved_bytes == 40 * MiB


def test_growing_sizes_fragment_and_expandable_segments_do_not():
    # two 100 MiB tensors per step, then two of 110 MiB, then two of 50 MiB (the Note [Expandable Segments]
    # pattern: size N+1 does not fit the segments made for N)
    trace = []
    for step, s in enumerate((100, 110, 50)):
        trace += [Mark(f"step {step}"), Alloc(2 * step, s * MiB), Alloc(2 * step + 1, s * MiB),
                  Free(2 * step), Free(2 * step + 1)]
    plain = run(trace)
    assert plain.peak_allocated_bytes == 220 * MiB
    assert plain.peak_reserved_bytes == 420 * MiB   # 2 x 100 + 2 x 110 segments
    es = run(trace, "expandable_segments:True")
    assert es.peak_allocated_bytes == 220 * MiB
    assert es.peak_reserved_bytes == 220 * MiB      # one segment grown to 11 pages of 20 MiB
    assert [m.peak_reserved_bytes for m in plain.marks] == [200 * MiB, 420 * MiB, 420 * MiB]


def test_expandable_empty_cache_unmaps_free_pages():
    es = "expandable_segments:True"
    r = run([Alloc(1, 30 * MiB), Alloc(2, 30 * MiB), Free(2), EmptyCache()], es)
    # live: [0, 30) MiB; pages of 20 MiB: page 0 and 1 ([20, 40) holds bytes of block 1) stay, page 2 goes
    assert r.peak_reserved_bytes == 60 * MiB and r.reserved_bytes == 40 * MiB
    r = run([Alloc(1, 30 * MiB), Free(1), EmptyCache()], es)
    assert r.reserved_bytes == 0 and r.segments == 0


# -- the trace format ------------------------------------------------------------------------------------

def test_bad_traces_are_refused():
    with pytest.raises(TraceError, match="not allocated"):
        run([Free(3)])
    with pytest.raises(TraceError, match="again before its free"):
        run([Alloc(1, 10), Alloc(1, 10)])
    with pytest.raises(TraceError, match=">= 1 byte"):
        run([Alloc(1, 0)])


def test_trace_files_snapshots_and_tracker_logs(tmp_path):
    from types import SimpleNamespace

    from vramplan.allocator.trace import from_snapshot_trace, from_tracker, read_trace, to_json

    events = [Mark("s"), Alloc(1, 5 * MiB), Alloc(2, 100, 1), Free(1), EmptyCache(), Free(2)]
    p = tmp_path / "t.json"
    import json

    p.write_text(json.dumps(to_json(events)))
    assert read_trace(p) == events
    p.write_text(json.dumps([{"op": "frob"}]))
    with pytest.raises(TraceError, match="ops are alloc, free"):
        read_trace(p)
    snap = [{"action": "segment_alloc", "addr": 0, "size": 20 * MiB}, {"action": "alloc", "addr": 0, "size": 7},
            {"action": "alloc", "addr": 512, "size": 9}, {"action": "free_requested", "addr": 0, "size": 7},
            {"action": "free_completed", "addr": 0, "size": 7}]
    assert from_snapshot_trace(snap) == [Alloc(0, 7), Alloc(1, 9), Free(0)]
    rec = [SimpleNamespace(raw_nbytes=10), SimpleNamespace(raw_nbytes=0)]
    tr = SimpleNamespace(events=[0, 1, ~0, ~1], records=rec, marks={"forward": 0, "end": 4})
    assert from_tracker(tr) == [Mark("forward"), Alloc(0, 10), Alloc(1, 1), Free(0), Free(1), Mark("end")]
