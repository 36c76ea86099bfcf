"""Fixtures for the report tests: a folder of synthetic run records (good, partial, not JSON), a browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from report_synthetic import cpu_record, malformed_records, plan_json, run_record

NOT_JSON = "{this is not json\n"


@pytest.fixture(scope="session")
def records_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ok.json``, ``oom.json``, ``cpu.json``, ``notjson.json`` and ``malformed/<name>.json``."""
    root = tmp_path_factory.mktemp("records")
    (root / "ok.json").write_text(json.dumps(run_record()))
    (root / "oom.json").write_text(json.dumps(run_record(status="oom")))
    (root / "cpu.json").write_text(json.dumps(cpu_record()))
    (root / "notjson.json").write_text(NOT_JSON)
    bad = root / "malformed"
    bad.mkdir()
    for name, value in malformed_records().items():
        (bad / f"{name}.json").write_text(json.dumps(value))
    (bad / "notjson.json").write_text(NOT_JSON)
    return root


@pytest.fixture(scope="session")
def plan() -> dict:
    return plan_json()


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session; the browser tests skip without it."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): browser checks skipped")
    from vramplan.report.browser import Browser

    with Browser(width=1280, height=900) as b:
        yield b
