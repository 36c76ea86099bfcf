"""Searches that grow exponentially and then bisect, and the largest batch, sequence and rank that fit.

They assume the verdict is monotone in the searched value (more batch, sequence or rank never needs less
memory), a property of the estimator that is property-tested with it; under that assumption the result is
exact: the value fits and the next step does not.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``fit`` reports the largest sequence length as a multiple of this (what cutoff_len / max_seq_length values
#: usually are; finer than powers of two, which would under-report by up to half).
SEQ_STEP = 128
#: Search limits: a value equal to its limit means "at least this" (reported in ``at_limit``).
BATCH_LIMIT = 1 << 16
SEQ_LIMIT = 1 << 22
RANK_LIMIT = 1 << 14
#: ``fit`` looks for the fewest GPUs up to this many (``min_gpus`` is ``null`` when even this many do not fit)
MIN_GPUS_LIMIT = 64



def search_max(ok: Callable[[int], bool], lo: int, hi: int, start: int | None = None) -> int | None:
    """The largest ``n`` in ``[lo, hi]`` with ``ok(n)``, for a predicate that is true up to some point.

    Starts at ``start`` (default ``lo``), doubles while ``ok`` holds, then bisects between the last value
    that passed and the first that failed; when ``start`` fails it bisects between ``lo`` and ``start``.

    Returns:
        The largest passing value, ``hi`` when even ``hi`` passes, or ``None`` when ``lo`` fails.
    """
    if lo > hi:
        return None
    seen: dict[int, bool] = {}

    def test(n: int) -> bool:
        if n not in seen:
            seen[n] = ok(n)
        return seen[n]

    start = min(max(start if start is not None else lo, lo), hi)
    if test(start):
        good = start
        while True:
            if good >= hi:
                return hi
            probe = min(hi, max(good * 2, good + 1))
            if test(probe):
                good = probe
            else:
                bad = probe
                break
    else:
        if start == lo or not test(lo):
            return None
        good, bad = lo, start
    while bad - good > 1:
        mid = (good + bad) // 2
        if test(mid):
            good = mid
        else:
            bad = mid
    return good
