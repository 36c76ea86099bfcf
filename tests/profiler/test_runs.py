"""Real profiler runs on the CPU (tiny llama: 2 layers, hidden 64, vocab 256): QLoRA with bitsandbytes nf4,
LoRA, the plain loop, an injected OOM, Ctrl-C (in-process and a real SIGINT to a subprocess), and on CUDA the
allocator counters, a real OOM and the allocator snapshot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vramplan.lora import LoraConfig, plan_lora
from vramplan.profiler import RunOptions, load_record, profile_run, validate_record
from vramplan.profiles import resolve_model
from vramplan.setup import Setup

GiB = 2**30
LORA = LoraConfig(r=4, targets=("q_proj", "v_proj"))
#: every nn.Linear of a decoder layer, out x in: q 64x64, k 32x64, v 32x64, o 64x64, gate/up 128x64, down 64x128
LINEAR_WEIGHTS_PER_LAYER = 64 * 64 + 32 * 64 + 32 * 64 + 64 * 64 + 3 * 128 * 64


def _steps_phases(rec: dict, names: tuple[str, ...] = ("forward", "backward", "optimizer")) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for p in rec["phases"]:
        if p["step"] is not None:
            out.setdefault(p["step"], []).append(p["name"])
    return out


@pytest.fixture(scope="module")
def qlora_run(tiny_config, tmp_path_factory):
    setup = Setup.create(method="qlora", batch=2, seq=32, lora=LORA)
    out = tmp_path_factory.mktemp("runs")
    warnings: list[str] = []
    result = profile_run(tiny_config, setup, RunOptions(steps=2, warmup=1, out=str(out), device="cpu"),
                         warn=warnings.append)
    return result, setup, warnings


def test_qlora_cpu_run_writes_a_valid_record(qlora_run):
    result, setup, _ = qlora_run
    rec = load_record(result.path)                      # validates the schema
    assert rec == json.loads(json.dumps(result.record))
    assert rec["status"] == "ok" and rec["oom"] is None
    assert rec["setup"] == setup.to_dict() and rec["steps"] == 2 and rec["warmup"] == 1
    assert [p["name"] for p in rec["phases"]][0] == "load"
    assert _steps_phases(rec) == {s: ["forward", "backward", "optimizer"] for s in range(3)}
    n = len(rec["samples"]["t"])
    assert n > 10 and all(len(v) == n for v in rec["samples"].values())
    assert rec["samples"]["t"] == sorted(rec["samples"]["t"])
    assert all(v is None for v in rec["samples"]["allocated_bytes"])   # no CUDA allocator on the CPU
    m = rec["measured"]
    assert m["peak_rss_bytes"] > 0 and m["window"] == "steps>=warmup"
    assert m["peak_allocated_bytes"] is None and m["cuda_context_bytes"] is None
    assert set(m["per_phase"]) == {"load", "forward", "backward", "optimizer"}
    assert m["per_phase"]["forward"]["count"] == 2, "warmup step 0 is outside the measurement window"
    assert rec["wall_s"] > 0 and rec["environment"]["device"] == "cpu"


def test_qlora_model_is_quantized_by_transformers_loader(qlora_run):
    result, setup, _ = qlora_run
    env = result.record["environment"]
    assert env["weights"] == "random"
    assert env["model_build"][0] == "prepare_model_for_kbit_training"
    # Linear4bit packs two nf4 values per uint8: every decoder Linear, both layers, exactly.
    assert env["params"]["bytes_by_dtype"]["uint8"] == 2 * LINEAR_WEIGHTS_PER_LAYER // 2
    # kbit prep upcasts the rest to fp32; LoRA adapters are fp32 (mixed precision) and the only trainables.
    assert "bfloat16" not in env["params"]["bytes_by_dtype"]
    spec = resolve_model(env["model_source"]).spec
    assert env["params"]["trainable"] == plan_lora(spec, LORA).trainable == 1_792
    assert env["params"]["bytes_by_dtype"]["float32/trainable"] == 1_792 * 4


def test_estimate_is_recorded_beside_the_measurement(qlora_run):
    result, _, _ = qlora_run
    rec = result.record
    try:
        import vramplan.estimate  # noqa: F401
    except ImportError:
        assert rec["estimate"] is None and rec["error"] == {}
        return
    assert rec["estimate"]["peak_allocated_bytes"] > 0
    assert rec["error"] == {}, "on the CPU no allocator counter is measured, so nothing is compared"


def test_lora_plain_loop_runs_each_phase_per_step(tiny_config, tmp_path):
    setup = Setup.create(method="lora", batch=1, seq=16, lora=LORA, precision="32-true")
    r = profile_run(tiny_config, setup, RunOptions(steps=2, warmup=0, out=str(tmp_path), loop="plain",
                                                   device="cpu"), warn=lambda _m: None)
    assert r.status == "ok"
    validate_record(load_record(r.path))
    assert _steps_phases(r.record) == {0: ["forward", "backward", "optimizer"], 1: ["forward", "backward",
                                                                                    "optimizer"]}
    assert r.record["environment"]["params"]["bytes_by_dtype"]["float32/trainable"] == 1_792 * 4


def test_inference_records_prefill_and_decode(tiny_config, tmp_path):
    setup = Setup.create(method="inference", batch=1, seq=16, new_tokens=3)
    r = profile_run(tiny_config, setup, RunOptions(steps=1, warmup=0, out=str(tmp_path), device="cpu"),
                    warn=lambda _m: None)
    assert r.status == "ok"
    assert _steps_phases(r.record) == {0: ["prefill", "decode"]}
    assert r.record["environment"]["params"]["trainable"] == 0


def test_injected_oom_in_backward_of_step_2(tiny_config, tmp_path):
    setup = Setup.create(method="lora", batch=1, seq=16, lora=LORA)
    r = profile_run(tiny_config, setup, RunOptions(steps=2, warmup=1, out=str(tmp_path), device="cpu",
                                                   fault="oom@backward:2"), warn=lambda _m: None)
    rec = load_record(r.path)
    assert rec["status"] == "oom"
    assert rec["oom"]["phase"] == "backward" and rec["oom"]["step"] == 2
    assert rec["oom"]["requested_bytes"] == 2 * GiB          # "Tried to allocate 2.00 GiB"
    assert rec["oom"]["message"].startswith("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert rec["phases"][-1]["name"] == "backward" and rec["phases"][-1]["status"] == "oom"
    assert _steps_phases(rec) == {0: ["forward", "backward", "optimizer"], 1: ["forward", "backward", "optimizer"],
                                  2: ["forward", "backward"]}


def test_keyboard_interrupt_leaves_partial_record_and_restores_handler(tiny_config, tmp_path):
    before = signal.getsignal(signal.SIGINT)
    setup = Setup.create(method="lora", batch=1, seq=16, lora=LORA)
    # The fault sends this process a real SIGINT at the start of forward of step 1.
    r = profile_run(tiny_config, setup, RunOptions(steps=3, warmup=0, out=str(tmp_path), device="cpu",
                                                   fault="interrupt@forward:1"), warn=lambda _m: None)
    assert signal.getsignal(signal.SIGINT) is before
    rec = load_record(r.path)
    assert rec["status"] == "interrupted" and rec["oom"] is None
    assert rec["phases"][-1]["name"] == "forward" and rec["phases"][-1]["step"] == 1
    assert rec["phases"][-1]["status"] == "interrupted"
    assert rec["measured"]["peak_rss_bytes"] > 0 and len(rec["samples"]["t"]) > 0


@pytest.mark.slow
def test_sigint_to_cli_subprocess_writes_interrupted_record(tiny_config, tmp_path):
    out = tmp_path / "run.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("VRAMPLAN_PROFILE_FAULT", None)
    proc = subprocess.Popen([sys.executable, "-m", "vramplan", "profile", tiny_config, "--batch", "1", "--seq", "16",
                             "--steps", "100000", "--warmup", "0", "--device", "cpu", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    try:
        assert proc.stderr is not None
        for line in proc.stderr:                       # wait until real steps are running
            lines.append(line)
            if line.startswith("vramplan: step 2/"):
                break
            assert time.monotonic() < deadline, "".join(lines)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines) + err
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    rec = load_record(out)
    assert rec["status"] == "interrupted" and rec["oom"] is None
    # SIGINT lands inside a phase (then marked "interrupted") or between two; either way the steps before it
    # are complete and the sampler ran until the end.
    assert sum(1 for p in rec["phases"] if p["name"] == "optimizer") >= 1
    assert rec["samples"]["t"][-1] >= rec["phases"][-1]["t_end"]


# ---------------------------------------------------------------------------------------------- CUDA only
@pytest.mark.gpu
def test_cuda_qlora_records_allocator_peaks_and_snapshot(tiny_config, tmp_path):
    setup = Setup.create(method="qlora", batch=2, seq=64, lora=LORA)
    r = profile_run(tiny_config, setup, RunOptions(steps=2, warmup=1, out=str(tmp_path), device="cuda",
                                                   snapshot=True))
    rec = load_record(r.path)
    assert rec["status"] == "ok"
    for p in rec["phases"]:
        assert p["peak_allocated_bytes"] > 0 and p["peak_reserved_bytes"] >= p["peak_allocated_bytes"]
    m = rec["measured"]
    assert m["peak_reserved_bytes"] >= m["peak_allocated_bytes"] > 0
    assert any(v is not None for v in rec["samples"]["allocated_bytes"])
    if rec["environment"]["gpu"].get("nvml") == "ok":
        assert m["cuda_context_bytes"] > 0 and m["device_used_bytes"] > m["peak_reserved_bytes"]
    assert r.snapshot_path is not None and Path(r.snapshot_path).stat().st_size > 0


@pytest.mark.gpu
def test_cuda_real_oom_is_a_result(tiny_config, tmp_path):
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(48 * 2**20 / total, 0)
    try:   # fp32 logits alone are 128 x 512 x 256 x 4 B = 64 MiB
        setup = Setup.create(method="lora", batch=128, seq=512, lora=LORA, precision="32-true")
        r = profile_run(tiny_config, setup, RunOptions(steps=1, warmup=0, out=str(tmp_path), device="cuda"))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    rec = load_record(r.path)
    assert rec["status"] == "oom" and rec["oom"]["requested_bytes"] > 0
    assert torch.cuda.memory_allocated(0) < 16 * 2**20, "memory is freed after an OOM"
