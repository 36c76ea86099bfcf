"""``vramplan profile`` through click's CliRunner and the console entry point: output, records, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from vramplan.cli.main import cli, main
from vramplan.profiler import load_record

TINY = ["--batch", "1", "--seq", "16", "--rank", "4", "--targets", "q_proj,v_proj", "--device", "cpu"]


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, ["profile", *args], catch_exceptions=False)


def test_lora_run_json_on_stdout_and_one_nvml_warning(tiny_config, tmp_path, no_nvml):
    out = tmp_path / "lora.json"
    r = _invoke([tiny_config, *TINY, "--steps", "2", "--warmup", "1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)                           # stdout is the record and nothing else
    assert rec == load_record(out)
    assert rec["status"] == "ok" and rec["setup"]["method"] == "lora" and rec["setup"]["lora"]["r"] == 4
    assert rec["environment"]["gpu"]["nvml"] == "NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    nvml_lines = [ln for ln in r.stderr.splitlines() if "NVML" in ln]
    assert nvml_lines == ["vramplan: warning: NVML unavailable (NVMLError_LibraryNotFound: NVML Shared Library "
                          "Not Found): device-used and per-process counters are recorded as null"]
    assert "Traceback" not in r.stderr
    assert f"vramplan: record: {out}" in r.stderr


def test_oom_exits_1_with_record_and_table(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_PROFILE_FAULT", "oom@backward:1")
    r = _invoke([tiny_config, *TINY, "--steps", "1", "--warmup", "1", "--out", str(tmp_path)])
    assert r.exit_code == 1
    assert re.search(r"^load +1 ", r.stdout, re.M) and re.search(r"^backward +1 ", r.stdout, re.M)
    assert "out of memory in backward of step 1: CUDA out of memory. Tried to allocate 2.00 GiB" in r.stdout
    path = Path(re.search(r"^record: (.+)$", r.stdout, re.M).group(1))
    rec = load_record(path)
    assert rec["status"] == "oom" and rec["oom"]["phase"] == "backward" and rec["oom"]["step"] == 1


def test_failure_in_run_exits_3_with_one_line(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_PROFILE_FAULT", "error@optimizer:0")
    r = _invoke([tiny_config, *TINY, "--steps", "1", "--warmup", "0", "--out", str(tmp_path / "e.json")])
    assert r.exit_code == 3
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vramplan: error:")]
    assert len(errors) == 1 and "the run failed in optimizer: RuntimeError: injected failure" in errors[0]
    rec = load_record(tmp_path / "e.json")
    assert rec["status"] == "error" and rec["exception"]["type"] == "RuntimeError"
    assert rec["exception"]["phase"] == "optimizer" and rec["exception"]["step"] == 0


def test_interrupt_exits_130(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_PROFILE_FAULT", "interrupt@backward:0")
    r = _invoke([tiny_config, *TINY, "--steps", "2", "--warmup", "0", "--out", str(tmp_path / "i.json")])
    assert r.exit_code == 130
    assert load_record(tmp_path / "i.json")["status"] == "interrupted"


@pytest.mark.slow
def test_until_oom_doubles_batch_until_the_first_oom(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_PROFILE_FAULT", "oom@forward:0 if batch>=4")
    r = _invoke([tiny_config, *TINY, "--steps", "1", "--warmup", "0", "--until-oom", "batch", "--out",
                 str(tmp_path), "--json"])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["schema"] == "vramplan.until_oom/1"
    assert [t["value"] for t in summary["trials"]] == [1, 2, 4]
    assert [t["status"] for t in summary["trials"]] == ["ok", "ok", "oom"]
    assert summary["limit"] == 2 and summary["first_oom"] == 4 and summary["stopped"] == "oom"
    assert summary["predicted_limit"] is None and summary["predicted_max"] is None, "no device size on the CPU"
    assert [load_record(tmp_path / name)["setup"]["batch"] for name in summary["runs"]] == [1, 2, 4]
    written = [p for p in tmp_path.glob("*until-oom-batch*.json")]
    assert len(written) == 1 and json.loads(written[0].read_text()) == summary


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--sample-hz", "0"], "--sample-hz must be in (0, 10000], got 0.0"),
    (["--method", "qlora", "--quant", "none"], "--method qlora needs a quantized base"),
    (["--attn", "flash"], "--attn flash needs a CUDA GPU"),
])
def test_bad_input_is_one_line_exit_2(tiny_config, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["profile", tiny_config, *TINY, *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vramplan: error: ") and message in err[0]


def test_device_cuda_without_gpu_is_one_line_exit_2(tiny_config, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exc:
        main(["profile", tiny_config, "--device", "cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: PyTorch" in err[0] and "sees no CUDA device" in err[0]


def test_registered_with_help():
    r = CliRunner().invoke(cli, ["--help"], catch_exceptions=False)
    assert re.search(r"\n  profile +Run real steps of a setup and record the memory they use", r.output)
    r = CliRunner().invoke(cli, ["profile", "--help"], catch_exceptions=False)
    for opt in ("--method", "--quant", "--double-quant / --no-double-quant", "--quant-blocksize", "--precision",
                "--batch", "--seq", "--grad-ckpt / --no-grad-ckpt", "--attn", "--optim", "--rank", "--targets",
                "--steps", "--warmup", "--sample-hz", "--out", "--loop", "--snapshot", "--until-oom", "--device",
                "--json"):
        assert opt in r.output, opt
