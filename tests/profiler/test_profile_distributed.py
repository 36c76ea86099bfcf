"""``vramplan profile --gpus N --strategy S``: the generated launch configs, the merge of rank records, and real
two-rank runs on the CPU (gloo) of the tiny llama (hidden 64, 2 layers, vocab 256): DDP through torchrun and the
HF Trainer, FSDP2 through accelerate launch and the plain loop, and an OOM on one rank.

The two end-to-end runs take ~25 s each on a 2-core CPU (two interpreters importing torch + transformers); the
OOM run is marked slow. DeepSpeed is an optional extra: its tests skip where it is not installed, and without
GPUs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from vramplan.cli.main import cli, main
from vramplan.dtypes import alloc
from vramplan.estimate import distributed as D
from vramplan.lora import LoraConfig
from vramplan.profiler import RecordError, RunOptions, load_record, profile_run, validate_record
from vramplan.profiler.launch import (
    accelerate_config,
    check_launchable,
    deepspeed_config,
    launch_command,
    write_launch_files,
)
from vramplan.profiler.options import ProfileError, needs_launch
from vramplan.profiler.phases import Fault
from vramplan.profiler.record import merge_ranks, new_record
from vramplan.setup import Setup

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
NO_DEEPSPEED = "DeepSpeed is an optional extra (pip install deepspeed) and is not installed here"
#: parameters of the tiny llama (conftest.TINY_LLAMA): embeddings 256x64, lm_head 256x64, final norm 64, and per
#: layer q 64x64, k/v 32x64, o 64x64, gate/up 128x64, down 64x128, two norms of 64
TINY_PARAMS = 2 * 256 * 64 + 64 + 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64 + 2 * 64)


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _phases_by_step(phases: list[dict]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for p in phases:
        if p["step"] is not None:
            out.setdefault(p["step"], []).append(p["name"])
    return out


# ------------------------------------------------------------------------------------------------ configs
def test_needs_launch():
    assert not needs_launch(Setup.create())
    assert needs_launch(Setup.create(gpus=2))
    assert needs_launch(Setup.create(strategy="fsdp")), "a sharding engine needs its launcher even on one GPU"


@pytest.mark.parametrize("strategy,stage", [("zero1", 1), ("zero2", 2), ("zero3", 3)])
def test_deepspeed_config_spells_out_deepspeeds_defaults(strategy, stage):
    cfg = deepspeed_config(Setup.create(method="full", batch=4, gpus=8, strategy=strategy))
    z = cfg["zero_optimization"]
    # DeepSpeed's own defaults (deepspeed/runtime/zero/config.py, v0.19), as docs/multi-gpu.md lists them
    assert z["stage"] == stage and z["reduce_bucket_size"] == 500_000_000
    assert z["allgather_bucket_size"] == 500_000_000 and z["contiguous_gradients"] is True
    assert z["overlap_comm"] is (stage == 3)
    if stage == 3:
        assert (z["stage3_prefetch_bucket_size"], z["stage3_max_live_parameters"],
                z["stage3_param_persistence_threshold"], z["sub_group_size"]) == (50_000_000, 10**9, 100_000, 10**9)
    else:
        assert not any(k.startswith("stage3") for k in z) and "sub_group_size" not in z
    # ... which are the estimator's constants
    assert (z["reduce_bucket_size"], z["allgather_bucket_size"]) == (D.ZERO_REDUCE_BUCKET_SIZE,
                                                                     D.ZERO_ALLGATHER_BUCKET_SIZE)
    assert "offload_optimizer" not in z and "offload_param" not in z
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"]) \
        == (4, 1, 32)
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    json.dumps(cfg, allow_nan=False)            # valid JSON: no NaN, only plain types


def test_deepspeed_config_offload_and_precision():
    z3 = deepspeed_config(Setup.create(method="full", gpus=4, strategy="zero3", offload="params"))
    assert z3["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert z3["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert z3["zero_force_ds_cpu_optimizer"] is False
    z2 = deepspeed_config(Setup.create(method="full", gpus=4, strategy="zero2", offload="optimizer",
                                       precision="fp16-mixed"))
    assert "offload_param" not in z2["zero_optimization"]
    assert z2["fp16"] == {"enabled": True} and z2["bf16"] == {"enabled": False}


@pytest.mark.parametrize("strategy,offload,precision,reshard,offload_params,mp", [
    ("fsdp", "none", "bf16-mixed", True, False, "bf16"),
    ("fsdp-grad-op", "none", "bf16-mixed", False, False, "bf16"),
    ("fsdp", "params", "fp16-mixed", True, True, "fp16"),
    ("fsdp", "none", "bf16-true", True, False, "no"),
])
def test_accelerate_yaml_gives_the_fsdp_plugin_the_estimator_models(tmp_path, monkeypatch, strategy, offload,
                                                                    precision, reshard, offload_params, mp):
    """The generated YAML through accelerate's own launch parsing and environment, then the plugin a rank builds
    from that environment (``FullyShardedDataParallelPlugin()``), in-process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    setup = Setup.create(method="full", gpus=2, strategy=strategy, offload=offload, precision=precision)
    files = write_launch_files(setup, tmp_path)
    cfg = yaml.safe_load(Path(files["accelerate"]).read_text())
    assert cfg == files["configs"]["accelerate"] == accelerate_config(setup)
    assert cfg["num_processes"] == 2 and cfg["distributed_type"] == "FSDP" and cfg["use_cpu"] is False
    cmd = launch_command(setup, tmp_path / "worker.json", files["accelerate"], port=29999)
    assert cmd[1:6] == ["-m", "accelerate.commands.launch", "--config_file", str(files["accelerate"]),
                        "--main_process_port"]
    args = launch_command_parser().parse_args(cmd[3:])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.num_processes == 2 and args.module and args.training_script == "vramplan.profiler.worker"
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == mp
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is reshard
    assert type(plugin.cpu_offload).__name__ == ("CPUOffloadPolicy" if offload_params else "OffloadPolicy")
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.activation_checkpointing is False and plugin.cpu_ram_efficient_loading is False


def test_torchrun_command_for_ddp(tmp_path):
    setup = Setup.create(gpus=4)
    files = write_launch_files(setup, tmp_path)
    assert files == {"accelerate": None, "configs": {}} and list(tmp_path.iterdir()) == []
    cmd = launch_command(setup, tmp_path / "w.json", None)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "-m",
                       "vramplan.profiler.worker", str(tmp_path / "w.json")]


@pytest.mark.skipif(not HAS_DEEPSPEED, reason=NO_DEEPSPEED)
def test_accelerate_yaml_for_deepspeed_parses(tmp_path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    setup = Setup.create(method="full", gpus=2, strategy="zero2")
    files = write_launch_files(setup, tmp_path)
    ds = json.loads((tmp_path / "deepspeed.json").read_text())
    assert ds == files["configs"]["deepspeed"] == deepspeed_config(setup)
    args = launch_command_parser().parse_args(launch_command(setup, tmp_path / "w.json", files["accelerate"])[3:])
    args, _, _ = _validate_launch_command(args)
    assert args.use_deepspeed and args.deepspeed_config_file == str(tmp_path / "deepspeed.json")


def test_deepspeed_yaml_points_at_the_json(tmp_path):
    files = write_launch_files(Setup.create(method="full", gpus=2, strategy="zero3"), tmp_path)
    acc = files["configs"]["accelerate"]
    assert acc["distributed_type"] == "DEEPSPEED" and "mixed_precision" not in acc
    assert acc["deepspeed_config"] == {"deepspeed_config_file": str(tmp_path / "deepspeed.json"),
                                       "zero3_init_flag": False}
    assert json.loads((tmp_path / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 3


# ------------------------------------------------------------------------------------------------- checks
def test_refusals_before_launching():
    with pytest.raises(ProfileError, match="sharded inference is neither modelled nor profiled"):
        check_launchable(Setup.create(method="inference", gpus=2, strategy="fsdp"), "cpu")
    with pytest.raises(ProfileError, match=r"--offload params moves GPU memory to the host"):
        check_launchable(Setup.create(method="full", gpus=2, strategy="fsdp", offload="params"), "cpu")
    with pytest.raises(ProfileError, match="--attn flash needs a CUDA GPU"):
        check_launchable(Setup.create(gpus=2, attn="flash"), "cpu")
    zero = Setup.create(method="full", gpus=2, strategy="zero2")
    with pytest.raises(ProfileError, match="deepspeed package" if not HAS_DEEPSPEED else "needs CUDA GPUs"):
        check_launchable(zero, "cpu")


def _user_error(capsys, args: list[str]) -> str:
    """``vramplan ARGS`` through the entry point: exit 2 and one ``vramplan: error:`` line, returned."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vramplan: error: "), err
    return err[0]


@pytest.mark.skipif(HAS_DEEPSPEED, reason="checks the message shown where DeepSpeed is not installed")
def test_cli_zero_without_deepspeed_exits_2_with_one_line(tiny_config, tmp_path, capsys):
    line = _user_error(capsys, ["profile", tiny_config, "--method", "full", "--gpus", "2", "--strategy", "zero2",
                                "--device", "cpu", "--out", str(tmp_path)])
    assert "--strategy zero2 needs the deepspeed package, which vramplan does not depend on: pip install deepspeed" \
        in line
    assert list(tmp_path.iterdir()) == [], "nothing is launched or written"


@pytest.mark.skipif(_cuda_devices() > 0, reason="checks the CPU refusal")
def test_cli_offload_on_cpu_exits_2(tiny_config, tmp_path, capsys):
    line = _user_error(capsys, ["profile", tiny_config, "--method", "full", "--gpus", "2", "--strategy", "fsdp",
                                "--offload", "params", "--out", str(tmp_path)])
    assert "--offload params moves GPU memory to the host; there is nothing to offload on the CPU" in line


def test_fault_on_one_rank():
    f = Fault.parse("oom@backward:1 if rank==1")
    assert (f.kind, f.phase, f.step, f.when) == ("oom", "backward", 1, ("rank", 1))
    s = Setup.create()
    assert f.applies_to(s, 1) and not f.applies_to(s, 0) and not f.applies_to(s)


# -------------------------------------------------------------------------------------------------- merge
def _rank_record(rank: int, status: str = "ok", rss: int = 100, alloc_peak: int | None = None,
                 t0: float = 1000.0) -> dict:
    rec = new_record("tiny", Setup.create().to_dict(), 1, 0)
    rec["status"] = status
    rec["exception"] = None
    rec["environment"] = {"device": "cpu", "rank": rank, "local_rank": rank, "pid": 100 + rank, "world_size": 2,
                          "torch": "x", "parallel": {"engine": "MULTI_CPU"}}
    rec["clock_origin_unix"] = t0
    rec["phases"] = [{"name": "forward", "step": 0, "t_start": 0.0, "t_end": 0.1 * (rank + 1),
                      "peak_allocated_bytes": alloc_peak, "peak_reserved_bytes": None, "peak_active_bytes": None,
                      "device_used_bytes": None, "rss_bytes": rss}]
    rec["samples"] = {c: [v] for c, v in (("t", 0.0), ("device_used_bytes", None), ("process_used_bytes", None),
                                          ("allocated_bytes", alloc_peak), ("reserved_bytes", None),
                                          ("rss_bytes", rss))}
    rec["measured"] = {"peak_allocated_bytes": alloc_peak, "peak_reserved_bytes": None, "device_used_bytes": None,
                       "cuda_context_bytes": None, "peak_rss_bytes": rss, "peak_active_bytes": None,
                       "window": "steps>=warmup", "peak_phase": "forward", "peak_step": 0,
                       "per_phase": {"forward": {"peak_allocated_bytes": alloc_peak, "peak_reserved_bytes": None,
                                                 "peak_active_bytes": None, "device_used_bytes": None,
                                                 "rss_bytes": rss, "count": 1, "mean_s": 0.1 * (rank + 1)}}}
    rec["estimate"] = {"device_used_bytes": 500, "peak_allocated_bytes": 150, "peak_reserved_bytes": 200}
    if status == "oom":
        rec["oom"] = {"phase": "forward", "step": 0, "message": "CUDA out of memory.", "requested_bytes": 2}
    if status == "error":
        rec["exception"] = {"type": "RuntimeError", "message": "Connection closed by peer", "phase": "backward",
                            "step": 0}
    validate_record(rec)
    return rec


def _merge(records, **kw):
    return merge_ranks(records, model="tiny", setup=Setup.create(gpus=len(records)).to_dict(), steps=1, warmup=0,
                       launch={"launcher": "torchrun", "device": "cpu"}, **kw)


def test_merge_takes_the_maximum_over_ranks_and_the_peak_ranks_timeline():
    a, b = _rank_record(0, rss=300, alloc_peak=120, t0=1000.0), _rank_record(1, rss=200, alloc_peak=180, t0=1000.5)
    m = _merge([a, b])
    validate_record(m)
    assert m["status"] == "ok" and m["environment"]["world_size"] == 2
    assert "rank" not in m["environment"] and "pid" not in m["environment"]
    assert m["measured"]["peak_rss_bytes"] == 300 and m["measured"]["peak_allocated_bytes"] == 180
    assert m["measured"]["peak_rank"] == 1, "on CUDA the rank with the highest allocated peak"
    assert m["phases"] == b["phases"] and m["samples"] == b["samples"]
    assert m["measured"]["per_phase"]["forward"]["mean_s"] == pytest.approx(0.2), "the slowest rank"
    assert [e["t_offset_s"] for e in m["ranks"]] == [0.0, 0.5]
    assert [e["pid"] for e in m["ranks"]] == [100, 101]
    assert m["error"]["peak_allocated_bytes"] == {"measured": 180, "estimated": 150,
                                                 "error_pct": pytest.approx(100 * (150 - 180) / 180)}
    cpu = _merge([_rank_record(0, rss=300), _rank_record(1, rss=400)])
    assert cpu["measured"]["peak_rank"] == 1 and cpu["measured"]["peak_rss_bytes"] == 400, "RSS on the CPU"


def test_merge_status_oom_wins_and_a_missing_rank_is_an_error():
    m = _merge([_rank_record(0, status="error"), _rank_record(1, status="oom")])
    assert m["status"] == "oom" and m["oom"]["rank"] == 1 and m["exception"]["rank"] == 0
    validate_record(m)
    m = _merge([_rank_record(0, status="interrupted"), None], missing_reason="killed")
    assert m["status"] == "error" and m["ranks"][1]["status"] == "error"
    assert m["exception"] == {"type": "NoRecord", "message": "killed", "phase": None, "step": None, "rank": 1}
    assert m["measured"]["peak_rss_bytes"] == 100, "the rank that wrote a record still counts"
    validate_record(m)
    m = _merge([None, None], missing_reason="launch failed", missing_status="interrupted")
    assert m["status"] == "interrupted" and m["phases"] == [] and m["measured"]["peak_rank"] is None
    validate_record(m)


def test_validate_rejects_inconsistent_ranks():
    m = _merge([_rank_record(0), _rank_record(1)])
    bad = json.loads(json.dumps(m))
    bad["environment"]["world_size"] = 3
    with pytest.raises(RecordError, match="world_size is 3 but ranks has 2"):
        validate_record(bad)
    bad = json.loads(json.dumps(m))
    del bad["ranks"][1]["samples"]
    with pytest.raises(RecordError, match=r"ranks\[1\] lacks samples"):
        validate_record(bad)
    bad = json.loads(json.dumps(m))
    bad["ranks"][0]["phases"][0]["rss_bytes"] = 1.5
    with pytest.raises(RecordError, match=r"ranks\[0\]\.phases\[0\]\.rss_bytes must be int bytes"):
        validate_record(bad)


# --------------------------------------------------------------------------------------- real runs (gloo)
@pytest.fixture(scope="module")
def ddp_run(tiny_config, tmp_path_factory):
    """2 ranks, DDP through torchrun and the HF Trainer, LoRA on q/v."""
    setup = Setup.create(method="lora", batch=2, seq=32, lora=LoraConfig(r=4, targets=("q_proj", "v_proj")),
                         gpus=2, strategy="ddp")
    out = tmp_path_factory.mktemp("ddp")
    said: list[str] = []
    warned: list[str] = []
    result = profile_run(tiny_config, setup, RunOptions(steps=2, warmup=1, out=str(out), device="cpu"),
                         progress=said.append, warn=warned.append)
    return result, said, warned


@pytest.mark.slow
def test_ddp_trainer_two_ranks_record(ddp_run):
    result, said, warned = ddp_run
    rec = load_record(result.path)                          # validates, ranks included
    assert rec["status"] == "ok", rec.get("exception")
    env = rec["environment"]
    assert env["world_size"] == 2 and env["loop"] == "trainer" and env["device"] == "cpu"
    assert env["launch"]["launcher"] == "torchrun" and env["launch"]["exit_code"] == 0
    assert env["launch"]["command"][2:4] == ["torch.distributed.run", "--standalone"]
    ranks = rec["ranks"]
    assert [e["rank"] for e in ranks] == [0, 1] and [e["status"] for e in ranks] == ["ok", "ok"]
    assert ranks[0]["pid"] != ranks[1]["pid"], "one process per rank"
    for e in ranks:
        assert _phases_by_step(e["phases"]) == {s: ["forward", "backward", "optimizer"] for s in range(3)}
        n = len(e["samples"]["t"])
        assert n > 5 and all(len(v) == n for v in e["samples"].values()), "every rank is sampled"
        assert e["measured"]["peak_rss_bytes"] > 0 and e["t_offset_s"] >= 0
        p = e["parallel"]
        assert (p["engine"], p["backend"], p["wrapper"], p["world_size"]) == \
            ("MULTI_CPU", "gloo", "DistributedDataParallel", 2)
    assert rec["measured"]["peak_rss_bytes"] == max(e["measured"]["peak_rss_bytes"] for e in ranks)
    top = rec["measured"]["peak_rank"]
    assert rec["phases"] == ranks[top]["phases"] and rec["samples"] == ranks[top]["samples"]
    assert any(m.startswith("rank 0: step 3/3") for m in said), said
    assert sum("NVML" in w for w in warned) <= 1, "a warning every rank gives is shown once"


def test_ddp_rank_holds_what_the_estimator_says(ddp_run):
    """Exact, per rank: a whole replica (weights 512-B rounded per tensor as the CUDA allocator does) and DDP's
    Reducer buckets, against the estimator's per-rank model for the same setup."""
    rec = ddp_run[0].record
    est = rec["estimate"]
    assert est["per_rank"]["gpus"] == 2 and est["per_rank"]["strategy"] == "ddp"
    lora_params = 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4))    # 2 layers x (q: A 4x64, B 64x4; v: A 4x64, B 32x4)
    for e in rec["ranks"]:
        p = e["parallel"]
        assert p["local_param_alloc_bytes"] == est["per_rank"]["model_states"]["weights"]
        assert p["local_trainable_param_bytes"] == lora_params * 4 == est["per_rank"]["model_states"]["gradients"]
        assert p["ddp_bucket_cap_bytes"] == D.DDP_BUCKET_CAP_BYTES and p["ddp_gradient_as_bucket_view"] is False
        assert sum(alloc(b) for b in p["ddp_bucket_bytes"]) == est["breakdown_bytes"]["buffers/ddp_buckets"]


@pytest.fixture(scope="module")
def fsdp_cli_run(tiny_config, tmp_path_factory):
    """2 ranks, FSDP2 through accelerate launch and the plain loop, full fine-tuning, via the CLI."""
    out = tmp_path_factory.mktemp("fsdp") / "fsdp.json"
    r = CliRunner().invoke(cli, ["profile", tiny_config, "--method", "full", "--batch", "2", "--seq", "32", "--gpus",
                                 "2", "--strategy", "fsdp", "--loop", "plain", "--device", "cpu", "--steps", "2",
                                 "--warmup", "1", "--out", str(out), "--json"], catch_exceptions=False)
    return r, out


@pytest.mark.slow
def test_fsdp_plain_two_ranks_via_cli(fsdp_cli_run):
    r, out = fsdp_cli_run
    assert r.exit_code == 0, r.stderr[-3000:]
    rec = json.loads(r.stdout)
    assert rec == load_record(out)
    assert rec["status"] == "ok" and rec["environment"]["world_size"] == 2
    launch = rec["environment"]["launch"]
    assert launch["launcher"] == "accelerate" and launch["configs"]["accelerate"]["fsdp_config"]["fsdp_version"] == 2
    assert "launching 2 ranks (fsdp) on cpu" in r.stderr
    for e in rec["ranks"]:
        assert e["status"] == "ok"
        assert _phases_by_step(e["phases"]) == {s: ["forward", "backward", "optimizer"] for s in range(3)}
        p = e["parallel"]
        assert (p["engine"], p["backend"], p["wrapper"]) == ("FSDP", "gloo", "FSDPLlamaForCausalLM")
        # every tensor is sharded on dim 0 (even rows here), fp32 trainable weights under bf16-mixed
        assert p["local_param_bytes"] == p["local_trainable_param_bytes"] == TINY_PARAMS * 4 // 2
        assert p["local_param_alloc_bytes"] == rec["estimate"]["per_rank"]["model_states"]["weights"]


def test_report_renders_a_merged_record(fsdp_cli_run, tmp_path):
    _, out = fsdp_cli_run
    html = tmp_path / "index.html"
    r = CliRunner().invoke(cli, ["report", str(out), "-o", str(html)], catch_exceptions=False)
    assert r.exit_code == 0 and "wrote" in r.stderr and "warning" not in r.stderr
    page = html.read_text()
    assert "tiny" in page and "2 GPUs fsdp" in page
    md = CliRunner().invoke(cli, ["report", str(out), "--format", "md"], catch_exceptions=False)
    assert md.exit_code == 0
    row = next(ln for ln in md.stdout.splitlines() if str(out) in ln)
    rss = load_record(out)["measured"]["peak_rss_bytes"]
    assert f"| {rss / 2**30:.2f} |" in row, "the table shows the merged (largest-rank) peak"
    from vramplan.report import collect, run_views

    view = run_views(collect([str(out)]))[0]
    assert view.readable and view.notices == [] and view.status == "ok" and len(view.phases) == 10


@pytest.mark.slow
def test_oom_on_one_rank_makes_the_run_an_oom(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_PROFILE_FAULT", "oom@backward:1 if rank==1")
    r = CliRunner().invoke(cli, ["profile", tiny_config, "--method", "full", "--batch", "1", "--seq", "16",
                                 "--gpus", "2", "--loop", "plain", "--device", "cpu", "--steps", "1", "--warmup",
                                 "1", "--out", str(tmp_path / "oom.json")], catch_exceptions=False)
    assert r.exit_code == 1, r.stderr[-3000:]
    assert "out of memory on rank 1 in backward of step 1" in r.stdout
    rec = load_record(tmp_path / "oom.json")
    assert rec["status"] == "oom" and rec["oom"]["rank"] == 1 and rec["oom"]["phase"] == "backward"
    assert rec["ranks"][1]["status"] == "oom"
    assert rec["ranks"][0]["status"] in ("error", "interrupted"), \
        "rank 0 loses its peer in the next collective (gloo) or is stopped by torchrun"
    assert rec["ranks"][1]["phases"][-1]["status"] == "oom"


# ------------------------------------------------------------------------------------------------ on GPUs
@pytest.mark.gpu
@pytest.mark.skipif(_cuda_devices() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus(tiny_config, tmp_path, strategy):
    setup = Setup.create(method="full", batch=2, seq=64, gpus=2, strategy=strategy)
    rec = profile_run(tiny_config, setup, RunOptions(steps=2, warmup=1, out=str(tmp_path), device="cuda")).record
    assert rec["status"] == "ok", rec.get("exception")
    assert [e["device_index"] for e in rec["ranks"]] == [0, 1]
    assert rec["ranks"][0]["gpu_uuid"] != rec["ranks"][1]["gpu_uuid"]
    for e in rec["ranks"]:
        assert e["measured"]["peak_allocated_bytes"] > 0
        assert e["parallel"]["local_param_alloc_bytes"] == rec["estimate"]["per_rank"]["model_states"]["weights"]
    assert rec["measured"]["peak_allocated_bytes"] == max(e["measured"]["peak_allocated_bytes"] for e in rec["ranks"])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_DEEPSPEED, reason=NO_DEEPSPEED)
@pytest.mark.skipif(_cuda_devices() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_two_gpus_deepspeed(tiny_config, tmp_path, strategy):
    setup = Setup.create(method="full", batch=2, seq=64, gpus=2, strategy=strategy)
    rec = profile_run(tiny_config, setup, RunOptions(steps=2, warmup=1, out=str(tmp_path), device="cuda")).record
    assert rec["status"] == "ok", rec.get("exception")
    assert [e["parallel"]["engine"] for e in rec["ranks"]] == ["DEEPSPEED", "DEEPSPEED"]
    assert rec["environment"]["launch"]["configs"]["deepspeed"] == deepspeed_config(setup)
