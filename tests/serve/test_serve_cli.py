"""``vramplan serve`` through click's CliRunner and the console entry point (exit codes, one-line errors)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vramplan.cli.main import cli, main


def invoke(*args):
    return CliRunner().invoke(cli, ["serve", *args], catch_exceptions=False)


def run_main(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(["serve", *args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_json_reproduces_the_published_llama31_8b_budget():
    """vllm#10517: RTX 3090 as CUDA reports it (23.58 GiB), util 0.90, non-torch 0.35 GiB, max_model_len 20000
    profiled at 20000 tokens, no graphs: the log says 1952 blocks (3.81 GiB), 1.56x."""
    res = invoke("llama-3.1-8b", "--gpu", "23.58GiB", "--gpu-memory-utilization", "0.9", "--max-model-len",
                 "20000", "--max-num-batched-tokens", "20000", "--non-torch-memory", "0.35GiB", "--enforce-eager",
                 "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["engine"] == "vllm" and d["bytes_per_block"] == 2 * 2**20
    assert abs(d["num_gpu_blocks"] - 1952) <= 20                   # 1 %: the activation peak is estimated
    assert d["blocks_per_request"] == 1250
    assert d["max_concurrency"] == d["num_gpu_blocks"] / 1250
    names = [c["name"] for c in d["components"]]
    assert names[-2:] == ["overhead/non_torch", "activations/profile_peak"]
    assert d["requested_bytes"] - sum(c["bytes"] for c in d["components"]) == d["available_kv_bytes"]


def test_text_prints_the_engine_log_lines_and_explain_sources():
    res = invoke("qwen3-8b", "--gpu", "h100-80gb", "--max-model-len", "32768", "--explain")
    assert res.exit_code == 0, res.output
    out = res.output
    for line in ("# GPU blocks:", "Available KV cache memory:", "GPU KV cache size:",
                 "Maximum concurrency for 32,768 tokens per request:", "vllm 0.33.0"):
        assert line in out
    assert "rotary_embedding/base.py" in out and "get_max_concurrency_for_kv_cache_config" in out


def test_gemma2_shows_its_two_groups():
    res = invoke("gemma-2-9b", "--gpu", "a100-80gb", "--max-model-len", "8192", "--json")
    d = json.loads(res.output)
    assert sorted((g["kind"], g["layers"]) for g in d["kv_groups"]) == [("full", 21), ("sliding", 21)]
    assert d["dtype"] == "bf16"                                    # a float32 checkpoint is served in bf16


def test_tp_and_fp8_kv_change_the_block():
    a = json.loads(invoke("llama-3.1-70b", "--gpu", "h100-80gb", "--tp", "4", "--max-model-len", "8192",
                          "--json").output)
    b = json.loads(invoke("llama-3.1-70b", "--gpu", "h100-80gb", "--tp", "4", "--max-model-len", "8192",
                          "--kv-cache-dtype", "fp8", "--json").output)
    assert a["bytes_per_block"] == 2 * 16 * 2 * 128 * 2 * 80       # 8 KV heads / 4 ranks
    assert b["bytes_per_block"] * 2 == a["bytes_per_block"]
    assert b["num_gpu_blocks"] >= 2 * a["num_gpu_blocks"]


def test_does_not_fit_exits_1():
    res = invoke("llama-3.1-70b", "--gpu", "rtx-4090", "--max-model-len", "8192")
    assert res.exit_code == 1 and "does not fit" in res.output


def test_sglang_needs_mem_fraction_and_reports_tokens(capsys):
    code, _, err = run_main(capsys, "llama-3.1-8b", "--engine", "sglang", "--gpu", "h100-80gb")
    assert code == 2 and err.count("\n") == 1 and "--mem-fraction-static" in err
    res = invoke("llama-3.1-8b", "--engine", "sglang", "--gpu", "h100-80gb", "--mem-fraction-static", "0.88",
                 "--max-model-len", "8192", "--json")
    d = json.loads(res.output)
    assert d["engine"] == "sglang" and d["cell_bytes"] == 131_072
    assert d["max_total_num_tokens"] == d["available_kv_bytes"] // 131_072


def test_target_concurrency_finds_the_smallest_tp(tmp_path):
    res = invoke("llama-3.1-70b", "--gpu", "h100-80gb", "--max-model-len", "8192", "--target-concurrency", "32",
                 "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    # TP 1 and 2 on an 80 GB card cannot hold 70B in bf16 plus 32 × 8k tokens; TP 4 can
    assert d["smallest_tp_on_gpu"] == 4
    one = json.loads(invoke("llama-3.1-70b", "--gpu", "h100-80gb", "--tp", "2", "--max-model-len", "8192",
                            "--json").output)
    assert one["max_concurrency"] < 32
    assert d["best"]["total_memory_bytes"] == min(o["total_memory_bytes"] for o in d["options"])
    prices = tmp_path / "p.yaml"
    prices.write_text("h100-80gb: 2.0\nh200: 100.0\n")
    p = json.loads(invoke("llama-3.1-70b", "--gpu", "h100-80gb", "--max-model-len", "8192",
                          "--target-concurrency", "32", "--prices", str(prices), "--json").output)
    assert p["best"] == {**p["best"], "gpu": "h100-80gb", "tp": 4, "usd_per_hour": 8.0}


@pytest.mark.parametrize("args, fragment", [
    (["--tp", "3"], "--tp 3"),
    (["--gpu-memory-utilization", "1.4"], "--gpu-memory-utilization"),
    (["--max-model-len", "0"], "--max-model-len"),
    (["--target-concurrency", "0"], "--target-concurrency"),
    (["--non-torch-memory", "12"], "no unit"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, fragment):
    code, _, err = run_main(capsys, "llama-3.1-8b", "--gpu", "h100-80gb", *args)
    assert code == 2 and err.count("\n") == 1 and fragment in err, err


def test_serve_imports_no_torch():
    code = ("import sys, vramplan.cli.serve\n"
            "from vramplan.cli.main import main\n"
            "try:\n main(['serve','llama-3.1-8b','--gpu','h100-80gb','--json'])\n"
            "except SystemExit: pass\n"
            "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
