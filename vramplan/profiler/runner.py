"""The profiler run: build the model, run the steps under the sampler, write the record whatever happens.

An OOM is a result, not a failure: the record gets status ``oom`` with the phase, step, message and the
requested size, and memory is freed so that the next run (``--until-oom``) starts clean. Ctrl-C (SIGINT)
finishes the record with status ``interrupted``; a second Ctrl-C while it is being written is ignored. Any
other exception gives status ``error`` with the exception in ``exception`` — the record is always written,
in a ``finally``.

Measurement window: steps ``warmup .. warmup+steps-1``; the first optimizer step creates the optimizer state,
so with ``warmup=0`` the first step's peak is usually lower than the steady state (see
:func:`vramplan.profiler.record.summarize`).

Several GPUs (``setup.gpus > 1`` or a sharding ``setup.strategy``): :func:`profile_run` hands the run to
:func:`vramplan.profiler.launch.profile_distributed`, which starts one process per rank through ``torchrun``
(DDP) or ``accelerate launch`` (FSDP, DeepSpeed); each rank runs this same code with a :class:`Rank` and writes
its own record, and the parent merges them (``docs/multi-gpu.md``, "Profiling several ranks").
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import VramplanError
from .options import (
    AXES,
    UNTIL_OOM_MAX_DOUBLINGS,
    Callback,
    ProfileError,
    Rank,
    RunOptions,
    needs_launch,
    stderr_warn,
)
from .phases import FAULT_ENV, Fault, PhaseTracker, is_oom, requested_bytes
from .record import (
    UNTIL_OOM_SCHEMA,
    RunResult,
    UntilOomResult,
    compare,
    new_record,
    record_path,
    summarize,
    validate_record,
    write_record,
)
from .sampler import Nvml, Sampler, rss_bytes


def select_device(choice: str, index: int = 0) -> Any:
    """``auto``: ``cuda:<index>`` when PyTorch sees a GPU, else the CPU. ``cuda`` without one is an error.
    ``index`` is the local rank in a multi-process run (one GPU per rank)."""
    import torch

    if choice == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise ProfileError(f"--device cuda: PyTorch {torch.__version__} sees no CUDA device "
                           f"(torch.version.cuda={torch.version.cuda}); use --device cpu or --device auto")
    return torch.device("cuda", index) if available else torch.device("cpu")


_CONTEXT_BYTES: dict[int, int | None] = {}


def measure_cuda_context(index: int, nvml: Nvml) -> int | None:
    """Device memory the CUDA context takes: NVML used after ``torch.cuda.init()`` and a 1-element tensor, minus
    NVML used before, minus what the allocator reserved for that tensor (one 2 MiB segment).

    Valid only in a process that has not touched CUDA yet; later calls return the first measurement. With lazy
    module loading (``CUDA_MODULE_LOADING=LAZY``, the default since CUDA 11.7) kernels loaded later add a little
    more, which shows in ``device_used_bytes`` but not here. Other processes allocating on the same device at
    the same moment would be counted too.
    """
    import torch

    if index in _CONTEXT_BYTES or torch.cuda.is_initialized():
        if not nvml.ok:
            nvml.bind(index)
        return _CONTEXT_BYTES.get(index)
    before = nvml.used_by_uuid()
    torch.cuda.init()
    x = torch.zeros(1, device=torch.device("cuda", index))
    torch.cuda.synchronize(index)
    nvml.bind(index)
    after = nvml.device_used()
    reserved = int(torch.cuda.memory_reserved(index))
    del x
    uuid = nvml.uuid()
    value = None
    if after is not None and uuid is not None and uuid in before:
        value = after - before[uuid] - reserved
    _CONTEXT_BYTES[index] = value
    return value


@contextlib.contextmanager
def _sigint_finishes_record() -> Iterator[Callable[[], None]]:
    """Ctrl-C raises ``KeyboardInterrupt`` (once); the yielded function then ignores SIGINT while the record is
    written. The previous handler is restored on exit. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    def shield() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    signal.signal(signal.SIGINT, handler)
    try:
        yield shield
    finally:
        signal.signal(signal.SIGINT, previous)


def _estimate(resolved: Any, setup: Any, device: Any, warn: Callback) -> dict[str, Any] | None:
    """The analytic estimate for the same setup (on CUDA: for this card, whose architecture sets the CUDA
    context the estimate includes), or ``None`` when the estimator is not available."""
    try:
        from ..estimate import estimate
    except ImportError:
        return None
    try:
        gpu = device_as_gpu(device) if device.type == "cuda" else None
        return estimate(resolved.spec, setup, gpu).to_dict()
    except VramplanError as exc:
        warn(f"no estimate to compare with: {exc}")
    except Exception as exc:  # the estimator is a separate component: its failure must not lose a measurement
        warn(f"no estimate to compare with: the estimator failed ({type(exc).__name__}: {exc})")
    return None


def _free_memory(device: Any) -> None:
    gc.collect()
    try:
        import torch

        if device is not None and getattr(device, "type", None) == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except Exception:
        pass


def profile_run(model: str, setup: Any, options: RunOptions | None = None, *, resolved: Any = None,
                warn: Callback | None = None, progress: Callback | None = None, rank: Rank | None = None) -> RunResult:
    """Build MODEL for ``setup``, run ``warmup + steps`` steps while sampling memory, write the run record.

    Args:
        model: a bundled name, a Hub id with a cached config, a ``config.json`` or a model folder (real weights
            when it holds ``*.safetensors``).
        setup: the :class:`~vramplan.setup.Setup` to run.
        options: steps, warmup, sampling rate, loop, device, output.
        resolved: an already resolved model (skips :func:`vramplan.profiles.resolve_model`).
        warn: receives one-line warnings (default: stderr).
        progress: receives one-line progress messages (default: none).
        rank: set by the worker of a multi-process run (:mod:`vramplan.profiler.worker`): run this rank only.
            Left ``None``, a setup that :func:`needs_launch` is launched as ``setup.gpus`` processes and the
            result is the merged record (``ranks``, ``measured`` = the maximum over ranks).

    Returns:
        The record (status ``ok``, ``oom``, ``interrupted`` or ``error``) and where it was written.

    Raises:
        VramplanError: a model that does not resolve, options that cannot work. Failures during the run are
            recorded, not raised.
    """
    import torch

    options = options or RunOptions()
    options.validate()
    warn = warn or stderr_warn
    say = progress or (lambda _m: None)
    if rank is None and needs_launch(setup):
        from .launch import profile_distributed

        return profile_distributed(model, setup, options, resolved=resolved, warn=warn, progress=progress)
    fault = Fault.parse(options.fault if options.fault is not None else os.environ.get(FAULT_ENV))
    if fault is not None and not fault.applies_to(setup, rank.rank if rank is not None else 0):
        fault = None
    if resolved is None:
        from ..profiles import resolve_model

        resolved = resolve_model(model)
    device = select_device(options.device, rank.local_rank if rank is not None else 0)
    if setup.attn == "flash" and device.type != "cuda":
        raise ProfileError("--attn flash needs a CUDA GPU (flash-attn has no CPU kernels); use --attn sdpa")
    source = model if os.path.isdir(os.path.expanduser(model)) else None

    t_wall = time.time()
    t0 = time.perf_counter()
    n_steps = options.warmup + options.steps
    rec = new_record(resolved.name, setup.to_dict(), options.steps, options.warmup)
    rec["exception"] = None
    path = record_path(options.out, resolved.name, rec["setup"]) if options.write else None
    cuda_index = device.index if device.type == "cuda" else None
    if cuda_index is None and device.type == "cuda":
        cuda_index = 0

    nvml = Nvml(warn=warn)
    context_bytes = measure_cuda_context(cuda_index, nvml) if cuda_index is not None else None
    if cuda_index is not None and rank is not None:
        torch.cuda.set_device(cuda_index)       # after the context measurement: NCCL and the engines use it
    rec["environment"] = env = _environment(device, nvml, options, resolved)
    if rank is not None:
        env.update(rank=rank.rank, local_rank=rank.local_rank, world_size=rank.world_size, launcher=rank.launcher,
                   pid=os.getpid())
        rec["clock_origin_unix"] = t_wall       # aligns this rank's clock (t) with the other ranks'
    parallel: dict[str, Any] = {}
    sampler = Sampler(options.sample_hz, t0, cuda_index=cuda_index, nvml=nvml if cuda_index is not None else None)
    tracker = PhaseTracker(t0, cuda_index=cuda_index,
                           read_device_used=nvml.device_used if cuda_index is not None else (lambda: None),
                           read_rss=rss_bytes, fault=fault)
    tracker.measure_from_step = options.warmup
    snapshot_path: Path | None = None
    if options.snapshot and cuda_index is None:
        warn("--snapshot records the CUDA caching allocator; there is none on the CPU, so no snapshot is written")
    recording = options.snapshot and cuda_index is not None
    best_step_peak = [-1]

    def dump_snapshot() -> None:
        nonlocal snapshot_path
        target = (path or Path(options.out) / "run.json").with_suffix(".snapshot.pickle")
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.cuda.memory._dump_snapshot(str(target))
        snapshot_path = target

    def on_step_end(step: int) -> None:
        t = tracker.now()
        phases = [p for p in tracker.phases if p.get("step") == step]
        key = "peak_allocated_bytes" if cuda_index is not None else "rss_bytes"
        peak = max((p.get(key) or 0 for p in phases), default=0)
        label = " (warmup)" if step < options.warmup else ""
        say(f"step {step + 1}/{n_steps}{label}: {t - tracker.step_starts.get(step, t):.2f} s, "
            f"peak {'allocated' if cuda_index is not None else 'RSS'} {peak / 2**30:.3f} GiB")
        if recording and step >= options.warmup and peak > best_step_peak[0]:
            best_step_peak[0] = peak
            dump_snapshot()

    tracker.on_step_end = on_step_end

    built = None
    batches: list[dict[str, Any]] = []
    with _sigint_finishes_record() as shield:
        try:
            sampler.start()
            if recording:
                torch.cuda.memory._record_memory_history(max_entries=1_000_000)
            say(f"profiling {resolved.name}: {setup.method}"
                f"{'' if setup.quant == 'none' else ' ' + setup.quant}, batch {setup.batch} x seq {setup.seq}, "
                f"{setup.precision}, {options.loop if setup.training else 'inference'} loop on {device}")
            from .loader import build_model, import_stack

            import_stack(setup)       # import cost (seconds, ~100 MiB RSS) stays out of the load phase
            with tracker.phase("load", None):
                built = build_model(source, dict(resolved.spec.config), setup, device)
            env["weights"] = built.weights
            env["model_build"] = built.notes
            env["params"] = {"trainable": built.trainable_params, "total": built.total_params,
                             "bytes_by_dtype": built.bytes_by_dtype}
            vocab = int(getattr(built.model.config, "vocab_size", None) or resolved.spec.vocab_size)
            batches = synthetic_batches_for(setup, n_steps, vocab, rank=rank,
                                            trainer=setup.training and options.loop == "trainer")
            say(f"loaded ({built.weights} weights) in {tracker.phases[-1]['t_end'] - tracker.phases[-1]['t_start']:.1f} s")
            if not setup.training:
                from .loops import run_inference

                run_inference(built.model, setup, device, n_steps, tracker, batches)
            elif options.loop == "plain":
                from .loops import run_plain

                run_plain(built.model, setup, device, n_steps, tracker, batches, rank=rank, info=parallel)
            else:
                from .loops import run_trainer

                run_trainer(built.model, setup, device.type, n_steps, tracker, batches, rank=rank, info=parallel)
            rec["status"] = "ok"
        except KeyboardInterrupt:
            shield()
            rec["status"] = "interrupted"
            tracker.end("interrupted")
        except Exception as exc:  # every failure must still write the record
            shield()
            open_phase = tracker.current
            if is_oom(exc):
                rec["status"] = "oom"
                msg = str(exc).strip()
                rec["oom"] = {"phase": open_phase["name"] if open_phase else None,
                              "step": open_phase.get("step") if open_phase else tracker.step,
                              "message": msg.splitlines()[0] if msg else type(exc).__name__,
                              "requested_bytes": requested_bytes(msg)}
                tracker.end("oom")
                if recording:
                    with contextlib.suppress(Exception):
                        dump_snapshot()
            else:
                rec["status"] = "error"
                rec["exception"] = {"type": type(exc).__name__, "message": str(exc).strip()[:2000],
                                    "phase": open_phase["name"] if open_phase else None,
                                    "step": open_phase.get("step") if open_phase else tracker.step,
                                    "traceback": traceback.format_exc()[-8000:]}
                tracker.end("error")
                if isinstance(exc, VramplanError):
                    rec["exception"]["user_error"] = True
        finally:
            shield()
            with contextlib.suppress(Exception):
                if recording:
                    torch.cuda.memory._record_memory_history(enabled=None)
            sampler.stop()
            built = None
            batches = []
            _free_memory(device)
            if rank is not None:
                env["parallel"] = parallel or None
            rec["phases"] = tracker.phases
            rec["samples"] = sampler.snapshot()
            rec["measured"] = summarize(tracker.phases, rec["samples"], warmup=options.warmup,
                                        t_measure=tracker.t_measure, window_peaks=tracker.window_peaks,
                                        all_peaks=tracker.all_peaks, cuda_context_bytes=context_bytes)
            rec["estimate"] = _estimate(resolved, setup, device, warn)
            rec["error"] = compare(rec["measured"], rec["estimate"])
            rec["snapshot"] = str(snapshot_path) if snapshot_path else None
            rec["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_wall))
            rec["wall_s"] = time.perf_counter() - t0
            if path is not None:
                path = write_record(rec, path, warn)     # before validating: a writer bug must not lose the measurement
            validate_record(rec)
    if rank is None and rec["status"] == "error" and rec["exception"] and rec["exception"].get("user_error"):
        # A user-fixable error raised during the run (e.g. --attn flash without flash-attn): one line, exit 2.
        raise ProfileError(f"{rec['exception']['message']} (record: {path})")
    return RunResult(rec, path, snapshot_path)


def synthetic_batches_for(setup: Any, n_steps: int, vocab: int, *, rank: Rank | None = None,
                          trainer: bool = False) -> list[dict[str, Any]]:
    """The run's batches. Several ranks: the Trainer's data loader gives each rank its own ``batch`` rows of one
    shared dataset (``n_steps × world_size`` batches); the plain loop draws each rank's batches with its own
    seed (the rank)."""
    from .loops import synthetic_batches

    if rank is None:
        return synthetic_batches(n_steps, setup.batch, setup.seq, vocab)
    if trainer:
        return synthetic_batches(n_steps * rank.world_size, setup.batch, setup.seq, vocab)
    return synthetic_batches(n_steps, setup.batch, setup.seq, vocab, seed=rank.rank)


def _environment(device: Any, nvml: Nvml, options: RunOptions, resolved: Any) -> dict[str, Any]:
    from .env import collect_environment

    env = collect_environment(device, nvml)
    env["loop"] = options.loop
    env["sample_hz"] = float(options.sample_hz)
    env["model_origin"] = resolved.origin
    env["model_source"] = resolved.source
    return env


# ------------------------------------------------------------------------------------------------ until-oom
def _device_total(device: Any) -> int | None:
    try:
        import torch

        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[1])
    except Exception:
        pass
    return None


def device_as_gpu(device: Any) -> Any:
    """The run's device as a :class:`~vramplan.profiles.Gpu`: the catalogue card with exactly this driver-reported
    memory when there is one (its architecture decides the CUDA context the planner adds), else a bare size."""
    from ..profiles import Gpu, gpu_catalogue

    total = _device_total(device)
    if total is None:
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    same = [g for g in gpu_catalogue() if g.memory_bytes == total]
    words = set(name.lower().replace("-", " ").split())
    for g in same:
        if set(g.name.lower().replace("-", " ").split()) & words:
            return g
    return Gpu(name=name, memory_bytes=total, from_size=True)


def predicted_limit(resolved: Any, setup: Any, axis: str, gpu: Any) -> tuple[int | None, int | None]:
    """The planner's answer for the same device: ``(largest value on the doubling ladder that fits, largest value
    that fits)`` from :func:`vramplan.planner.max_batch`/``max_seq``; ``(None, None)`` without a GPU or planner."""
    if gpu is None:
        return None, None
    try:
        from ..planner import max_batch, max_seq
    except ImportError:
        return None, None
    try:
        best = (max_batch if axis == "batch" else max_seq)(resolved.spec, setup, gpu)
    except Exception:
        return None, None
    if best is None:
        return None, None
    value, ladder = getattr(setup, axis), None
    while value <= best:
        ladder, value = value, value * 2
    return ladder, best


def until_oom(model: str, setup: Any, options: RunOptions, axis: str, *, warn: Callback | None = None,
              progress: Callback | None = None) -> UntilOomResult:
    """Double ``setup.batch`` (or ``seq``) from its value until a run OOMs; one record per run and a summary.

    The summary puts the real limit (largest value that ran) beside the planner's prediction for the same
    device: ``predicted_limit`` on the same doubling ladder, and ``predicted_max`` (the planner's exact largest
    value, ``max_batch``/``max_seq``); ``null`` on the CPU or when the planner is not importable.
    """
    from ..profiles import resolve_model

    if axis not in AXES:
        raise ProfileError(f"--until-oom {axis!r} is not one of: {', '.join(AXES)}")
    options.validate()
    warn = warn or stderr_warn
    say = progress or (lambda _m: None)
    resolved = resolve_model(model)
    max_pos = resolved.spec.max_position_embeddings
    runs: list[RunResult] = []
    rows: list[dict[str, Any]] = []
    value = getattr(setup, axis)
    limit = first_oom = None
    stopped = f"{UNTIL_OOM_MAX_DOUBLINGS} doublings without an OOM"
    device = select_device(options.device)
    if device.type == "cpu":
        warn("--until-oom on the CPU doubles until host memory runs out; the kernel's OOM killer may end the "
             "process before PyTorch raises, and swap makes it slow")
    out_dir = Path(options.out).parent if Path(options.out).suffix == ".json" else Path(options.out)
    run_options = replace(options, out=str(out_dir))
    for _ in range(UNTIL_OOM_MAX_DOUBLINGS):
        if axis == "seq" and max_pos is not None and value > max_pos:
            stopped = f"seq {value} > max_position_embeddings ({max_pos})"
            break
        s = setup.with_(**{axis: value})
        say(f"--until-oom {axis}: trying {axis} {value}")
        r = profile_run(model, s, run_options, resolved=resolved, warn=warn, progress=progress)
        runs.append(r)
        m = r.record["measured"]
        rows.append({"value": value, "status": r.status, "record": r.path.name if r.path else None,
                     "peak_allocated_bytes": m.get("peak_allocated_bytes"),
                     "peak_reserved_bytes": m.get("peak_reserved_bytes"),
                     "device_used_bytes": m.get("device_used_bytes"), "peak_rss_bytes": m.get("peak_rss_bytes"),
                     "estimated_device_used_bytes": (r.record["estimate"] or {}).get("device_used_bytes"),
                     "oom": r.record["oom"]})
        if r.status == "ok":
            limit = value
            value *= 2
            continue
        first_oom = value if r.status == "oom" else None
        stopped = r.status
        break
    total = _device_total(device)
    gpu = device_as_gpu(device) if device.type == "cuda" else None
    predicted, predicted_max = predicted_limit(resolved, setup, axis, gpu)
    # "runs" lists the record files (relative to this summary's folder), as the report reads summaries;
    # "trials" has one row per run with its headline numbers.
    summary = {
        "schema": UNTIL_OOM_SCHEMA, "model": resolved.name, "axis": axis, "setup": setup.to_dict(),
        "device": device.type, "device_total_bytes": total,
        "runs": [row["record"] for row in rows if row["record"]], "trials": rows,
        "limit": limit, "first_oom": first_oom, "stopped": stopped,
        "predicted_limit": predicted, "predicted_max": predicted_max,
        "planner_gpu": getattr(gpu, "name", None),
    }
    path = None
    if options.write:
        path = record_path(out_dir, resolved.name, setup.to_dict(), suffix=f"-until-oom-{axis}")
        import json

        from ..io import atomic_write_text

        atomic_write_text(path, json.dumps(summary, indent=1) + "\n")
    return UntilOomResult(summary, path, runs)
