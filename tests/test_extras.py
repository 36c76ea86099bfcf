"""A command that needs a missing extra says which one in one line, exit 2 (the core install has no torch)."""

from __future__ import annotations

import importlib.util

import pytest

from vramplan.cli.main import main
from vramplan.extras import MissingExtraError, require


def _hide(monkeypatch, *names: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in names else real(name, *a, **k))


def test_require_names_the_extra_and_the_install_command(monkeypatch) -> None:
    _hide(monkeypatch, "torch", "peft")
    with pytest.raises(MissingExtraError) as exc:
        require("simulate", "--mode simulate")
    assert str(exc.value) == ('--mode simulate needs the simulate extra (torch, peft not installed): '
                              'pip install "vramplan[simulate]"')


@pytest.mark.parametrize("argv, extra, hidden", [
    (["plan", "qwen2.5-0.5b", "--mode", "simulate"], "simulate", "transformers"),
    (["plan", "qwen2.5-0.5b", "--html", "x.html"], "report", "plotly"),
    (["sweep", "--model", "qwen2.5-0.5b", "--format", "html"], "report", "plotly"),
    (["profile", "qwen2.5-0.5b"], "profile", "pynvml"),
])
def test_cli_exits_2_with_one_line(monkeypatch, capsys, tmp_path, argv, extra, hidden) -> None:
    monkeypatch.chdir(tmp_path)
    _hide(monkeypatch, hidden)
    monkeypatch.setattr("sys.argv", ["vramplan", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f'pip install "vramplan[{extra}]"' in err[0] and hidden in err[0]
    assert not (tmp_path / "x.html").exists()
