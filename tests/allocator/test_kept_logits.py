"""The replay carries the logits LitGPT's loop keeps (issue 14): ``--loss litgpt-chunked`` / ``litgpt-full``.

litgpt 0.5.13 ``finetune/lora.py:355-366`` (and ``full.py:282-290``, the same loop): ``logits = model(input_ids,
lm_head_chunk_size=128)`` is a local that lives through ``fabric.backward`` and ``optimizer.step()`` and is only
rebound — its tensors freed — when the next step's ``model(...)`` has returned its own. ``model.py:177-179`` makes
one ``lm_head`` output per 128-position chunk. So from the second step on, both steps' lists are alive at the head.
Expected values: first principles from that code (chunk sizes, lifetimes), and the analytic estimator's peak whose
LitGPT logits and loss were measured against litgpt on CPU (tests/estimate/test_litgpt_full_logits.py).
"""

from __future__ import annotations

import pytest

from vramplan.allocator.lengths import StepModel, run_trace
from vramplan.allocator.replay import replay_trace
from vramplan.allocator.trace import Alloc, Free
from vramplan.estimate import StepAllocations, estimate_counters
from vramplan.profiles import resolve_model
from vramplan.setup import setup_from_options

SPEC = resolve_model("qwen3-0.6b").spec
V = 151_936

CASES = [({"method": "lora", "stack": "litgpt"}, 1), ({"method": "lora", "stack": "litgpt", "grad_ckpt": True}, 1),
         ({"method": "lora", "stack": "litgpt"}, 2), ({"method": "full", "stack": "litgpt"}, 1)]


def _setup(opts: dict, batch: int, seq: int = 1000):
    return setup_from_options({**opts, "batch": batch, "seq": seq})


def _round(n: int) -> int:
    return -(-n // 512) * 512


def test_the_kept_logits_are_litgpts_chunks():
    """fp32 logits (Fabric's _FabricModule casts the model's output to the default dtype in every precision:
    lightning 2.6.6 fabric/wrappers.py:130-141, measured on LitGPT's real step in tests/estimate/
    test_stack_litgpt_cpu.py), 1,000 positions = 7 chunks of 128 and one of 104, per sequence of a batch of 2;
    full fine-tuning keeps one batch x seq x vocab tensor."""
    assert SPEC.vocab_size == V
    lora = StepModel(SPEC, _setup({"method": "lora", "stack": "litgpt"}, 2)).sa
    assert lora.kept_blocks(2000, 1000) == (2 * 128 * V * 4,) * 7 + (2 * 104 * V * 4,)
    full = StepModel(SPEC, _setup({"method": "full", "stack": "litgpt"}, 2)).sa
    assert full.kept_blocks(2000, 1000) == (2 * 1000 * V * 4,)
    hf = StepModel(SPEC, _setup({"method": "lora"}, 2)).sa         # the HF Trainer drops the outputs
    assert hf.kept_blocks(2000, 1000) == ()


@pytest.mark.parametrize("opts, batch", CASES, ids=lambda c: str(c))
def test_one_step_trace_reaches_the_estimators_peak(opts, batch):
    """With the kept logits the trace's live peak is the estimator's (within 1 %: whole blocks); without them
    it fell short by the whole list (311 MB of 6.4 GB for the first case)."""
    setup = _setup(opts, batch)
    m = StepModel(SPEC, setup)
    live = peak = 0
    size = {}
    for e in m.persistent() + m.step(batch, 1000):
        if isinstance(e, Alloc):
            size[e.id] = e.size
            live += _round(e.size)
            peak = max(peak, live)
        elif isinstance(e, Free):
            live -= _round(size.pop(e.id))
    want = estimate_counters(SPEC, setup, [(batch, 1000)])[0].peak_allocated_bytes
    assert abs(peak - want) <= 0.01 * want, (peak, want)
    assert sum(m.sa.kept_blocks(batch * 1000, 1000)) > 0.02 * want


def test_the_previous_steps_list_is_freed_after_the_next_one_is_made():
    setup = _setup({"method": "lora", "stack": "litgpt"}, 1)
    m = StepModel(SPEC, setup)
    kept = m.sa.kept_blocks(1000, 1000)
    ev = m.persistent() + m.step(1, 1000) + m.step(1, 1000)
    allocs = {e.id: (i, e.size) for i, e in enumerate(ev) if isinstance(e, Alloc)}
    frees = {e.id: i for i, e in enumerate(ev) if isinstance(e, Free)}
    sizes = [s for _, s in allocs.values()]
    # the two lists, in order of allocation: the first step's (never freed before the second's is complete)
    ids = [i for i, (_, s) in allocs.items() if s in kept]
    first, second = ids[:len(kept)], ids[len(kept):2 * len(kept)]
    assert len(second) == len(kept) and sizes.count(kept[0]) >= 2 * (len(kept) - 1)
    assert all(frees[i] > allocs[j][0] for i in first for j in second)
    assert not any(i in frees for i in second)              # alive to the end of the run (the next forward)


@pytest.mark.parametrize("opts, batch", CASES[:3], ids=lambda c: str(c))
def test_the_replayed_reserved_peak_includes_them(opts, batch, monkeypatch):
    """Three steps through the caching allocator: the allocated peak grows by at least the list, the reserved
    peak by at least both lists (alive together at the second step's head, so neither can reuse the other's
    blocks)."""
    setup = _setup(opts, batch)
    kept = sum(StepModel(SPEC, setup).sa.kept_blocks(batch * 1000, 1000))
    with_kept = replay_trace(run_trace(StepModel(SPEC, setup), [(batch, 1000)] * 3))
    monkeypatch.setattr(StepAllocations, "kept_blocks", lambda self, tokens, seq=0: ())
    without = replay_trace(run_trace(StepModel(SPEC, setup), [(batch, 1000)] * 3))
    assert with_kept.peak_allocated_bytes - without.peak_allocated_bytes >= kept
    assert with_kept.peak_reserved_bytes - without.peak_reserved_bytes >= 2 * kept
