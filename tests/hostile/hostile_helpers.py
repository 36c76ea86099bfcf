"""Helpers for the hostile-input suite: run ``vramplan`` and check the contract on every answer.

The contract (README "Contract"): exit 0 (fits / ok), 1 (does not fit), 2 (bad input, exactly one
``vramplan: error:`` line on stderr, short, no traceback), 130 (interrupted); ``--json`` output is strict JSON
(no ``NaN``/``Infinity``); an input file is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner, Result

from vramplan.cli.main import main

#: an error line longer than this quotes too much of the input (an expanded alias bomb, a 5,000-char name)
MAX_ERROR_CHARS = 600

#: qwen3-0.6b's config.json fields (transformers Qwen3Config; hf.co/Qwen/Qwen3-0.6B/blob/main/config.json)
QWEN3_06B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 151936, "max_position_embeddings": 40960, "tie_word_embeddings": True, "hidden_act": "silu",
    "rms_norm_eps": 1e-06, "attention_bias": False, "torch_dtype": "bfloat16",
}


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _entry(args: tuple[str, ...]) -> None:
    main(list(args))


def _no_constants(name: str) -> None:
    raise AssertionError(f"--json printed {name}, which is not JSON")


def check_contract(code: int, stdout: str, stderr: str, args: list[str] | tuple[str, ...],
                   codes: tuple[int, ...]) -> None:
    """The answer obeys the contract and its exit code is one of ``codes``."""
    where = f"vramplan {' '.join(a[:80] for a in args)[:300]}"
    assert code in codes, (where, code, stderr[-2000:])
    assert "Traceback" not in stderr and "Traceback" not in stdout, (where, stderr[-2000:])
    errors = [line for line in stderr.splitlines() if line.startswith("vramplan: error:")]
    if code == 2:
        assert len(errors) == 1, (where, stderr[-2000:])
        assert len(errors[0]) <= MAX_ERROR_CHARS, (where, errors[0][:MAX_ERROR_CHARS + 100])
        others = [line for line in stderr.splitlines() if line and not line.startswith("vramplan: ")]
        assert not others, (where, others[:5])
    else:
        assert not errors, (where, errors)
    if "--json" in args and code in (0, 1):
        json.loads(stdout, parse_constant=_no_constants)


def vp(*args: str, codes: tuple[int, ...] = (0, 1, 2)) -> Result:
    """``vramplan ARGS`` in this process (through the real entry point), contract checked."""
    r = CliRunner().invoke(_entry, list(args), catch_exceptions=False)
    check_contract(r.exit_code, r.stdout, r.stderr, args, codes)
    return r


def vp_subprocess(*args: str, codes: tuple[int, ...] = (0, 1, 2), timeout: float = 20.0,
                  cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m vramplan ARGS`` in a child with a deadline: for inputs that used to hang."""
    r = subprocess.run([sys.executable, "-m", "vramplan", *args], capture_output=True, text=True, timeout=timeout,
                       cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdin=subprocess.DEVNULL)
    check_contract(r.returncode, r.stdout, r.stderr, args, codes)
    return r


def digest(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_config(folder: Path, **changes: object) -> Path:
    """``folder/config.json``: qwen3-0.6b's config with ``changes`` (a value of ``...`` removes the key)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {**QWEN3_06B, **changes}
    cfg = {k: v for k, v in cfg.items() if v is not ...}
    p = folder / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def billion_laughs(levels: int = 9) -> str:
    """The YAML alias bomb: ``levels`` anchors of ten aliases each (10**levels leaves)."""
    names = "abcdefghijklmnop"[:levels + 1]
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{n}: &{n} [{', '.join(['*' + p] * 10)}]" for p, n in zip(names[:-1], names[1:], strict=True)]
    return "\n".join(lines) + "\n"
