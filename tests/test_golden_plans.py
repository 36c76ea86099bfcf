"""``plan --json`` stays byte-identical (``versions`` aside) across the one-source redesign (issue 13)."""

from __future__ import annotations

import json

import pytest
from golden_plans import ARGS, GOLDEN_FILE, run

GOLDEN = json.loads(GOLDEN_FILE.read_text())


def test_golden_set_covers_the_args() -> None:
    assert [g["args"] for g in GOLDEN] == ARGS
    assert len(ARGS) >= 40


@pytest.mark.parametrize("index", range(len(ARGS)), ids=[a.split()[0] + f"-{i}" for i, a in enumerate(ARGS)])
def test_plan_json_unchanged(index: int) -> None:
    code, out = run(ARGS[index])
    golden = GOLDEN[index]
    assert code == golden["exit_code"]
    assert json.dumps(out, sort_keys=True) == json.dumps(golden["json"], sort_keys=True)
