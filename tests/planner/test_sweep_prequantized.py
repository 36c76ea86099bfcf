"""A pre-quantized checkpoint in a sweep runs as stored, as ``plan`` runs it (issue 16): the sweep used to evaluate
``Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4`` as the bf16 model (15,675,862,016 B for inference, the same as qwen2.5-7b)
and to show ``quant none``. Each row must equal ``vramplan plan``'s answer for the same options, whose weight bytes
tests/estimate/test_prequantized.py checks against the real GPTQ modules."""

from __future__ import annotations

import json

import pytest
from cli_entry import vp

from vramplan.estimate import estimate, estimate_counters
from vramplan.profiles import resolve_model
from vramplan.setup import Setup

GPTQ = "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4"


@pytest.mark.parametrize("method", ["inference", "lora", "qlora"])
def test_sweep_rows_equal_plan_on_a_gptq_checkpoint(method):
    r = vp("sweep", "--model", GPTQ, "--method", method, "--batch", "1,2", "--format", "jsonl")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2
    for row in rows:
        p = vp("plan", GPTQ, "--method", method, "--batch", str(row["batch"]), "--json")
        d = json.loads(p.stdout)
        assert row["quant"] == d["setup"]["quant"] == "gptq"
        assert (row["peak_allocated_bytes"], row["device_used_bytes"]) == \
            (d["peak_allocated_bytes"], d["device_used_bytes"])


def test_grid_counters_apply_the_checkpoints_quantization():
    spec = resolve_model(GPTQ).spec
    s = Setup.create(method="inference")
    [c] = estimate_counters(spec, s, [(1, 2048)])
    e = estimate(spec, s, detail=False)
    assert e.setup.quant == "gptq" and c.peak_allocated_bytes == e.peak_allocated_bytes
    # and the bf16 model of the same shapes is not what it returns
    assert c.peak_allocated_bytes < estimate_counters(resolve_model("qwen2.5-7b").spec, s, [(1, 2048)])[0] \
        .peak_allocated_bytes


def test_full_fine_tuning_rows_of_a_gptq_checkpoint_are_skipped_with_the_reason():
    r = vp("sweep", "--model", f"{GPTQ},qwen2.5-7b", "--method", "full", "--format", "jsonl")
    assert r.exit_code == 0
    assert [json.loads(line)["model"] for line in r.stdout.splitlines()] == ["qwen2.5-7b"]
    assert "cannot train the pre-quantized checkpoint" in r.stderr
