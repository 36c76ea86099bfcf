"""Per-rank estimates for ``--gpus N --strategy ... --offload ...`` (vramplan/estimate/distributed.py).

DeepSpeed's own model-state estimators are re-implemented below from their source text
(deepspeed/runtime/zero/stage_1_and_2.py::estimate_zero2_model_states_mem_needs and
stage3.py::estimate_zero3_model_states_mem_needs, v0.19.8); when deepspeed imports, the real functions are
checked against the re-implementation too.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as hs

from vramplan.dtypes import BYTES, alloc
from vramplan.errors import SetupError
from vramplan.estimate import distributed as D
from vramplan.estimate import estimate, smallest_gpus
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.profiles import resolve_gpu, resolve_model
from vramplan.setup import STRATEGIES, Setup

QWEN = "qwen2.5-0.5b"
QWEN_PARAMS = 494_032_768                 # profiles/models: exact, tied embeddings counted once
QWEN_LARGEST_MODULE = 151_936 * 896       # embed_tokens (and the tied lm_head): vocab × hidden
SHARDED = ("fsdp", "fsdp-grad-op", "zero1", "zero2", "zero3")


def spec(name: str):
    return resolve_model(name).spec


def per_rank(est) -> dict:
    return est.extra["per_rank"]


# ------------------------------------------------------------------------ DeepSpeed's formulas, from the source
def ds_zero2(total_params, num_gpus_per_node=1, num_nodes=1, cpu_offload=True, additional_buffer_factor=1.5):
    """stage_1_and_2.py::estimate_zero2_model_states_mem_needs -> (cpu_mem, gpu_mem)."""
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu_mem = 2 * total_params
        cpu_mem = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        gpu_mem = 2 * total_params + int(18 * total_params / total_gpus)
        cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem)


def ds_zero3(total_params, largest_layer_params, num_gpus_per_node=1, num_nodes=1, cpu_offload=True,
             cpu_offload_params=True, zero_init=True, additional_buffer_factor=1.5):
    """stage3.py::estimate_zero3_model_states_mem_needs -> (cpu_mem, gpu_mem, largest_layer_memory)."""
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu_mem = largest_layer_memory
            if zero_init:
                cpu_mem = total_params * 18 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 18 * gpus_factor) * additional_buffer_factor
        else:
            gpu_mem = largest_layer_memory + int(2 * total_params / total_gpus)
            if zero_init:
                cpu_mem = total_params * 16 * gpus_factor * additional_buffer_factor
            else:
                cpu_mem = total_params * max(4 * num_gpus_per_node, 16 * gpus_factor) * additional_buffer_factor
    else:
        gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
        if zero_init:
            cpu_mem = largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
        else:
            cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem), largest_layer_memory


def adamw_rounding(part: int) -> int:
    """What vramplan adds to DeepSpeed's 8 B/param of Adam states: AdamW's fp32 step tensor (one 512-B block)
    and the allocator's 512-B rounding of exp_avg and exp_avg_sq on the flat partition."""
    return 2 * (alloc(4 * part) - 4 * part) + alloc(4)


def full(name=QWEN, **kw) -> Setup:
    return Setup.create(method="full", **kw)


# ------------------------------------------------------------------------------------------------- N = 1
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_one_gpu_ddp_is_the_single_gpu_estimate_exactly(method):
    s = spec("llama-3-8b")
    single = estimate(s, Setup.create(method=method))
    one = estimate(s, Setup.create(method=method, gpus=1, strategy="ddp"))
    assert one.to_dict() == single.to_dict()
    assert "per_rank" not in single.to_dict() and not D.applies(Setup.create(method=method))


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp-grad-op"])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_one_gpu_fsdp_model_states_equal_the_single_gpu_ones(method, strategy):
    """FSDP on one rank shards nothing: weights, gradients and optimizer states are the single-GPU ones to the
    byte; what differs is what FSDP adds (all-gather and reduce-scatter buffers) and what it removes (autocast
    weight copies: the gathered parameters are already bf16)."""
    s = spec("llama-3-8b")
    base = Setup.create(method=method)
    single = estimate(s, base)
    one = estimate(s, base.with_(strategy=strategy))
    for group in ("weights", "adapters"):
        assert {c.name: c.bytes for c in one.components if c.group == group} == \
               {c.name: c.bytes for c in single.components if c.group == group}
    st = static_structure(s, structural_setup(base))
    grads = sum(alloc(t.numel * BYTES[t.dtype]) for t in st.trainables)
    assert per_rank(one)["model_states"]["gradients"] == grads
    assert per_rank(one)["model_states"]["optimizer_states"] == single.component("optimizer/states")
    assert any(c.name == "buffers/allgather" for c in one.components)
    assert not any(c.name == "buffers/nccl" for c in one.components), "one rank: no NCCL peers"


@pytest.mark.parametrize("strategy", SHARDED)
def test_sharded_strategy_on_one_gpu_warns(strategy):
    est = estimate(spec(QWEN), full(gpus=1, strategy=strategy))
    assert any(f"--strategy {strategy} with --gpus 1 shards nothing" in w for w in est.warnings)
    assert not estimate(spec(QWEN), full(gpus=2, strategy=strategy)).warnings


# ---------------------------------------------------------------------------------------- 1/N sharding
@pytest.mark.parametrize("n", [2, 4, 8, 16])
@pytest.mark.parametrize("strategy", ["fsdp", "fsdp-grad-op"])
def test_fsdp_model_states_shrink_as_one_over_n(strategy, n):
    # llama-3-8b: every dim 0 (128256, 4096, 1024, 14336) divides by 16, so FSDP's padding is zero
    s = spec("llama-3-8b")
    one = per_rank(estimate(s, full(gpus=1, strategy=strategy)))["model_states"]
    ms = per_rank(estimate(s, full(gpus=n, strategy=strategy)))["model_states"]
    assert ms["weights"] * n == one["weights"]
    assert ms["gradients"] * n == one["gradients"]
    steps = 512 * sum(1 for t in s.tensors if t.tied_to is None)   # AdamW's 0-dim step tensors: not sharded
    assert (ms["optimizer_states"] - steps) * n == one["optimizer_states"] - steps


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_partitions_shrink_as_one_over_n(stage, n):
    ms = per_rank(estimate(spec(QWEN), full(gpus=n, strategy=f"zero{stage}")))["model_states"]
    part = QWEN_PARAMS // n            # 494,032,768 divides by 2·16: no alignment padding
    assert ms["master_fp32"] == 4 * part
    assert ms["grads_fp32"] == 4 * part
    if stage == 1:
        assert ms["grads_16bit"] == alloc_sum_full_grads(QWEN) + 2 * part
    else:
        assert ms["grads_16bit"] == 2 * part
    if stage < 3:
        assert ms["params_16bit"] == 2 * QWEN_PARAMS
    else:
        assert ms["params_16bit"] == 2 * part
        assert ms["largest_layer"] == 4 * QWEN_LARGEST_MODULE


def alloc_sum_full_grads(name: str) -> int:
    return sum(alloc(t.numel * 2) for t in spec(name).tensors if t.tied_to is None)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(strategy=hs.sampled_from(SHARDED), n=hs.integers(min_value=2, max_value=63),
       method=hs.sampled_from(["full", "lora", "qlora"]))
def test_per_rank_memory_never_grows_with_more_gpus(strategy, n, method):
    """smallest_gpus binary-searches on this: from N = 2 on, per-rank device memory is non-increasing."""
    s = spec(QWEN)
    a = estimate(s, Setup.create(method=method, gpus=n, strategy=strategy))
    b = estimate(s, Setup.create(method=method, gpus=n + 1, strategy=strategy))
    assert b.device_used_bytes <= a.device_used_bytes


# ------------------------------------------------------------------------- DeepSpeed's estimators, exactly
@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("offload", ["none", "optimizer"])
def test_zero2_full_finetuning_matches_deepspeed_estimate(n, offload):
    """fp16/bf16 params and grads, fp32 master + Adam: 2ψ + 18ψ/N (18 = 2 grads16 + 4 grads32 + 4 master + 8
    Adam), or 2ψ with offload_optimizer."""
    est = estimate(spec(QWEN), full(gpus=n, strategy="zero2", offload=offload))
    ms = per_rank(est)["model_states"]
    _, ds_gpu = ds_zero2(QWEN_PARAMS, num_gpus_per_node=n, cpu_offload=offload != "none")
    extra = adamw_rounding(QWEN_PARAMS // n) if offload == "none" else 0
    assert ms["params_16bit"] == 2 * QWEN_PARAMS
    assert ms["grads_16bit"] == (2 * QWEN_PARAMS // n if offload == "none" else 0)
    assert per_rank(est)["model_states_bytes"] == ds_gpu + extra, (
        "vramplan = DeepSpeed's formula + AdamW's step tensor and the 512-B rounding of the two state buffers")


@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("offload", ["none", "optimizer", "params"])
def test_zero3_full_finetuning_matches_deepspeed_estimate(n, offload):
    """largest_layer_memory (4 B × largest module: 16-bit params + grads) + 18ψ/N. DeepSpeed 0.19's stage3.py
    also allocates the 16-bit gradient partitions (grad_partitions_flat_buffer, 2ψ/N) that its estimator leaves
    out; vramplan counts them, and that is the only difference besides AdamW's step tensor and rounding."""
    est = estimate(spec(QWEN), full(gpus=n, strategy="zero3", offload=offload))
    ms = per_rank(est)["model_states"]
    part = QWEN_PARAMS // n
    _, ds_gpu, largest = ds_zero3(QWEN_PARAMS, QWEN_LARGEST_MODULE, num_gpus_per_node=n,
                                  cpu_offload=offload != "none", cpu_offload_params=offload == "params")
    assert ms["largest_layer"] == largest
    if offload == "none":
        assert ms["grads_16bit"] == 2 * part
        assert per_rank(est)["model_states_bytes"] == ds_gpu + 2 * part + adamw_rounding(part)
    else:
        assert ms["grads_16bit"] == 0, "offload_optimizer puts the gradient partitions in CPU memory"
        assert per_rank(est)["model_states_bytes"] == ds_gpu


def test_cpu_memory_per_node_with_zero_offload():
    """ZeRO-Offload keeps the fp32 master, fp32 gradients and Adam states (16 B/param, DeepSpeed's zero2
    cpu_mem without its 1.5 buffer factor) plus the 16-bit staging buffer of the updated partition
    (param_buffer_of_bit16_for_cpu_offload_groups) in CPU memory; per node, for the ranks on it."""
    n = 4
    est = estimate(spec(QWEN), full(gpus=n, strategy="zero2", offload="optimizer"))
    part = QWEN_PARAMS // n
    ds_cpu, _ = ds_zero2(QWEN_PARAMS, num_gpus_per_node=n, cpu_offload=True, additional_buffer_factor=1)
    assert ds_cpu == 16 * QWEN_PARAMS
    assert est.extra["cpu_bytes_per_node"] == n * (16 * part + adamw_rounding(part) + 2 * part)
    assert est.to_dict()["cpu_bytes_per_node"] == est.extra["cpu_bytes_per_node"]
    # ZeRO-Infinity: + the 16-bit parameter partitions; DeepSpeed's zero_init cpu_mem says 18 B/param
    inf = estimate(spec(QWEN), full(gpus=n, strategy="zero3", offload="params"))
    ds3_cpu, _, _ = ds_zero3(QWEN_PARAMS, QWEN_LARGEST_MODULE, num_gpus_per_node=n, additional_buffer_factor=1)
    assert ds3_cpu == 18 * QWEN_PARAMS
    assert inf.extra["cpu_bytes_per_node"] == n * (16 * part + adamw_rounding(part) + 2 * part + 2 * part)
    # more than one node: per node counts GPUS_PER_NODE ranks
    big = estimate(spec(QWEN), full(gpus=16, strategy="zero2", offload="optimizer"))
    assert big.extra["cpu_bytes_per_node"] == D.GPUS_PER_NODE * per_rank(big)["cpu_bytes"]


def _real_deepspeed():
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except Exception:  # noqa: BLE001 - not installed, or its import fails without a GPU stack
        return None
    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


@pytest.mark.skipif(_real_deepspeed() is None, reason="deepspeed is not installed (not a dependency)")
@pytest.mark.parametrize("n", [1, 2, 8])
def test_reimplemented_formulas_equal_deepspeeds_functions(n):
    z2, z3 = _real_deepspeed()
    for off in (True, False):
        assert z2(QWEN_PARAMS, n, 1, off) == ds_zero2(QWEN_PARAMS, n, 1, off)
        for off_p in (True, False):
            for init in (True, False):
                assert z3(QWEN_PARAMS, QWEN_LARGEST_MODULE, n, 1, off, off_p, init) == \
                       ds_zero3(QWEN_PARAMS, QWEN_LARGEST_MODULE, n, 1, off, off_p, init)


# --------------------------------------------------------------------------------- buffers and offload
def test_ddp_buckets_copy_every_trainable_gradient():
    s = spec("llama-3-8b")
    est = estimate(s, full(gpus=2, strategy="ddp"))
    st = static_structure(s, structural_setup(full()))
    nb, count = D.ddp_bucket_bytes(st.trainables)
    raw = sum(t.numel * BYTES[t.dtype] for t in st.trainables)
    assert 0 <= nb - raw < 512 * count, "one flat bucket per ≤25 MiB of fp32 gradients, 512-B rounded"
    assert est.component("buffers/ddp_buckets") == nb
    assert est.phases["forward"] - estimate(s, full()).phases["forward"] == nb, "allocated when DDP wraps"
    nccl = [c for c in est.components if c.name == "buffers/nccl"]
    assert nccl and nccl[0].counter == "device" and nccl[0].bytes == D.NCCL_BYTES


def test_qlora_with_fsdp_shards_the_packed_weights_not_the_quant_state():
    s = spec("llama-3-8b")
    one = estimate(s, Setup.create(method="qlora", gpus=1, strategy="fsdp"))
    four = estimate(s, Setup.create(method="qlora", gpus=4, strategy="fsdp"))
    assert four.component("weights/quant_constants") == one.component("weights/quant_constants") > 0
    q1, q4 = one.component("weights/quantized"), four.component("weights/quantized")
    assert q1 / 4 <= q4 <= q1 / 4 + 512 * 32 * 7, "packed bf16 storage split 4 ways, 512-B rounded per weight"


def test_offload_params_leaves_only_gathered_parameters_on_the_gpu():
    est = estimate(spec(QWEN), full(gpus=8, strategy="fsdp", offload="params"))
    assert est.group_bytes("weights") == 0 and est.component("optimizer/states") == 0
    assert est.extra["cpu_bytes_per_node"] > 0 and set(per_rank(est)["cpu"]) == {"params", "gradients",
                                                                                 "optimizer_states"}
    assert est.component("buffers/allgather") > 0


@pytest.mark.parametrize("strategy,names", [
    ("ddp", {"buffers/ddp_buckets", "buffers/nccl"}),
    ("fsdp", {"buffers/allgather", "buffers/reduce_buckets", "buffers/nccl"}),
    ("zero2", {"buffers/reduce_buckets", "buffers/nccl"}),
    ("zero3", {"buffers/allgather", "buffers/reduce_buckets", "buffers/nccl"}),
])
def test_buffer_components_name_their_source(strategy, names):
    est = estimate(spec(QWEN), full(gpus=8, strategy=strategy, batch=1, seq=256))
    comps = {c.name: c for c in est.components}
    assert names <= set(comps)
    for name in names:
        f = comps[name].formula
        assert ".py" in f or ".cpp" in f or "nccl#" in f, f"{name}: formula without its source: {f}"


# ------------------------------------------------------------------------------------ validation and CLI
@pytest.mark.parametrize("strategy,offload", [("ddp", "params"), ("fsdp-grad-op", "params"), ("zero1", "params"),
                                              ("ddp", "optimizer"), ("fsdp", "optimizer")])
def test_unsupported_offload_is_a_setup_error(strategy, offload):
    with pytest.raises(SetupError, match=f"--offload {offload} needs --strategy"):
        Setup.create(method="full", gpus=2, strategy=strategy, offload=offload)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vramplan", *args], capture_output=True, text=True)


def test_cli_offload_params_without_sharding_is_one_line_exit_2():
    proc = _run("plan", QWEN, "--method", "full", "--gpus", "4", "--offload", "params")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vramplan: error: --offload params needs --strategy zero3, fsdp or fsdp1")
    assert proc.stdout == ""


def test_cli_zero3_on_one_gpu_warns_on_stderr_and_in_json():
    proc = _run("plan", QWEN, "--method", "full", "--gpus", "1", "--strategy", "zero3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "vramplan: warning: --strategy zero3 with --gpus 1 shards nothing" in proc.stderr
    d = json.loads(proc.stdout)
    assert any("shards nothing" in w for w in d["warnings"])
    assert d["per_rank"]["strategy"] == "zero3" and d["cpu_bytes_per_node"] == 0


def test_cli_json_reports_cpu_bytes_per_node():
    from vramplan.cli.main import cli

    res = CliRunner().invoke(cli, ["plan", QWEN, "--method", "full", "--gpus", "8", "--strategy", "zero3",
                                   "--offload", "params", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["cpu_bytes_per_node"] == 8 * d["per_rank"]["cpu_bytes"] > 0
    alloc_sum = sum(v for k, v in d["breakdown_bytes"].items() if d["counters"][k] == "allocated")
    assert alloc_sum == d["peak_allocated_bytes"]


# ------------------------------------------------------------------------------------------ smallest_gpus
def _fits(s, setup, gpu) -> bool:
    e = estimate(s, setup, gpu)
    return e.fit.fits


def test_smallest_gpus_is_the_smallest_count_that_fits():
    s, g = spec("llama-3-8b"), resolve_gpu("a100-80gb")
    setup = Setup.create(method="full")
    n, strategy = smallest_gpus(s, setup, g)
    assert _fits(s, setup.with_(gpus=n, strategy=strategy), g)
    assert n > 1, "8B full fine-tuning with AdamW does not fit one 80 GB card"
    for other in STRATEGIES:
        assert not _fits(s, setup.with_(gpus=n - 1, strategy=other), g), other


def test_smallest_gpus_single_card_and_nothing_fits():
    s, g = spec("llama-3-8b"), resolve_gpu("a100-80gb")
    assert smallest_gpus(s, Setup.create(method="qlora"), g) == (1, "ddp")
    assert smallest_gpus(s, Setup.create(method="full", seq=1 << 20), g, max_gpus=8) is None


def test_smallest_gpus_keeps_the_offload():
    s, g = spec("llama-3-8b"), resolve_gpu("a100-80gb")
    n, strategy = smallest_gpus(s, Setup.create(method="full", strategy="zero3", offload="params"), g)
    assert strategy in ("fsdp", "zero3")
