"""``search_max``: exponential growth then bisection finds the exact boundary of a monotone predicate."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vramplan.planner import search_max


@given(lo=st.integers(1, 50), span=st.integers(0, 5000), threshold=st.integers(-10, 6000),
       start=st.none() | st.integers(-5, 7000))
def test_finds_the_exact_boundary(lo, span, threshold, start):
    hi = lo + span
    calls: list[int] = []

    def ok(n: int) -> bool:
        assert lo <= n <= hi, f"probe {n} outside [{lo}, {hi}]"
        calls.append(n)
        return n <= threshold

    got = search_max(ok, lo, hi, start)
    if threshold < lo:
        assert got is None
    else:
        assert got == min(threshold, hi)
    assert len(calls) == len(set(calls)), "no value is probed twice"
    # O(log) probes: doubling from start plus a bisection
    assert len(calls) <= 2 * (hi.bit_length() + 2) + 2, calls


def test_empty_range_is_none():
    assert search_max(lambda n: True, 5, 4) is None


def test_probe_count_for_a_large_range():
    calls = []
    assert search_max(lambda n: calls.append(n) or n <= 1_000_003, 1, 1 << 30) == 1_000_003
    assert len(calls) <= 45
