"""Invariants of the replay on random traces (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vramplan.allocator import CachingAllocator, parse_alloc_conf
from vramplan.allocator.replay import OutOfMemory

MiB = 1 << 20
CONFS = ("", "expandable_segments:True", "max_split_size_mb:40", "roundup_power2_divisions:4",
         "garbage_collection_threshold:0.6,per_process_memory_fraction:0.9",
         "expandable_segments:True,roundup_power2_divisions:[1:1,16:4,>:8]")

sizes = st.one_of(st.integers(1, 4096), st.integers(4096, 2 * MiB), st.integers(2 * MiB, 160 * MiB))
# an op: ("a", size, stream) allocates, ("f", k) frees the k-th live block (mod count), ("e",) empties the cache
ops = st.lists(st.one_of(st.tuples(st.just("a"), sizes, st.integers(0, 1)),
                         st.tuples(st.just("f"), st.integers(0, 1000)),
                         st.tuples(st.just("e"))), max_size=60)


def mapped_total(a: CachingAllocator) -> tuple[int, int]:
    segs = a.segment_sizes()
    return sum(s[2] for s in segs), sum(s[3] for s in segs)


@settings(max_examples=120, deadline=None)
@given(ops=ops, conf=st.sampled_from(CONFS), capacity=st.sampled_from((None, 400 * MiB, 900 * MiB)))
def test_invariants(ops, conf, capacity):
    a = CachingAllocator(parse_alloc_conf(conf), capacity)
    live: list[tuple[object, int]] = []
    for op in ops:
        before_res, before_alloc = a.reserved, a.allocated
        retries, frees = a.num_alloc_retries, a.num_device_free
        if op[0] == "a":
            try:
                b = a.malloc(op[1], op[2])
            except OutOfMemory:
                assert capacity is not None and a.allocated == before_alloc
                continue
            assert b.size >= op[1]
            live.append((b, b.size))
            a._live[id(b)] = b
            assert a.allocated == before_alloc + b.size
        elif op[0] == "f" and live:
            b, size = live.pop(op[1] % len(live))
            del a._live[id(b)]
            a.free(b)
            # every free returns exactly what was allocated, and a free never changes reserved memory
            assert a.allocated == before_alloc - size
            assert a.reserved == before_res
        elif op[0] == "e":
            a.empty_cache()
        # reserved >= allocated at every event; the segments account for both counters
        assert a.reserved >= a.allocated >= 0
        assert mapped_total(a) == (a.reserved, a.allocated)
        assert a.peak_reserved >= a.reserved and a.peak_allocated >= a.allocated
        # segments shrink only through empty_cache, the OOM flush/retry, or gc / oversize release on a miss
        if a.reserved < before_res:
            assert op[0] == "e" or (op[0] == "a" and (a.num_alloc_retries > retries or a.num_device_free > frees
                                                      or capacity is not None or "fraction" in conf))
        if capacity is None and "fraction" not in conf and op[0] != "e":
            assert a.reserved >= before_res
    # once everything is freed, empty_cache gives every byte back (no segment is left split)
    for b, _ in live:
        a.free(b)
    a._live.clear()
    assert a.allocated == 0
    a.empty_cache()
    assert a.reserved == 0 and a.segments == 0


divs = st.sampled_from((0, 1, 2, 4, 8, 16))


@settings(max_examples=200, deadline=None)
@given(es=st.booleans(), split=st.one_of(st.none(), st.integers(20, 1 << 16)), rounding=st.integers(20, 4096),
       div=st.one_of(st.tuples(divs).map(lambda t: t * 16), st.lists(divs, min_size=16, max_size=16).map(tuple)),
       gc=st.one_of(st.just(0.0), st.floats(0.01, 0.99)), frac=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_conf_strings_read_back(es, split, rounding, div, gc, frac):
    from vramplan.allocator.conf import AllocConf

    c = AllocConf(expandable_segments=es, max_split_size=None if split is None else split * MiB,
                  max_non_split_rounding=rounding * MiB, roundup_power2_divisions=div,
                  garbage_collection_threshold=gc, memory_fraction=frac)
    assert parse_alloc_conf(c.describe()) == c


@given(text=st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_conf_parser_accepts_or_raises_one_line(text):
    from vramplan.allocator.conf import AllocConfError

    try:
        parse_alloc_conf(text)
    except AllocConfError as exc:
        assert "\n" not in str(exc)
