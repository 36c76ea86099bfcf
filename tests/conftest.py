"""Shared test helpers."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# The suite never talks to the Hub: resolution of unknown ids must take the offline path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Property tests draw the same examples on every run (an upstream release or a lucky seed must not turn CI
# red); VRAMPLAN_HYPOTHESIS=explore draws fresh ones, to look for new counterexamples by hand.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile("explore" if os.environ.get("VRAMPLAN_HYPOTHESIS") == "explore" else "ci")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing or broken
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own vramplan cache dir, so Hub-config caching never leaks between tests."""
    monkeypatch.setenv("VRAMPLAN_CACHE", str(tmp_path / "vramplan-cache"))
