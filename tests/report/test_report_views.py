"""Views pick values out of saved JSON unchanged and name every gap in a notice."""

from __future__ import annotations

import copy

import pytest
from report_synthetic import BREAKDOWN, cpu_record, malformed_records, plan_json, run_record

from vramplan.report.views import plan_view, run_view, setup_summary


def test_good_record_has_no_notices_and_values_as_saved():
    rec = run_record()
    v = run_view(rec, "ok.json", "run-1")
    assert v.notices == []
    assert v.readable and v.status == "ok" and v.gpu == "NVIDIA GeForce RTX 4090"
    assert v.t == rec["samples"]["t"]
    assert [s.key for s in v.series] == ["device_used_bytes", "process_used_bytes", "reserved_bytes",
                                         "allocated_bytes", "rss_bytes"]
    assert next(s for s in v.series if s.key == "allocated_bytes").values == rec["samples"]["allocated_bytes"]
    assert len(v.phases) == len(rec["phases"])
    # the error % is the one the profiler saved, never recomputed
    c = {c.key: c for c in v.counters}["peak_allocated_bytes"]
    assert (c.measured_bytes, c.estimated_bytes, c.error_pct) == (
        rec["error"]["peak_allocated_bytes"]["measured"], rec["error"]["peak_allocated_bytes"]["estimated"],
        rec["error"]["peak_allocated_bytes"]["error_pct"])
    assert v.components == sorted(BREAKDOWN.items())
    assert {line.style for line in v.lines} == {"measured", "estimated", "capacity"}


def test_oom_record_places_the_oom_at_the_end_of_its_phase():
    rec = run_record(status="oom")
    v = run_view(rec, "oom.json", "run-1")
    backward = next(p for p in rec["phases"] if p["name"] == "backward" and p["step"] == 0)
    assert v.oom is not None and (v.oom.phase, v.oom.step, v.oom.t) == ("backward", 0, backward["t_end"])
    assert v.oom.requested_bytes == 2 * 2**30
    # no error entries saved for an OOM run: bars from measured/estimate, error % shown as n/a
    assert all(c.error_pct is None for c in v.counters) and v.counters


def test_cpu_record_shows_rss_and_says_the_estimate_is_null():
    v = run_view(cpu_record(), "cpu.json", "run-1")
    assert [s.key for s in v.series] == ["rss_bytes"]
    assert v.notices == ["estimate: null, no estimate-vs-measured comparison"]
    assert [c.key for c in v.counters] == ["peak_rss_bytes"]
    assert v.bench_row()["measured_peak_rss_bytes"] == cpu_record()["measured"]["peak_rss_bytes"]


EXPECTED_NOTICES = {
    "no_samples": ["samples: missing, no memory timeline"],
    "null_estimate": ["estimate: null, no estimate-vs-measured comparison"],
    "null_measured": ["measured.peak_allocated_bytes: null", "measured.peak_reserved_bytes: null",
                      "measured.device_used_bytes: null", "error.peak_allocated_bytes.error_pct: missing or null"],
    "unknown_schema": ["schema: 'someone.else/3' is not 'vramplan.run/1'", "samples: missing", "phases: missing",
                       "measured: missing", "estimate: missing", "model: missing"],
    "broken_types": ["samples.allocated_bytes: 100 of 100 values are not numbers",
                     "samples.reserved_bytes: 3 values for 100 times",
                     "phases: 2 of 4 entries lack name, t_start or t_end",
                     "estimate.breakdown_bytes['weights/base_nf4']: expected a number, found string",
                     "oom: expected an object or null, found string", "environment: missing"],
    "a_list": ["not a run record: the file holds a JSON array"],
    "oom_without_detail": ["oom: missing although status is 'oom'"],
    "empty_object": ["schema: missing", "status: missing", "samples: missing", "estimate: missing"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_NOTICES))
def test_partial_record_names_what_is_missing(name):
    v = run_view(malformed_records()[name], f"{name}.json", "run-1")
    text = "\n".join(v.notices)
    for expected in EXPECTED_NOTICES[name]:
        assert expected in text, f"{name}: notice {expected!r} not among {v.notices}"


def test_nulls_and_strings_in_samples_become_gaps_not_errors():
    rec = copy.deepcopy(run_record())
    rec["samples"]["allocated_bytes"][3] = None
    rec["samples"]["allocated_bytes"][4] = "12GB"
    rec["samples"]["allocated_bytes"][5] = float("nan")
    v = run_view(rec, "x.json", "run-1")
    values = next(s for s in v.series if s.key == "allocated_bytes").values
    assert values[3:6] == [None, None, None]
    assert values[6] == rec["samples"]["allocated_bytes"][6]


def test_plan_view_reads_ladder_grid_and_capacity():
    p = plan_json()
    v = plan_view(p)
    assert v.notices == []
    assert v.capacity == ("RTX 4090", p["fits"]["capacity_bytes"])
    assert [r.gpu for r in v.ladder] == [r["gpu"] for r in p["ladder"]]
    assert v.grid is not None and v.grid.device_used_bytes == p["grid"]["device_used_bytes"]
    assert v.chosen == (p["grid"]["batch"].index(2), p["grid"]["seq"].index(2048))


def test_plan_view_without_ladder_grid_or_gpu_says_so():
    v = plan_view(plan_json(ladder=False, grid=False, gpu=None))
    text = "\n".join(v.notices)
    assert "ladder: missing" in text and "grid: missing" in text and "fits: null (no --gpu chosen)" in text
    bad = plan_json()
    bad["grid"]["device_used_bytes"] = bad["grid"]["device_used_bytes"][:2]
    assert any("grid.device_used_bytes: expected 4 rows" in n for n in plan_view(bad).notices)
    assert plan_view("nonsense").notices == ["not a plan: expected a JSON object, found string"]


def test_setup_summary():
    assert setup_summary(plan_json()["setup"]) == (
        "qlora nf4 · r=16 all-linear · batch 2 × seq 2048 · grad ckpt · bf16-mixed · paged-adamw-8bit")
    assert setup_summary({"method": "full", "gpus": 8, "strategy": "fsdp", "offload": "optimizer"}) == (
        "full · 8 GPUs fsdp · offload optimizer")
    assert setup_summary(None) is None and setup_summary({}) is None
