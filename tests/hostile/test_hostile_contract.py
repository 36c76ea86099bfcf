"""The README's "Contract" section states the limits the code enforces, and Ctrl-C is exit 130 with one line."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vramplan import io, profiles, setup
from vramplan.cli import sweep
from vramplan.lora import MAX_RANK
from vramplan.shapes import config

ROOT = Path(__file__).resolve().parents[2]


def _contract() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Contract\n(.*?)^## ", text, re.S | re.M)
    assert m, "README.md has a '## Contract' section"
    return " ".join(m.group(1).split())


def _power(n: int) -> str:
    sup = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
    assert n & (n - 1) == 0, n
    return "2" + str(n.bit_length() - 1).translate(sup)


def test_readme_contract_states_the_enforced_limits():
    c = _contract()
    assert f"{io.CONFIG_MAX_BYTES // 2**20} MiB" in c and f"{io.RECORD_MAX_BYTES // 2**20} MiB" in c
    assert f"nest at most {io.MAX_DEPTH} levels" in c and f"{io.YAML_MAX_NODES:,} nodes" in c
    assert f"more than {sweep.SWEEP_MAX_ROWS:,} unless `--max-rows N`" in c
    assert f"`--batch` ≤ {_power(setup.MAX_BATCH)}" in c and f"`--seq` ≤ {_power(setup.MAX_SEQ)}" in c
    assert f"`--gpus` ≤ {_power(setup.MAX_GPUS)}" in c and f"`--rank` ≤ {_power(MAX_RANK)}" in c
    assert f"indices ≤ {setup.MAX_LAYER_INDEX:,}" in c and profiles.MAX_GPU_BYTES == 2**50 and "≤ 1 PiB" in c
    assert f"at most {config.MAX_LAYERS:,} layers" in c and f"up to {_power(config.MAX_DIM)}" in c
    from vramplan.profiler.options import MAX_STEPS

    assert f"`--warmup` ≤ {MAX_STEPS:,}" in c
    for code in ("0 fits / ok", "1 does not fit", "2 bad input", "130 interrupted"):
        assert code in c


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_during_a_sweep_is_exit_130_with_one_line(tmp_path):
    out = tmp_path / "s.csv"
    out.write_text("old")
    values = ",".join(str(b) for b in range(1, 2001))         # 100,000 rows: a minute of work
    proc = subprocess.Popen([sys.executable, "-m", "vramplan", "sweep", "--model", "qwen3-0.6b,llama-3-8b",
                             "--batch", values, "--rank", ",".join(str(r) for r in range(1, 26)), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 30
    while b"sweep: 100,000 rows" not in seen and time.monotonic() < deadline:   # the progress label: running
        ready, _, _ = select.select([proc.stderr], [], [], 1)
        if ready:
            seen += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(signal.SIGINT)
    out_b, err_b = proc.communicate(timeout=60)
    stderr = (seen + err_b).decode()
    if proc.returncode == 0:             # a machine fast enough to finish first: nothing to check
        pytest.skip("the sweep finished before the signal")
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("vramplan:")] == ["vramplan: aborted"], stderr
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="O_TMPFILE")
@pytest.mark.parametrize("at", ["link", "replace"])
def test_ctrl_c_as_the_temp_file_gets_its_name_leaves_nothing(tmp_path, monkeypatch, at):
    """A SIGINT landing just after the temporary file is linked into the folder (issue 18 class 6: the name was
    known only after os.link returned) or during the rename: the old file stays, no temporary file is left."""
    target = tmp_path / "out.csv"
    target.write_text("old")
    real = getattr(os, at)

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, at, interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write_text(target, "new")
    monkeypatch.undo()
    leftover = sorted(p.name for p in tmp_path.iterdir())
    assert leftover == ["out.csv"], leftover
    assert target.read_text() in ("old", "new")
