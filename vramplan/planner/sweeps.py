"""Sweeps: every model × setup of an option product, evaluated by structural group, one row each."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from ..errors import VramplanError
from ..estimate import estimate, overhead
from ..estimate.grid import Counters, estimate_counters
from ..quantized import checkpoint_scheme, checkpoint_setup
from ..setup import SETUP_OPTIONS, Setup, option_columns
from ..shapes.spec import ModelSpec
from ..units import GiB

#: the option columns of a sweep row, in order: every setup option, by its name (``rank``, ``lora_dropout``)
OPTION_COLUMNS: tuple[str, ...] = tuple(o.name for o in SETUP_OPTIONS)
COUNTER_COLUMNS = ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes")
#: the run-level columns of a sweep with ``--lengths``/``--alloc-conf`` (the caching allocator's replay of the
#: run, ``vramplan/allocator``): what ``vramplan plan --lengths ... --json`` reports under ``allocator``
RUN_COLUMNS = ("run_peak_allocated_bytes", "run_peak_reserved_bytes", "run_fragmentation_share")


def setup_columns(setup: Setup) -> dict[str, Any]:
    """The effective option values of ``setup`` (defaults filled in) as sweep columns."""
    return option_columns(setup)


def gib_column(name: str) -> str:
    """``peak_allocated_bytes`` -> ``peak_allocated (GiB)``."""
    return (name[: -len("_bytes")] if name.endswith("_bytes") else name) + " (GiB)"


def gpu_columns(gpu_name: str) -> tuple[str, str]:
    """Column names of one card's verdict: ``<gpu>_fits``, ``<gpu>_headroom_bytes``."""
    return f"{gpu_name}_fits", f"{gpu_name}_headroom_bytes"


def run_fits_column(gpu_name: str) -> str:
    """``<gpu>_run_fits``: the replayed run on that card raises no out-of-memory error."""
    return f"{gpu_name}_run_fits"


def replays(setup: Setup) -> bool:
    """Whether a row of ``setup`` replays the caching allocator (``--lengths`` or ``--alloc-conf`` given)."""
    return setup.lengths is not None or setup.alloc_conf is not None


def run_columns(spec: ModelSpec, setup: Setup, row: dict[str, Any], gpus: Sequence[Any] = (), margin: float = 0.0,
                model: Any = None) -> dict[str, Any]:
    """The run-level columns of one row: the caching allocator replayed over the run of ``--lengths``
    (``vramplan/allocator/plan.py``: its steps, seed and batching rules) with ``--alloc-conf`` and no memory
    limit, as ``vramplan plan --lengths ... --json``'s ``allocator`` without ``--gpu``; and, per card,
    ``<gpu>_run_fits``: whether the run replayed on what the allocator may reserve there (the card less
    ``--margin`` and what the estimate places outside the allocator: the CUDA context) raises no OOM.

    A card on which the unlimited run's reserved peak fits needs no second replay: the allocator behaves the
    same until a cudaMalloc fails (unless a memory fraction, which depends on the card, is set). ``model``: a :class:`~vramplan.allocator.lengths.StepModel` of the row's
    structure, reused across its batch and seq.

    Raises:
        LengthsError, AllocConfError: a bad ``--lengths`` or ``--alloc-conf`` (one line each).
    """
    from ..allocator.conf import parse_alloc_conf
    from ..allocator.lengths import run_reserved
    from ..allocator.plan import capacity_from, parse_lengths_option, run_options

    dist, batching, long_samples = parse_lengths_option(setup.lengths)
    steps, seed = run_options(setup.lengths)
    conf = parse_alloc_conf(setup.alloc_conf)
    kw = dict(batching=batching, long_samples=long_samples, seed=seed, model=model)
    run = run_reserved(spec, setup, dist, steps, conf, None, **kw)
    out: dict[str, Any] = {"run_peak_allocated_bytes": run.peak_allocated_bytes,
                           "run_peak_reserved_bytes": run.peak_reserved_bytes,
                           "run_fragmentation_share": round(run.fragmentation_share, 4),
                           "run_peak_reserved (GiB)": run.peak_reserved_bytes / GiB}
    for g in gpus:
        usable = overhead.usable_bytes(g.memory_bytes, margin)
        on_card = usable - row[gpu_columns(g.name)[1]]          # the row's device_used on this card
        cap = capacity_from(usable, on_card, row["peak_reserved_bytes"])
        # without a memory fraction (which scales with the card) the capped run is the unlimited one while
        # every cudaMalloc fits: replayed again only when its peak does not
        same = conf.memory_fraction is None and run.peak_reserved_bytes <= cap
        out[run_fits_column(g.name)] = (same
                                        or run_reserved(spec, setup, dist, steps, conf, cap, **kw).oom_step is None)
    return out


def device_map_data(spec: ModelSpec, setup: Setup, breakdown: dict[str, int], gpu: Any = None,
                    margin: float = 0.0) -> dict[str, Any]:
    """The ``device_map`` section of an inference plan with ``--device-map`` (``vramplan plan --json``): the split
    :func:`~vramplan.estimate.device_map.device_map_section` makes on ``gpu`` (its memory less the CUDA context
    each, unless ``--max-memory`` is given) and each GPU's peak; ``breakdown`` is the single-GPU estimate's
    components. The one place ``plan`` and ``sweep`` get it from.

    Raises:
        SetupError: a quantization whose split is not mirrored (device_map.split_sizes), a bad ``--max-memory``,
            or neither it nor a GPU.
    """
    from ..estimate.device_map import device_map_section
    from ..estimate.overhead import cuda_context_bytes, uses_bitsandbytes

    context = cuda_context_bytes(gpu.architecture if gpu is not None else None, uses_bitsandbytes(setup))
    free = gpu.memory_bytes - context if gpu is not None else None
    section = device_map_section(spec, setup, breakdown, gpu, margin, free, context)
    # what each GPU of the split is judged against (the plan page draws it): the card less --margin
    section["gpu"] = gpu.name if gpu is not None else None
    section["capacity_bytes"] = overhead.usable_bytes(gpu.memory_bytes, margin) if gpu is not None else None
    section["cuda_context_bytes"] = context
    return section


#: the card-free columns of a sweep with ``--device-map`` rows: the split ``--max-memory`` gives (empty without it)
SPLIT_COLUMNS = ("split_layers", "split_max_peak_allocated_bytes", "split_max_device_used_bytes")


def split_columns(gpu_name: str) -> tuple[str, str]:
    """Per card of a sweep with ``--device-map`` rows: ``<gpu>_split_layers``, ``<gpu>_split_max_device_used_bytes``
    (the split made on that card, and its fullest GPU's nvidia-smi figure)."""
    return f"{gpu_name}_split_layers", f"{gpu_name}_split_max_device_used_bytes"


def split_summary(section: dict[str, Any]) -> dict[str, Any]:
    """What a sweep row shows of a ``device_map`` section: where the layers went (``0:0-13 1:14-27+lm_head``, and
    ``cpu:N modules`` / ``disk:N modules`` for what is offloaded), the largest per-GPU peak allocated and
    nvidia-smi figures."""
    devices = section["devices"]
    where = [f"{r['device']}:{r['layers']}" + ("+lm_head" if r["holds_lm_head"] else "") for r in devices]
    for d in ("cpu", "disk"):
        n = sum(1 for v in section["device_map"].values() if v == d)
        if n:
            where.append(f"{d}:{n} module{'s' if n != 1 else ''}")
    return {"layers": " ".join(where),
            "max_peak_allocated_bytes": max((r["peak_allocated_bytes"] for r in devices), default=0),
            "max_device_used_bytes": max((r["device_used_bytes"] for r in devices), default=0)}


def device_map_columns(spec: ModelSpec, setup: Setup, breakdown: dict[str, int], gpus: Sequence[Any] = (),
                       margin: float = 0.0) -> dict[str, Any]:
    """The columns of one ``--device-map`` row: the card-free split of ``--max-memory`` (:data:`SPLIT_COLUMNS`,
    ``None`` without it) and per card the split on that card (:func:`split_columns`) with ``<gpu>_fits`` (every
    GPU of the split fits, as ``vramplan plan --gpu <card> --device-map ...`` exits 0) and ``<gpu>_headroom_bytes``
    (the tightest GPU's), replacing the single-GPU verdict.

    Raises:
        SetupError: as :func:`device_map_data`; without ``--max-memory`` and without a card, there is nothing to
        split on.
    """
    from ..errors import SetupError

    if setup.max_memory is None and not gpus:
        raise SetupError("--device-map needs the GPUs' memory: pass --gpu (a card or a size) or --max-memory")
    out: dict[str, Any] = dict.fromkeys(SPLIT_COLUMNS)
    if setup.max_memory is not None:
        s = split_summary(device_map_data(spec, setup, breakdown))
        out.update({f"split_{k}": v for k, v in s.items()})
    for g in gpus:
        section = device_map_data(spec, setup, breakdown, g, margin)
        s = split_summary(section)
        cap = overhead.usable_bytes(g.memory_bytes, margin)
        layers_col, used_col = split_columns(g.name)
        fits_col, head_col, head_gib = _card_columns(g.name)
        head = min((cap - r["device_used_bytes"] for r in section["devices"]), default=cap)
        out.update({layers_col: s["layers"], used_col: s["max_device_used_bytes"], fits_col: section["fits"],
                    head_col: head, head_gib: head / GiB})
    return out


def sweep_row(model: str, spec: ModelSpec, setup: Setup, gpus: Sequence[Any] = (), margin: float = 0.0,
              cols: dict[str, Any] | None = None, counters: Counters | None = None,
              params_trainable: int | None = None) -> dict[str, Any]:
    """One row: model, the setup's options, counters (bytes and GiB) and, per card, verdict and headroom.

    The counters are those of ``vramplan plan`` without ``--gpu``; each card's headroom and verdict are
    ``vramplan plan --gpu <card> --margin``'s (its architecture's CUDA context included). ``counters`` and
    ``params_trainable``, when given (by :func:`sweep`, from :func:`~vramplan.estimate.grid.estimate_counters`),
    are used instead of calling the estimator.
    """
    if counters is None or params_trainable is None:
        est = estimate(spec, setup, detail=False)      # the counters only: the same numbers, 2-3x faster
        counters = Counters(est.peak_allocated_bytes, est.peak_reserved_bytes, est.device_used_bytes,
                            est.peak_phase)
        params_trainable = est.params_trainable
    allocated, reserved, device, phase = counters
    row: dict[str, Any] = {"model": model}
    row.update(cols if cols is not None else setup_columns(setup))
    row["params_trainable"] = params_trainable
    row["peak_allocated_bytes"] = allocated
    row["peak_reserved_bytes"] = reserved
    row["device_used_bytes"] = device
    row["peak_phase"] = phase
    row["peak_allocated (GiB)"] = allocated / GiB
    row["peak_reserved (GiB)"] = reserved / GiB
    row["device_used (GiB)"] = device / GiB
    ctx0 = overhead.cuda_context_bytes("", False)
    for g in gpus:
        # fit_on(est, g, margin) without an Estimate: the card's CUDA context instead of the unknown one's
        on_card = device - ctx0 + overhead.cuda_context_bytes(getattr(g, "architecture", "") or "", False)
        cap = overhead.usable_bytes(g.memory_bytes, margin)
        fits_col, head_col, head_gib = _card_columns(g.name)
        row[fits_col] = on_card <= cap
        row[head_col] = cap - on_card
        row[head_gib] = (cap - on_card) / GiB
    return row


@lru_cache(maxsize=256)
def _card_columns(gpu_name: str) -> tuple[str, str, str]:
    fits_col, head_col = gpu_columns(gpu_name)
    return fits_col, head_col, gib_column(head_col)


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)    # (model, why)


def sweep(models: Sequence[tuple[str, ModelSpec]], setups: Sequence[Setup], gpus: Sequence[Any] = (),
          margin: float = 0.0, progress: Callable[[int], None] | None = None) -> SweepResult:
    """Evaluate every model × setup.

    ``models`` are resolved once by the caller (the same spec object every time, so the estimator's cache
    hits); ``setups`` are the distinct setups of the option product, built once each. Setups that differ only
    in batch and seq form one structural group, evaluated by one
    :func:`~vramplan.estimate.grid.estimate_counters` call (the numbers of :func:`estimate`, point for point);
    cards are applied without calling the estimator again. A model × setup the estimator refuses (e.g. targets
    that match no module of that model) is skipped and reported in ``skipped``, once per row.
    """
    result = SweepResult([])
    cols = [setup_columns(s) for s in setups]
    # one group per structure, evaluated back to back (the estimator's bounded caches never evict a structure
    # still needed); rows come out in the order of ``setups``
    groups: dict[tuple[Setup, int], list[int]] = {}
    for i, s in enumerate(setups):
        groups.setdefault((structure_key(s), s.new_tokens), []).append(i)
    for name, spec in models:
        rows: dict[int, dict[str, Any]] = {}
        stored: bool | None = None          # whether the model is a pre-quantized checkpoint (asked once)
        for idx in groups.values():
            first = setups[idx[0]]
            try:
                trainable = estimate(spec, first, detail=False).params_trainable
                counters = estimate_counters(spec, first, [(setups[i].batch, setups[i].seq) for i in idx])
            except VramplanError as exc:
                result.skipped.extend((name, str(exc)) for _ in idx)
                if progress is not None:
                    progress(len(idx))
                continue
            if stored is None:              # estimate() has read its quantization_config without error
                stored = checkpoint_scheme(spec.config, name) is not None
            for i, c in zip(idx, counters, strict=True):
                # a pre-quantized checkpoint runs as stored: its row shows the quantization it was estimated with
                ran = checkpoint_setup(spec.config, setups[i], name)[0] if stored else setups[i]
                rows[i] = sweep_row(name, spec, ran, gpus, margin, cols[i] if ran is setups[i] else None, c,
                                    trainable)
            if first.device_map != "none":     # issue 17: the split over --gpus GPUs, per card, as plan gives it
                try:
                    for i in idx:         # the setup as given, as plan's device_map section takes it
                        rows[i].update(device_map_columns(spec, setups[i], estimate(spec, setups[i]).breakdown_bytes,
                                                          gpus, margin))
                except VramplanError as exc:
                    result.skipped.extend((name, str(exc)) for i in idx if rows.pop(i, None) is not None)
            if replays(first):          # only with --lengths/--alloc-conf: the replay costs seconds a row
                from ..allocator.lengths import StepModel

                try:
                    model = StepModel(spec, first)
                    for i in idx:
                        rows[i].update(run_columns(spec, setups[i], rows[i], gpus, margin, model))
                except VramplanError as exc:
                    result.skipped.extend((name, str(exc)) for i in idx if rows.pop(i, None) is not None)
            if progress is not None:
                progress(len(idx))
        result.rows.extend(rows[i] for i in range(len(setups)) if i in rows)
    return result


def structure_key(s: Setup) -> Setup:
    """``s`` without batch, seq and generated tokens: what the estimator's structural cache is keyed on."""
    return replace(s, batch=1, seq=1, new_tokens=0)


def product(axes: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """The cartesian product of option lists, as one dict of option values per combination."""
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        yield dict(zip(keys, values, strict=True))
