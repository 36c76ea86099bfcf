"""``vramplan.profiler`` reads its public names on first use: ``profiler.options`` stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import vramplan.profiler as profiler


def test_every_public_name_is_the_object_of_its_module():
    assert sorted(profiler.__all__) == sorted(profiler.EXPORTS)
    for name, module in profiler.EXPORTS.items():
        assert getattr(profiler, name) is getattr(importlib.import_module(f"vramplan.profiler.{module}"), name)


def test_an_unknown_name_is_an_attribute_error():
    try:
        profiler.profile_runs  # noqa: B018
    except AttributeError as exc:
        assert "profile_runs" in str(exc)
    else:
        raise AssertionError("vramplan.profiler.profile_runs should not exist")


def test_importing_the_options_loads_neither_the_runner_nor_the_record():
    code = ("import sys, vramplan.profiler.options; "
            "print(sorted(m for m in sys.modules if m.startswith('vramplan.profiler')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['vramplan.profiler', 'vramplan.profiler.options']"
