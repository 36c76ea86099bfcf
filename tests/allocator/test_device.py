"""The replay against torch's own allocator on a GPU, event by event (skipped without CUDA).

Where a GPU is present, set ``VRAMPLAN_VALIDATION_OUT=reports/validation/allocator-<gpu>.json`` to keep the
comparison as a validation record.
"""

from __future__ import annotations

import json
import os
import random

import pytest

from vramplan.allocator import Alloc, EmptyCache, Free, parse_alloc_conf, replay_trace
from vramplan.allocator.replay import CachingAllocator

MiB = 1 << 20
CONFS = ("", "expandable_segments:True", "max_split_size_mb:64", "roundup_power2_divisions:4")


def _random_trace(seed: int, n: int = 400) -> list:
    rng = random.Random(seed)
    live, out, k = [], [], 0
    for _ in range(n):
        r = rng.random()
        if r < 0.55 or not live:
            size = rng.choice((rng.randint(1, 4096), rng.randint(4096, 2 * MiB), rng.randint(2 * MiB, 90 * MiB)))
            out.append(Alloc(k, size, rng.choice((0, 0, 0, 1))))
            live.append(k)
            k += 1
        elif r < 0.97:
            out.append(Free(live.pop(rng.randrange(len(live)))))
        else:
            out.append(EmptyCache())
    return out


def _replayed(events, conf: str):
    a = CachingAllocator(parse_alloc_conf(conf))
    reserved = []
    for e in events:                  # one event at a time, for the reserved-after-event series
        replay_trace([e], allocator=a)
        reserved.append(a.reserved)
    return a, reserved


@pytest.mark.gpu
@pytest.mark.parametrize("conf", CONFS)
@pytest.mark.parametrize("seed", [0, 1])
def test_replay_matches_torch_event_by_event(conf, seed):
    from vramplan.allocator.device import replay_on_device

    events = _random_trace(seed)
    got = replay_on_device(events, conf)
    a, reserved = _replayed(events, conf)
    record = {"conf": conf, "seed": seed, "torch": got["torch"], "device": got["device"],
              "peak_reserved": [a.peak_reserved, got["peak_reserved_bytes"]],
              "peak_allocated": [a.peak_allocated, got["peak_allocated_bytes"]],
              "events_differing": sum(x != y for x, y in zip(reserved, got["reserved_after_event"], strict=True))}
    out = os.environ.get("VRAMPLAN_VALIDATION_OUT")
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    assert a.peak_allocated == got["peak_allocated_bytes"]
    assert a.peak_reserved == got["peak_reserved_bytes"]
    assert reserved == got["reserved_after_event"]
    assert sorted(map(tuple, got["segments"])) == sorted(a.segment_sizes())
