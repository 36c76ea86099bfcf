"""The same trace on a real GPU: what torch's caching allocator reserves, to compare with the replay.

:func:`replay_on_device` runs in a fresh interpreter (``python -m vramplan.allocator.device TRACE.json CONF``)
so that ``PYTORCH_CUDA_ALLOC_CONF`` is read before the first CUDA allocation. Each :class:`~.trace.Alloc`
becomes ``torch.empty(size, dtype=torch.uint8)`` on the event's stream, each :class:`~.trace.Free` drops the
tensor, :class:`~.trace.EmptyCache` calls ``torch.cuda.empty_cache()``. It records ``memory_reserved()`` after
every event, the peaks, and ``torch.cuda.memory._snapshot()``'s segments at the end. torch is imported only
here, inside the functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from .trace import Alloc, EmptyCache, Event, Free, from_json, to_json


def _run(events: Sequence[Event]) -> dict[str, Any]:
    import torch

    streams: dict[int, Any] = {0: torch.cuda.current_stream()}
    live: dict[int, Any] = {}
    reserved: list[int] = []
    torch.cuda.reset_peak_memory_stats()
    base_reserved = torch.cuda.memory_reserved()
    for e in events:
        if isinstance(e, Alloc):
            s = streams.get(e.stream)
            if s is None:
                s = streams[e.stream] = torch.cuda.Stream()
            with torch.cuda.stream(s):
                live[e.id] = torch.empty(e.size, dtype=torch.uint8, device="cuda")
        elif isinstance(e, Free):
            del live[e.id]
        elif isinstance(e, EmptyCache):
            torch.cuda.empty_cache()
        reserved.append(torch.cuda.memory_reserved() - base_reserved)
    segs = [(s["segment_type"] == "small", bool(s.get("is_expandable", False)), s["total_size"],
             s["allocated_size"]) for s in torch.cuda.memory._snapshot()["segments"]]
    return {"torch": torch.__version__, "device": torch.cuda.get_device_name(),
            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(), "peak_allocated_bytes":
            torch.cuda.max_memory_allocated(), "reserved_after_event": reserved, "segments": segs}


def replay_on_device(events: Sequence[Event], alloc_conf: str = "", timeout_s: float = 600) -> dict[str, Any]:
    """Run ``events`` through torch's allocator in a fresh interpreter with ``alloc_conf``; the result dict
    (``peak_reserved_bytes``, ``peak_allocated_bytes``, ``reserved_after_event``, ``segments`` as
    ``(is_small, is_expandable, total bytes, allocated bytes)``)."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(to_json(list(events)), f)
        path = f.name
    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF=alloc_conf)
    try:
        out = subprocess.run([sys.executable, "-m", "vramplan.allocator.device", path], env=env, check=True,
                             capture_output=True, text=True, timeout=timeout_s)
    finally:
        os.unlink(path)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":                                   # pragma: no cover - needs a GPU
    from ..io import RECORD_MAX_BYTES, read_json
    from .trace import TraceError

    # bounded, like every trace file (read_trace would also check it; the trace given here is replayed as is)
    print(json.dumps(_run(from_json(read_json(sys.argv[1], RECORD_MAX_BYTES, error=TraceError, what="trace")))))
