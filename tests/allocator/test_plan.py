"""The allocator section of a plan."""

from __future__ import annotations

import pytest

from vramplan.allocator.conf import AllocConfError
from vramplan.allocator.lengths import LengthsError
from vramplan.allocator.plan import (
    PLAN_STEPS,
    allocator_plan,
    capacity_from,
    parse_lengths_option,
    run_options,
)
from vramplan.profiles import resolve_model
from vramplan.setup import Setup


def test_lengths_option_rules():
    d, b, long = parse_lengths_option("alpaca@pack,drop")
    assert (d.name, b, long) == ("alpaca", "pack", "drop")
    assert parse_lengths_option("100,200")[1:] == ("longest", "truncate")
    assert parse_lengths_option(None) == (None, "longest", "truncate")
    with pytest.raises(LengthsError, match="rule 'packed'"):
        parse_lengths_option("alpaca@packed")
    assert run_options("alpaca@pack,steps=500,seed=3") == (500, 3)
    assert run_options("alpaca") == (PLAN_STEPS, 0)
    with pytest.raises(LengthsError, match="steps must be an integer from 1"):
        run_options("alpaca@steps=0")


def test_capacity_is_the_card_less_what_lies_outside_the_allocator():
    assert capacity_from(80, device_used_bytes=30, reserved_bytes=25) == 75


def test_plan_section():
    spec = resolve_model("qwen3-0.6b").spec
    p = allocator_plan(spec, Setup(batch=4, seq=8192), "alpaca", None, steps=40)
    d = p.to_dict()
    assert d["peak_reserved_bytes"] > d["peak_allocated_bytes"]
    assert d["fixes"][0]["fix"] == "expandable_segments:True"
    assert "sample lengths vary (alpaca" in d["reason"]
    es = allocator_plan(spec, Setup(batch=4, seq=8192), "alpaca", "expandable_segments:True", steps=40)
    assert es.run.peak_reserved_bytes < p.run.peak_reserved_bytes
    assert "expandable_segments:True" not in [f.name for f in es.fixes]
    with pytest.raises(AllocConfError):
        allocator_plan(spec, Setup(batch=4, seq=8192), None, "expandable_segments:yes")


def test_notes_on_settings_that_do_less_than_expected():
    from vramplan.allocator.conf import parse_alloc_conf
    from vramplan.allocator.plan import conf_notes

    assert "no effect without a memory fraction" in conf_notes(parse_alloc_conf("garbage_collection_threshold:0.8"))[0]
    assert conf_notes(parse_alloc_conf("garbage_collection_threshold:0.8,per_process_memory_fraction:0.9")) == ()
