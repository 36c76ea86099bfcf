"""Length distributions, batching rules, the per-step trace and the run-level reserved peak."""

from __future__ import annotations

import json
import math
import random

import pytest

from vramplan.allocator import replay_trace
from vramplan.allocator.lengths import (
    LengthsError,
    StepModel,
    parse_lengths,
    reserved_fixes,
    run_reserved,
    step_shapes,
)
from vramplan.estimate.grid import estimate_counters
from vramplan.profiles import resolve_model
from vramplan.setup import Setup

GiB = 1 << 30


@pytest.fixture(scope="module")
def qwen():
    return resolve_model("qwen3-0.6b").spec


def test_list_and_profile_and_errors():
    d = parse_lengths("300,812,2048")
    assert d.lengths == (300, 812, 2048) and d.weights == (1.0, 1.0, 1.0)
    assert parse_lengths(None) is None
    assert parse_lengths("alpaca").name == "alpaca"
    with pytest.raises(LengthsError, match="profiles: alpaca"):
        parse_lengths("alpacca")
    with pytest.raises(LengthsError, match=">= 1 token"):
        parse_lengths("0,5")


def test_alpaca_profile_is_the_documented_lognormal():
    d = parse_lengths("alpaca")
    total = sum(d.weights)

    def quantile(q):
        acc = 0.0
        for L, w in zip(d.lengths, d.weights, strict=True):
            acc += w
            if acc >= q * total:
                return L
    # a log-normal's median is e^mu = 180; its 99th percentile is 180 * e^(2.3263 * 0.6) = 727.7 (8-token bins)
    assert abs(quantile(0.5) - 180) <= 8
    assert abs(quantile(0.99) - 180 * math.exp(2.3263 * 0.6)) <= 8
    assert min(d.lengths) == 16 and max(d.lengths) == 2048


def test_histogram_files(tmp_path, monkeypatch):
    csv = tmp_path / "h.csv"
    csv.write_text("length,count\n128,3\n1024,1\n")
    d = parse_lengths(str(csv))
    assert d.lengths == (128, 1024) and d.weights == (3.0, 1.0)
    js = tmp_path / "h.json"
    js.write_text(json.dumps({"64": 2, "4096": 5}))
    assert parse_lengths(str(js)).lengths == (64, 4096)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nx,y\n")
    with pytest.raises(LengthsError, match="not a histogram"):
        parse_lengths(str(bad))
    import vramplan.allocator.lengths as lengths_mod

    monkeypatch.setattr(lengths_mod, "MAX_HISTOGRAM_BYTES", 10)
    with pytest.raises(LengthsError, match="at most 10"):
        parse_lengths(str(csv))


def test_batching_rules():
    d = parse_lengths("100,5000")
    trunc = step_shapes(d, 4, 1024, 50, seed=1)
    assert {s for _, s in trunc} == {100, 1024}            # a batch holding a 5000 is cut to --seq
    drop = step_shapes(d, 4, 1024, 50, seed=1, long_samples="drop")
    assert {s for _, s in drop} == {100}
    assert step_shapes(d, 4, 1024, 3, batching="fixed") == [(4, 1024)] * 3
    assert step_shapes(None, 2, 512, 2) == [(2, 512), (2, 512)]
    assert step_shapes(d, 4, 1024, 10, seed=7) == step_shapes(d, 4, 1024, 10, seed=7)   # deterministic
    mult = step_shapes(parse_lengths("100"), 2, 1024, 1, multiple_of=64)
    assert mult == [(2, 128)]
    packed = step_shapes(parse_lengths("300"), 4, 1024, 2, batching="pack")
    assert packed == [(1, 3 * 300 * 4)] * 2                 # 3 samples of 300 fill a 1024 row, 4 rows
    with pytest.raises(LengthsError, match="none is left"):
        step_shapes(parse_lengths("5000"), 4, 1024, 1, long_samples="drop")


def test_longest_batching_matches_a_direct_draw():
    d = parse_lengths("10,20,30,40")
    rng = random.Random(3)
    want = [max(rng.choices(d.lengths, d.weights, k=2)) for _ in range(5)]
    assert [s for _, s in step_shapes(d, 2, 1024, 5, seed=3)] == want


@pytest.mark.parametrize("kw", [{}, {"grad_ckpt": True}, {"method": "qlora", "quant": "nf4"}, {"loss": "chunked"},
                                {"method": "full", "logits_to_keep": True, "prompt_tokens": 1000}])
@pytest.mark.parametrize("shape", [(2, 2048), (3, 517)])
def test_step_trace_peak_is_the_estimators(qwen, kw, shape):
    setup = Setup(batch=2, seq=2048, **kw)
    m = StepModel(qwen, setup)
    r = replay_trace(m.persistent() + m.step(*shape))
    want = estimate_counters(qwen, setup, [shape])[0].peak_allocated_bytes
    # the replay counts a whole block when the allocator does not split it (a remainder <= 1 MiB): a little more
    assert want <= r.peak_allocated_bytes <= want * 1.01, (r.peak_allocated_bytes, want)


def test_fixed_lengths_reserve_close_to_allocated_and_variable_lengths_do_not(qwen):
    setup = Setup(batch=4, seq=8192)
    fixed = run_reserved(qwen, setup, None, steps=5)
    # at one shape the only cached-but-unusable segment is the bf16 logits' (4 x 8192 tokens x 151,936 x 2 B):
    # freed after logits.float(), too small for the fp32 gradients that follow
    logits = 4 * 8192 * qwen.vocab_size * 2
    assert logits <= fixed.peak_reserved_bytes - fixed.peak_allocated_bytes <= logits + GiB
    var = run_reserved(qwen, setup, "alpaca", steps=60)
    assert var.peak_reserved_bytes > 1.3 * var.peak_allocated_bytes
    es = run_reserved(qwen, setup, "alpaca", steps=60, alloc_conf="expandable_segments:True")
    # one growing segment: what stays unusable is again the bf16 logits' hole, now at the longest batch
    b, s = es.longest
    assert 0 <= es.peak_reserved_bytes - es.peak_allocated_bytes <= b * s * qwen.vocab_size * 2 + 256 * (1 << 20)
    assert es.peak_reserved_bytes < var.peak_reserved_bytes


def test_oom_step_and_fixes(qwen):
    setup = Setup(batch=4, seq=8192)
    var = run_reserved(qwen, setup, "alpaca", steps=60)
    cap = (var.peak_allocated_bytes + var.peak_reserved_bytes) // 2    # fits the allocations, not the cache
    r = run_reserved(qwen, setup, "alpaca", steps=60, capacity_bytes=cap)
    assert r.oom_step is None or r.oom_step >= 1
    base, fixes = reserved_fixes(qwen, setup, "alpaca", steps=60, capacity_bytes=cap)
    names = [f.name for f in fixes]
    assert set(names) == {"expandable_segments:True", "fixed padding", "max_split_size_mb:256",
                          "empty_cache every step"}
    assert fixes[0].name == "expandable_segments:True" and fixes[0].result.oom_step is None
    assert fixes[-1].name == "fixed padding" and fixes[-1].result.oom_step is not None   # 4 x 8192 needs ~104 GiB


def test_constant_shapes_replay_a_few_steps_for_the_same_answer(qwen, monkeypatch):
    import vramplan.allocator.lengths as lengths_mod

    setup = Setup(batch=2, seq=1024)
    short = run_reserved(qwen, setup, None, steps=40)
    monkeypatch.setattr(lengths_mod, "CONSTANT_STEPS", 1000)
    full = run_reserved(qwen, setup, None, steps=40)
    assert (short.peak_reserved_bytes, short.peak_allocated_bytes) == (full.peak_reserved_bytes,
                                                                       full.peak_allocated_bytes)
    assert short.step_reserved == full.step_reserved and len(short.step_reserved) == 40
