"""Profile several ranks: launch one process per rank, let each write its record, merge them into one.

``vramplan profile MODEL --gpus N --strategy S`` (or :func:`vramplan.profiler.profile_run` with such a setup)
comes here. The parent process:

1. checks what it can before starting anything (enough CUDA devices, DeepSpeed installed, ...);
2. writes the launch configuration the estimator assumes (:func:`accelerate_config`, :func:`deepspeed_config`)
   and a worker spec into a temporary folder;
3. starts the launcher — ``python -m torch.distributed.run --standalone --nproc-per-node N`` for ``ddp``,
   ``python -m accelerate.commands.launch --config_file <generated YAML>`` for FSDP and DeepSpeed — on the module
   :mod:`vramplan.profiler.worker`; each rank runs :func:`~vramplan.profiler.runner.profile_run` for itself
   (its own sampler, phase tracker and allocator counters, on ``cuda:LOCAL_RANK`` or the CPU with gloo) and
   writes ``rank<R>.json``;
4. merges the rank records with :func:`vramplan.profiler.record.merge_ranks` and writes the result atomically.

The launcher's own output and the libraries' go to stderr as they come; the workers' ``vramplan:`` lines go to
the ``progress``/``warn`` callbacks (warnings once, whichever rank says them). Ctrl-C reaches every process of
the terminal's process group: the ranks record ``interrupted`` and the parent still merges what they wrote.
A rank that wrote nothing (killed by the launcher after another rank failed, a crash of the interpreter) is
listed in ``ranks`` with status ``error`` and the reason.

The generated configurations hold exactly the defaults the estimator models (``docs/multi-gpu.md``); the
merged record keeps them under ``environment.launch``.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .loops import DEEPSPEED_STAGES, FSDP_STRATEGIES, accelerator_mixed_precision
from .options import Callback, ProfileError, RunOptions, stderr_warn
from .record import RunResult, load_record, merge_ranks, record_path, validate_record, write_record

#: ``--strategy`` -> the launcher that starts its ranks
LAUNCHER = {"ddp": "torchrun", "fsdp": "accelerate", "fsdp-grad-op": "accelerate", "zero1": "accelerate",
            "zero2": "accelerate", "zero3": "accelerate"}
#: how long the parent waits for the launcher after Ctrl-C before killing it
INTERRUPT_GRACE_S = 60.0
#: lines of launcher output kept for the error message of a launch in which no rank wrote a record
TAIL_LINES = 40


# ------------------------------------------------------------------------------------------------- configs
def deepspeed_config(setup: Any) -> dict[str, Any]:
    """The DeepSpeed JSON for ``--strategy zero1|zero2|zero3`` with the defaults ``estimate/distributed.py``
    models, written out (DeepSpeed's own defaults, not transformers' ``"auto"`` values, which are smaller).

    Batch sizes are explicit (``train_micro_batch_size_per_gpu`` = ``--batch``, no accumulation) so that the
    plain loop, which has no data loader for accelerate to read them from, works too; ``gradient_clipping``
    1.0 is the Trainer's ``max_grad_norm``. bf16/fp16 follow the compute dtype (DeepSpeed has no autocast: its
    engine casts the model). Offload: ``offload_optimizer`` (and for ``--offload params`` ``offload_param``)
    to pinned CPU memory; the Trainer's torch optimizer then steps on the CPU partitions
    (``zero_force_ds_cpu_optimizer`` false, the memory DeepSpeed's CPU Adam would use).
    """
    from ..estimate import distributed as D

    stage = DEEPSPEED_STAGES[setup.strategy]
    zero: dict[str, Any] = {
        "stage": stage,
        "reduce_bucket_size": D.ZERO_REDUCE_BUCKET_SIZE,
        "allgather_bucket_size": D.ZERO_ALLGATHER_BUCKET_SIZE,
        "overlap_comm": stage == 3,
        "contiguous_gradients": True,
    }
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": D.ZERO3_PREFETCH_BUCKET_SIZE,
                     "stage3_max_live_parameters": D.ZERO3_MAX_LIVE_PARAMETERS,
                     "stage3_param_persistence_threshold": D.ZERO3_PARAM_PERSISTENCE_THRESHOLD,
                     "sub_group_size": D.ZERO3_SUB_GROUP_SIZE})
    if setup.offload in ("optimizer", "params"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if setup.offload == "params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": setup.batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": setup.batch * setup.gpus,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": setup.compute_dtype == "bf16"},
        "fp16": {"enabled": setup.compute_dtype == "fp16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
    }
    if setup.offload != "none":
        cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


def accelerate_config(setup: Any, deepspeed_config_file: str | None = None) -> dict[str, Any]:
    """The ``accelerate launch --config_file`` YAML (as a dict) for an FSDP or DeepSpeed ``setup``.

    FSDP, as ``estimate/distributed.py`` models it: ``fsdp_version: 2`` (``fully_shard``), the transformer
    auto-wrap policy (each decoder layer a unit, from the model's ``_no_split_modules``; accelerate adds the
    input embedding and ``[final norm, lm_head]`` units), ``fsdp_reshard_after_forward`` true (FULL_SHARD) or
    false (``fsdp-grad-op``), ``fsdp_offload_params`` for ``--offload params`` (``CPUOffloadPolicy``), no
    FSDP activation checkpointing (``--grad-ckpt`` is the model's own, as on one GPU), no CPU-RAM-efficient
    loading (every rank loads the model, then it is sharded), ``mixed_precision`` the autocast dtype under
    ``*-mixed`` (accelerate then sets ``MixedPrecisionPolicy(param_dtype, reduce_dtype)``) and ``no`` under
    ``*-true``. DeepSpeed: the JSON of :func:`deepspeed_config` by path, no ``zero3_init_flag``; the
    precision is the JSON's (accelerate refuses ``mixed_precision`` beside a DeepSpeed config file).
    ``use_cpu`` stays false even for CPU runs: with it, accelerate launch starts a single process; the
    worker picks the CPU itself (``Accelerator(cpu=True)``, gloo).
    """
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": setup.gpus,
        "use_cpu": False,
    }
    if setup.strategy in FSDP_STRATEGIES:
        cfg["distributed_type"] = "FSDP"
        cfg["mixed_precision"] = accelerator_mixed_precision(setup)
        cfg["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": setup.strategy == "fsdp",
            "fsdp_offload_params": setup.offload == "params",
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_activation_checkpointing": False,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        }
    elif setup.strategy in DEEPSPEED_STAGES:
        cfg["distributed_type"] = "DEEPSPEED"
        cfg["deepspeed_config"] = {"deepspeed_config_file": deepspeed_config_file or "deepspeed.json",
                                   "zero3_init_flag": False}
    else:
        raise ProfileError(f"--strategy {setup.strategy} is launched with torchrun, not accelerate launch")
    return cfg


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(setup: Any, spec_path: Path, config_path: Path | None, port: int | None = None) -> list[str]:
    """The command that starts ``setup.gpus`` workers on ``spec_path``."""
    worker = ["-m", "vramplan.profiler.worker", str(spec_path)]
    if LAUNCHER[setup.strategy] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(setup.gpus),
                *worker]
    assert config_path is not None
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_path),
            "--main_process_port", str(port if port is not None else _free_port()), *worker]


def write_launch_files(setup: Any, folder: Path) -> dict[str, Any]:
    """Write the launcher's configuration files into ``folder``; return ``{"accelerate": path, "configs":
    {name: content}}`` (no files for torchrun)."""
    import yaml

    out: dict[str, Any] = {"accelerate": None, "configs": {}}
    if LAUNCHER[setup.strategy] == "torchrun":
        return out
    ds_path = None
    if setup.strategy in DEEPSPEED_STAGES:
        ds = deepspeed_config(setup)
        ds_path = folder / "deepspeed.json"
        ds_path.write_text(json.dumps(ds, indent=1) + "\n")
        out["configs"]["deepspeed"] = ds
    acc = accelerate_config(setup, str(ds_path) if ds_path else None)
    acc_path = folder / "accelerate.yaml"
    acc_path.write_text(yaml.safe_dump(acc, sort_keys=False))
    out["configs"]["accelerate"] = acc
    out["accelerate"] = acc_path
    return out


# -------------------------------------------------------------------------------------------------- checks
def _device_type(choice: str) -> str:
    import torch

    if choice == "cpu":
        return "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ProfileError(f"--device cuda: PyTorch {torch.__version__} sees no CUDA device "
                           f"(torch.version.cuda={torch.version.cuda}); use --device cpu or --device auto")
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_launchable(setup: Any, device_type: str) -> None:
    """Refuse, before starting any process, what the ranks could only fail at."""
    n, strategy = setup.gpus, setup.strategy
    if setup.quantized and not setup.bnb:
        raise ProfileError(f"--quant {setup.quant} is a pre-quantized checkpoint format: the profiler builds random "
                           "weights and quantizes them with bitsandbytes at load time (nf4, fp4, int8); estimate it "
                           "with vramplan plan")
    if not setup.training and setup.cache != "dynamic":
        raise ProfileError(f"--cache {setup.cache}: the profiler's decode loop uses transformers' DynamicCache; use "
                           "--cache dynamic, or estimate it with vramplan plan")
    if strategy == "fsdp1":
        raise ProfileError("--strategy fsdp1 cannot be profiled yet: the profiler launches FSDP2 (fsdp_version 2); "
                           "use --strategy fsdp, or estimate it with vramplan plan")
    if not setup.training and strategy != "ddp":
        raise ProfileError(f"--method inference with --strategy {strategy}: sharded inference is neither modelled "
                           "nor profiled; use --strategy ddp (one replica per GPU)")
    if strategy in DEEPSPEED_STAGES and importlib.util.find_spec("deepspeed") is None:
        raise ProfileError(f"--strategy {strategy} needs the deepspeed package, which vramplan does not depend on: "
                           "pip install deepspeed")
    if device_type == "cuda":
        import torch

        have = torch.cuda.device_count()
        if have < n:
            raise ProfileError(f"--gpus {n} needs {n} CUDA devices, PyTorch sees {have} "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!s}); "
                               f"use --gpus {have} or fewer, or --device cpu")
    else:
        if strategy in DEEPSPEED_STAGES:
            raise ProfileError(f"--strategy {strategy} runs DeepSpeed, which needs CUDA GPUs; on the CPU use "
                               "--strategy ddp, fsdp or fsdp-grad-op")
        if setup.offload != "none":
            raise ProfileError(f"--offload {setup.offload} moves GPU memory to the host; there is nothing to "
                               "offload on the CPU: profile it on GPUs, or use --offload none")
        if setup.attn == "flash":
            raise ProfileError("--attn flash needs a CUDA GPU (flash-attn has no CPU kernels); use --attn sdpa")


# ---------------------------------------------------------------------------------------------- the parent
def _forward(line: str, say: Callback, warn: Callback, seen: set[str]) -> None:
    text = line.rstrip("\n")
    if text.startswith("vramplan: warning: "):
        msg = text[len("vramplan: warning: "):]
        if msg not in seen:
            seen.add(msg)
            warn(msg)
    elif text.startswith("vramplan: "):
        say(text[len("vramplan: "):])
    elif text:
        sys.stderr.write(text + "\n")


def _run_launcher(cmd: list[str], say: Callback, warn: Callback) -> tuple[int, list[str], bool]:
    """Run the launcher, forwarding its output; returns (exit code, last lines, whether Ctrl-C was pressed)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    seen: set[str] = set()
    interrupted = False
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", bufsize=1, env=env)
    assert proc.stdout is not None
    while True:
        try:
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                _forward(line, say, warn, seen)
            break
        except KeyboardInterrupt:
            # The terminal sent SIGINT to the whole process group: the ranks are finishing their records.
            interrupted = True
            with contextlib.suppress(Exception):
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)     # in case only the parent got it
    try:
        rc = proc.wait(timeout=INTERRUPT_GRACE_S if interrupted else None)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    return rc, list(tail), interrupted


def profile_distributed(model: str, setup: Any, options: RunOptions, *, resolved: Any = None,
                        warn: Callback | None = None, progress: Callback | None = None) -> RunResult:
    """Run ``setup`` as ``setup.gpus`` ranks and return the merged record (see the module docstring).

    Raises:
        ProfileError: a setup the ranks could not run (checked before launching), or a user error a rank
            recorded (quoted with the record's path).
    """
    warn = warn or stderr_warn
    say = progress or (lambda _m: None)
    if resolved is None:
        from ..profiles import resolve_model

        resolved = resolve_model(model)
    device_type = _device_type(options.device)
    check_launchable(setup, device_type)
    if options.snapshot and device_type == "cpu":
        warn("--snapshot records the CUDA caching allocator; there is none on the CPU, so no snapshot is written")
    path = record_path(options.out, resolved.name, setup.to_dict()) if options.write else None
    t_wall, t0 = time.time(), time.perf_counter()
    launcher = LAUNCHER[setup.strategy]
    with tempfile.TemporaryDirectory(prefix="vramplan-ranks-") as tmp:
        folder = Path(tmp)
        files = write_launch_files(setup, folder)
        spec = {"model": model, "setup": setup.to_dict(), "launcher": launcher, "ranks_dir": str(folder),
                "options": {"steps": options.steps, "warmup": options.warmup, "sample_hz": options.sample_hz,
                            "loop": options.loop, "snapshot": options.snapshot and device_type == "cuda",
                            "device": device_type, "fault": options.fault}}
        spec_path = folder / "worker.json"
        spec_path.write_text(json.dumps(spec, indent=1) + "\n")
        cmd = launch_command(setup, spec_path, files["accelerate"])
        say(f"launching {setup.gpus} rank{'s' if setup.gpus > 1 else ''} ({setup.strategy}) on "
            f"{device_type}: {shlex.join(cmd)}")
        rc, tail, interrupted = _run_launcher(cmd, say, warn)
        records: list[dict[str, Any] | None] = []
        for r in range(setup.gpus):
            p = folder / f"rank{r}.json"
            try:
                records.append(load_record(p))
            except (OSError, ValueError):
                records.append(None)
        snapshots = _keep_snapshots(records, folder, path)
        launch = {"launcher": launcher, "command": cmd, "exit_code": rc, "configs": files["configs"],
                  "device": device_type}
        if all(r is None for r in records):
            reason = (f"{launcher} exited with code {rc} and no rank wrote a record; its last output:\n"
                      + "\n".join(tail))
        else:
            reason = f"this rank wrote no record ({launcher} exited with code {rc}"
            reason += ", after Ctrl-C)" if interrupted else "; it was killed, or failed before its run started)"
        merged = merge_ranks(records, model=resolved.name, setup=setup.to_dict(), steps=options.steps,
                             warmup=options.warmup, launch=launch, missing_reason=reason,
                             missing_status="interrupted" if interrupted else "error")
        for entry, snap in zip(merged["ranks"], snapshots, strict=True):
            entry["snapshot"] = snap
    merged["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_wall))
    merged["wall_s"] = time.perf_counter() - t0
    if path is not None:
        path = write_record(merged, path, warn)      # atomic; before validating: a merge bug must not lose the ranks' data
    validate_record(merged)
    exc = merged.get("exception")
    if merged["status"] == "error" and exc and exc.get("user_error"):
        raise ProfileError(f"rank {exc.get('rank')}: {exc['message']} (record: {path})")
    return RunResult(merged, path)


def _keep_snapshots(records: list[dict[str, Any] | None], folder: Path, path: Path | None) -> list[str | None]:
    """Move each rank's allocator snapshot from the temporary folder to ``<record>.rank<R>.snapshot.pickle``."""
    out: list[str | None] = []
    for r, rec in enumerate(records):
        src = rec.get("snapshot") if rec else None
        if not src or path is None or not Path(src).exists():
            out.append(None)
            continue
        target = path.with_name(f"{path.stem}.rank{r}.snapshot.pickle")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, target)
        out.append(str(target))
    return out
