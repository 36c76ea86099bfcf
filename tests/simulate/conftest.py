"""Simulation tests need torch, transformers and peft; calibration writes to a private cache."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Calibration results go to a throw-away cache, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VRAMPLAN_CACHE", str(tmp_path_factory.mktemp("vramplan-cache")))
    yield
    mp.undo()


