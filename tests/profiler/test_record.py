"""Record helpers: OOM message parsing, fault specs, the schema check, estimate comparison, summaries."""

from __future__ import annotations

import copy
import json

import pytest

from vramplan.profiler.phases import Fault, FaultError, requested_bytes
from vramplan.profiler.record import (
    RecordError,
    compare,
    new_record,
    record_path,
    summarize,
    validate_record,
    write_record,
)


@pytest.mark.parametrize(("message", "expected"), [
    ("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 23.65 GiB", 20 * 2**20),
    ("CUDA out of memory. Tried to allocate 1.50 GiB (GPU 0; 79.19 GiB total capacity)", 1_610_612_736),
    ("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate "
     "85899345920 bytes. Error code 12 (Cannot allocate memory)", 85_899_345_920),
    ("CUDA error: an illegal memory access was encountered", None),
])
def test_requested_bytes(message, expected):
    assert requested_bytes(message) == expected


def test_fault_parse():
    assert Fault.parse("oom@backward:2") == Fault("oom", "backward", 2)
    assert Fault.parse("error@load") == Fault("error", "load", None)
    f = Fault.parse("oom@forward:0 if batch>=4")
    assert f == Fault("oom", "forward", 0, ("batch", 4))
    assert Fault.parse(None) is None and Fault.parse("") is None
    with pytest.raises(FaultError, match="'oom@sideways' is not a fault"):
        Fault.parse("oom@sideways")


def _record() -> dict:
    rec = new_record("tiny", {"method": "lora", "quant": "none", "batch": 1, "seq": 8}, steps=1, warmup=0)
    rec["status"] = "ok"
    rec["phases"] = [
        {"name": "load", "step": None, "t_start": 0.0, "t_end": 1.0, "peak_allocated_bytes": 100,
         "peak_reserved_bytes": 128, "peak_active_bytes": 100, "device_used_bytes": 600, "rss_bytes": 10},
        {"name": "forward", "step": 0, "t_start": 1.0, "t_end": 1.5, "peak_allocated_bytes": 300,
         "peak_reserved_bytes": 384, "peak_active_bytes": 300, "device_used_bytes": 900, "rss_bytes": 11},
        {"name": "backward", "step": 0, "t_start": 1.5, "t_end": 2.0, "peak_allocated_bytes": 350,
         "peak_reserved_bytes": 384, "peak_active_bytes": 350, "device_used_bytes": 900, "rss_bytes": 12}]
    rec["samples"] = {"t": [0.5, 1.2, 1.8], "device_used_bytes": [500, 950, 920], "process_used_bytes": [None] * 3,
                      "allocated_bytes": [90, 280, 340], "reserved_bytes": [128, 384, 384], "rss_bytes": [9, 11, 13]}
    return rec


def test_summarize_takes_the_window_and_per_phase_maxima():
    rec = _record()
    m = summarize(rec["phases"], rec["samples"], warmup=0, t_measure=1.0,
                  window_peaks={"peak_allocated_bytes": 360, "peak_reserved_bytes": 384, "peak_active_bytes": 360},
                  all_peaks={"peak_allocated_bytes": 360, "peak_reserved_bytes": 384, "peak_active_bytes": 360},
                  cuda_context_bytes=500)
    assert m["peak_allocated_bytes"] == 360, "a gap between phases (folded peak) counts too"
    assert m["device_used_bytes"] == 950 and m["peak_rss_bytes"] == 13 and m["cuda_context_bytes"] == 500
    assert m["per_phase"]["load"]["peak_allocated_bytes"] == 100
    assert m["per_phase"]["backward"] == {"peak_allocated_bytes": 350, "peak_reserved_bytes": 384,
                                          "peak_active_bytes": 350, "device_used_bytes": 900, "rss_bytes": 12,
                                          "count": 1, "mean_s": 0.5}
    assert m["peak_phase"] == "backward" and m["peak_step"] == 0 and m["window"] == "steps>=warmup"
    failed_early = summarize(rec["phases"][:1], rec["samples"], warmup=1, t_measure=None,
                             window_peaks=dict.fromkeys(m, None), all_peaks={"peak_allocated_bytes": 100},
                             cuda_context_bytes=None)
    assert failed_early["window"] == "all" and failed_early["peak_allocated_bytes"] == 100


def test_compare_signs_and_only_shared_counters():
    err = compare({"peak_allocated_bytes": 1000, "peak_reserved_bytes": None, "device_used_bytes": 2000},
                  {"peak_allocated_bytes": 1100, "peak_reserved_bytes": 5, "device_used_bytes": 1900})
    assert err == {"peak_allocated_bytes": {"measured": 1000, "estimated": 1100, "error_pct": 10.0},
                   "device_used_bytes": {"measured": 2000, "estimated": 1900, "error_pct": -5.0}}
    assert compare({"peak_allocated_bytes": 1}, None) == {}


def test_validate_record_names_the_broken_field(tmp_path):
    rec = _record()
    validate_record(rec)
    path = write_record(rec, tmp_path / "r.json")
    assert json.loads(path.read_text()) == rec
    for mutate, message in [
        (lambda r: r.pop("measured"), "record lacks measured"),
        (lambda r: r.update(status="done"), "status 'done' is not one of"),
        (lambda r: r["samples"]["rss_bytes"].pop(), "samples columns have different lengths"),
        (lambda r: r["phases"][1].update(name="think"), "phases[1].name 'think'"),
        (lambda r: r["phases"][1].update(rss_bytes=1.5), "phases[1].rss_bytes must be int bytes or null"),
        (lambda r: r.update(status="oom"), "status oom needs oom"),
    ]:
        bad = copy.deepcopy(rec)
        mutate(bad)
        with pytest.raises(RecordError, match=message.replace("[", r"\[").replace("]", r"\]")):
            validate_record(bad)


def test_record_path_names(tmp_path):
    setup = {"method": "qlora", "quant": "nf4", "batch": 2, "seq": 512}
    p = record_path(tmp_path, "meta-llama/Llama-3.1-8B", setup)
    assert p.parent == tmp_path and p.name.startswith("meta-llama-Llama-3.1-8B-qlora-nf4-b2-s512-")
    assert record_path(tmp_path / "x.json", "m", setup) == tmp_path / "x.json"
