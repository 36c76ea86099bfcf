"""The allocation trace the replay reads: alloc/free events with sizes, in program order.

A trace is a sequence of events:

* :class:`Alloc` ``(id, size, stream)`` — ``torch.empty(size bytes)`` on ``stream`` (0 = the default stream);
  ``size`` is what the program asks for (the replay rounds it as ``round_size`` does); ``id`` names the
  tensor's storage until it is freed (an id may be reused after its free).
* :class:`Free` ``(id)`` — the storage's last reference dies (``free`` → ``free_block``; cross-stream uses
  through ``recordStream`` are not modelled: a free completes at once).
* :class:`EmptyCache` — ``torch.cuda.empty_cache()`` (``emptyCache`` → ``release_cached_blocks``).
* :class:`Mark` ``(label)`` — a step boundary or any label; the replay records where each mark fell.

On disk (:func:`read_trace`): JSON, a list of objects ``{"op": "alloc", "id": 3, "size": 4096, "stream": 0}``,
``{"op": "free", "id": 3}``, ``{"op": "empty_cache"}``, ``{"op": "mark", "label": "step 1"}``. A
``torch.cuda.memory._snapshot()`` trace (``device_traces[0]``, actions ``alloc`` / ``free_completed``, keyed by
address) converts with :func:`from_snapshot_trace`.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import VramplanError


class TraceError(VramplanError):
    """A trace that cannot be replayed (unknown op, a free of an id that is not allocated, a bad size)."""


class Alloc(NamedTuple):
    id: int
    size: int
    stream: int = 0


class Free(NamedTuple):
    id: int


class EmptyCache(NamedTuple):
    pass


class Mark(NamedTuple):
    label: str


Event = Alloc | Free | EmptyCache | Mark


def check_event(n: int, e: Event, live: Container[int]) -> None:
    """Raise :class:`TraceError` when event ``n`` cannot happen given the ids ``live`` before it: a size below
    1 byte, an alloc of an id still live, a free of an id that is not live."""
    if isinstance(e, Alloc):
        if e.size < 1:
            raise TraceError(f"trace event {n}: alloc of {e.size} bytes (sizes are >= 1 byte)")
        if e.id in live:
            raise TraceError(f"trace event {n}: id {e.id} is allocated again before its free")
    elif isinstance(e, Free) and e.id not in live:
        raise TraceError(f"trace event {n}: free of id {e.id}, which is not allocated")


def check_trace(events: Iterable[Event]) -> None:
    """Raise :class:`TraceError` at the first event that cannot happen (:func:`check_event`)."""
    live: set[int] = set()
    for n, e in enumerate(events):
        check_event(n, e, live)
        if isinstance(e, Alloc):
            live.add(e.id)
        elif isinstance(e, Free):
            live.discard(e.id)


def to_json(events: Sequence[Event]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, Alloc):
            out.append({"op": "alloc", "id": e.id, "size": e.size, "stream": e.stream})
        elif isinstance(e, Free):
            out.append({"op": "free", "id": e.id})
        elif isinstance(e, EmptyCache):
            out.append({"op": "empty_cache"})
        else:
            out.append({"op": "mark", "label": e.label})
    return out


def from_json(items: Sequence[dict[str, Any]], where: str = "trace") -> list[Event]:
    """Events from :func:`to_json`'s objects."""
    out: list[Event] = []
    for n, d in enumerate(items):
        op = d.get("op") if isinstance(d, dict) else None
        try:
            if op == "alloc":
                out.append(Alloc(int(d["id"]), int(d["size"]), int(d.get("stream", 0))))
            elif op == "free":
                out.append(Free(int(d["id"])))
            elif op == "empty_cache":
                out.append(EmptyCache())
            elif op == "mark":
                out.append(Mark(str(d.get("label", ""))))
            else:
                raise TraceError(f"{where}: event {n} has op {op!r}; ops are alloc, free, empty_cache, mark")
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"{where}: event {n} ({d!r}) lacks or mistypes a field: {exc}") from None
    return out


def read_trace(path: str | Path) -> list[Event]:
    """Read a JSON trace file (see the module docstring) and check it."""
    from ..io import RECORD_MAX_BYTES, read_json

    p = Path(path)
    items = read_json(p, RECORD_MAX_BYTES, error=TraceError, what="trace")    # bounded: size, FIFOs, depth
    if not isinstance(items, list):
        raise TraceError(f"trace {str(p)!r} must hold a JSON list of events, got {type(items).__name__}")
    events = from_json(items, f"trace {str(p)!r}")
    check_trace(events)
    return events


def from_snapshot_trace(entries: Iterable[dict[str, Any]]) -> list[Event]:
    """Events from ``torch.cuda.memory._snapshot()["device_traces"][i]``: ``alloc`` entries become
    :class:`Alloc` (keyed by address, sized by the requested ``size``), ``free_completed`` become
    :class:`Free`; segment, OOM and snapshot entries are the allocator's own and are dropped."""
    ids: dict[int, int] = {}
    out: list[Event] = []
    n = 0
    for e in entries:
        action = e.get("action")
        if action == "alloc":
            ids[e["addr"]] = n
            out.append(Alloc(n, int(e["size"]), int(e.get("stream", 0) or 0)))
            n += 1
        elif action == "free_completed" and e["addr"] in ids:
            out.append(Free(ids.pop(e["addr"])))
    return out


def from_tracker(tracker: Any) -> list[Event]:
    """Events from the simulator's allocation tracker (``vramplan/simulate/tracker.py``: ``Tracker.events``
    holds ``rid`` for an allocation and ``~rid`` for its free; ``Tracker.records[rid].raw_nbytes`` is the
    storage's size before rounding; ``Tracker.marks`` names event positions). Duck-typed: no torch import."""
    marks: dict[int, list[str]] = {}
    for name, at in getattr(tracker, "marks", {}).items():
        marks.setdefault(at, []).append(name)
    out: list[Event] = []
    for n, e in enumerate(tracker.events):
        out.extend(Mark(m) for m in marks.get(n, ()))
        if e >= 0:
            out.append(Alloc(e, max(int(tracker.records[e].raw_nbytes), 1)))
        else:
            out.append(Free(~e))
    out.extend(Mark(m) for m in marks.get(len(tracker.events), ()))
    return out
