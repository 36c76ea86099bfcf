"""README.md stays true: its set-up commands are what CI runs, and its claims table is the tool's output."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_install_and_test_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert block[0].startswith("pip install . && vramplan plan ")
    assert block[1] == 'pip install -c .ci/constraints.txt ".[test]" && python -m pytest'
    ci = (ROOT / ".ci" / "run").read_text()
    assert "^pip install \\. " in ci and "pytest" in ci


def test_pyproject_core_is_light_and_extras_match_the_checks():
    """The core install pulls no torch stack; vramplan.extras names the modules each extra provides."""
    import tomllib

    from vramplan.extras import EXTRAS

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=!\[ ]", d)[0].lower() for d in project["dependencies"]}
    assert core == {"click", "pyyaml", "huggingface_hub"}
    extras = project["optional-dependencies"]
    dist_to_module = {"nvidia-ml-py": "pynvml"}

    def modules(extra: str) -> set[str]:
        out = set()
        for d in extras[extra]:
            name = re.split(r"[<>=!\[ ]", d)[0].lower()
            if name == "vramplan":
                for sub in d.split("[", 1)[1].rstrip("]").split(","):
                    out |= modules(sub)
            else:
                out.add(dist_to_module.get(name, name))
        return out

    for extra, mods in EXTRAS.items():
        assert modules(extra) == set(mods), extra


def test_constraints_pin_the_tested_stack():
    pins = dict(line.split("==") for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "plotly", "pandas", "click"):
        assert pkg in pins, pkg
    assert pins["torch"] == "2.13.0"
    from vramplan.lora import PEFT_TABLE_VERSION

    assert pins["peft"] == PEFT_TABLE_VERSION


def test_claims_table_is_current():
    from vramplan.claims import markdown

    text = (ROOT / "README.md").read_text()
    current = text.split("<!-- claims:start -->\n", 1)[1].split("\n<!-- claims:end -->", 1)[0]
    assert current == markdown(), "README claims table is stale: regenerate with `python -m vramplan.claims`"


def test_readme_names_every_plan_option():
    """README's plan-options paragraph is a hand-written list: it must not drift from the declarations."""
    from vramplan.setup import SETUP_OPTIONS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    para = text[text.index("Plan options (the same on"):text.index("Bad input (an unknown model")]
    missing = [o.flag for o in SETUP_OPTIONS if f"`{o.flag}" not in para]
    assert missing == [], f"README's plan options lack {missing}"
