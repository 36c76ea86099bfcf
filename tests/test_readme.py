"""README.md stays true: its set-up commands are what CI runs, and its claims table is the tool's output."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_install_and_test_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert block[0].startswith("pip install . && vramplan plan ")
    assert block[1] == 'pip install ".[test]" && python -m pytest'
    ci = (ROOT / ".ci" / "run").read_text()
    assert "^pip install \\. " in ci and "pytest" in ci


def test_claims_table_is_current():
    from vramplan.claims import markdown

    text = (ROOT / "README.md").read_text()
    current = text.split("<!-- claims:start -->\n", 1)[1].split("\n<!-- claims:end -->", 1)[0]
    assert current == markdown(), "README claims table is stale: regenerate with `python -m vramplan.claims`"
