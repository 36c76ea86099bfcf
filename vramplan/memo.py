"""Identity-keyed memos for the objects a sweep reuses (specs, placements, LoRA plans)."""

from __future__ import annotations


class IdCache:
    """A bounded memo keyed by the *identity* of some objects plus hashable extras.

    Hashing a spec's thousands of tensors (or a placements tuple) on every call would dominate sweeps, so the
    key holds their ``id``; the objects are kept in the entry and compared with ``is`` so that a recycled id
    never returns a stale value. The whole cache is dropped when it reaches ``limit`` entries.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries: dict[tuple, tuple[tuple, object]] = {}

    def get(self, objs: tuple, extra: tuple, build):
        key = tuple(id(o) for o in objs) + extra
        hit = self.entries.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], objs, strict=True)):
            return hit[1]
        if len(self.entries) >= self.limit:
            self.entries.clear()
        value = build()
        self.entries[key] = (objs, value)
        return value

    def clear(self) -> None:
        self.entries.clear()
