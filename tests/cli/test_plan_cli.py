"""`vramplan plan`: output contract, JSON keys, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vramplan.cli.main import cli


def plan_json(*args: str) -> dict:
    res = CliRunner().invoke(cli, ["plan", *args, "--json"], catch_exceptions=False)
    assert res.exit_code in (0, 1), res.output
    return json.loads(res.stdout)


def run(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "vramplan", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def test_json_has_the_documented_keys():
    d = plan_json("Qwen/Qwen3-14B", "--method", "qlora", "--gpu", "rtx-4090")
    for key in ("model", "params", "setup", "breakdown_bytes", "peak_allocated_bytes", "peak_reserved_bytes",
                "device_used_bytes", "peak_phase", "fits", "assumptions", "versions"):
        assert key in d, key
    assert set(d["params"]) == {"total", "trainable"}
    assert set(d["fits"]) >= {"gpu", "capacity_bytes", "headroom_bytes", "fits"}
    assert all(isinstance(v, int) and v >= 0 for v in d["breakdown_bytes"].values())
    alloc = sum(v for k, v in d["breakdown_bytes"].items() if d["counters"][k] == "allocated")
    assert alloc == d["peak_allocated_bytes"]
    assert d["peak_allocated_bytes"] <= d["peak_reserved_bytes"] <= d["device_used_bytes"]
    assert d["setup"]["quant"] == "nf4" and d["setup"]["double_quant"] is True and d["setup"]["grad_ckpt"] is True


def test_qlora_quantized_weights_are_exact_bitsandbytes_layout():
    d = plan_json("llama-3-8b", "--method", "qlora")
    # 32 layers × (q,o 4096² ; k,v 1024×4096 ; gate,up,down 14336×4096) packed two per byte
    n = 32 * (2 * 4096 * 4096 + 2 * 1024 * 4096 + 3 * 14336 * 4096)
    assert d["breakdown_bytes"]["weights/quantized"] == n // 2
    # prepare_model_for_kbit_training upcasts embeddings and head to fp32
    assert d["breakdown_bytes"]["weights/embeddings"] == 128256 * 4096 * 4
    assert d["breakdown_bytes"]["weights/lm_head"] == 128256 * 4096 * 4


def test_human_output_table_counters_and_verdict():
    res = CliRunner().invoke(cli, ["plan", "llama-3-8b", "--method", "qlora", "--gpu", "24GB"],
                             catch_exceptions=False)
    out = res.output
    assert "component" in out and "GiB" in out
    assert "torch.cuda.max_memory_allocated" in out and "max_memory_reserved" in out and "nvidia-smi" in out
    assert "FITS" in out and "assumptions:" in out


def test_explain_prints_formulas_with_sources():
    res = CliRunner().invoke(cli, ["plan", "llama-3-8b", "--method", "qlora", "--explain"], catch_exceptions=False)
    assert "formulas:" in res.output
    assert "quantize_4bit" in res.output and "ForCausalLMLoss" in res.output


def test_does_not_fit_exits_1():
    res = CliRunner().invoke(cli, ["plan", "llama-3-70b", "--method", "full", "--gpu", "rtx-4090"],
                             catch_exceptions=False)
    assert res.exit_code == 1 and "DOES NOT FIT" in res.output


def test_margin_reduces_headroom():
    a = plan_json("llama-3-8b", "--method", "qlora", "--gpu", "a100-80gb")
    b = plan_json("llama-3-8b", "--method", "qlora", "--gpu", "a100-80gb", "--margin", "10%")
    assert b["fits"]["headroom_bytes"] == a["fits"]["headroom_bytes"] - int(a["fits"]["capacity_bytes"] * 0.1) or \
        abs(b["fits"]["headroom_bytes"] - (a["fits"]["headroom_bytes"] - a["fits"]["capacity_bytes"] * 0.1)) <= 1


@pytest.mark.parametrize("args, fragment", [
    (["--rank", "0"], "--rank"),
    (["--batch", "0"], "--batch"),
    (["--seq", "-5"], "--seq"),
    (["--optim", "adamq"], "adamq"),
    (["--method", "qlorra"], "qlorra"),
    (["--precision", "bf8"], "bf8"),
    (["--method", "qlora", "--quant", "none"], "--quant"),
    (["--target-regex", "(("], "does not compile"),
    (["--gpu", "rtx-9090"], "rtx-9090"),
    (["--gpu", "24XB"], "24XB"),
    (["--margin", "lots"], "lots"),
])
def test_bad_input_is_one_line_exit_2(args, fragment):
    code, out, err = run("plan", "llama-3-8b", *args)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err


def test_seq_beyond_max_positions_warns_not_errors():
    code, out, err = run("plan", "gpt2", "--seq", "4096", "--method", "lora", "--targets", "c_attn")
    assert code == 0
    assert "warning" in err and "max_position_embeddings" in err


@pytest.mark.parametrize("size,capacity", [
    ("24GB", 24 * 10**9),     # GB is decimal
    ("24GiB", 24 * 2**30),    # GiB is binary: 25,769,803,776
    ("80G", 80 * 2**30),      # a bare G is binary, as nvidia-smi and torch count: 85,899,345,920
    ("24 gb", 24 * 10**9),
])
def test_gpu_sizes_accepted(size, capacity):
    d = plan_json("gpt2", "--targets", "c_attn", "--seq", "1024", "--gpu", size)
    assert d["fits"]["gpu"] == size
    assert d["fits"]["capacity_bytes"] == capacity
    assert d["fits"]["headroom_bytes"] == capacity - d["device_used_bytes"]


def test_python_api_accepts_peft_bnb_and_training_args_objects():
    import vramplan

    class Peft:  # attribute-compatible with peft.LoraConfig
        r, lora_alpha, target_modules, lora_dropout, use_dora = 16, 32, "all-linear", 0.0, False
        modules_to_save = None
        layers_to_transform = None

    class Bnb:
        load_in_4bit, bnb_4bit_quant_type, bnb_4bit_use_double_quant = True, "nf4", True
        bnb_4bit_compute_dtype = "torch.bfloat16"

    class Args:
        per_device_train_batch_size, bf16, fp16, gradient_checkpointing, optim = 2, True, False, True, \
            "paged_adamw_8bit"

    est = vramplan.plan("llama-3-8b", lora=Peft(), quantization_config=Bnb(), training_args=Args(), seq=1024,
                        gpu="rtx-4090")
    s = est.setup
    assert (s.method, s.quant, s.batch, s.optim, s.grad_ckpt, s.lora.r) == ("qlora", "nf4", 2, "paged-adamw-8bit",
                                                                              True, 16)
    assert est.params_trainable == 41_943_040
    assert est.fit is not None and est.fit.gpu == "rtx-4090"
