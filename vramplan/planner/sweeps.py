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
from ..setup import SETUP_OPTIONS, Setup, option_columns
from ..shapes.spec import ModelSpec
from ..units import GiB

#: the option columns of a sweep row, in order: every setup option, by its name (``rank``, ``lora_dropout``)
OPTION_COLUMNS: tuple[str, ...] = tuple(o.name for o in SETUP_OPTIONS)
COUNTER_COLUMNS = ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes")


def setup_columns(setup: Setup) -> dict[str, Any]:
    """The effective option values of ``setup`` (defaults filled in) as sweep columns."""
    return option_columns(setup)


def gib_column(name: str) -> str:
    """``peak_allocated_bytes`` -> ``peak_allocated (GiB)``."""
    return (name[: -len("_bytes")] if name.endswith("_bytes") else name) + " (GiB)"


def gpu_columns(gpu_name: str) -> tuple[str, str]:
    """Column names of one card's verdict: ``<gpu>_fits``, ``<gpu>_headroom_bytes``."""
    return f"{gpu_name}_fits", f"{gpu_name}_headroom_bytes"


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
            for i, c in zip(idx, counters, strict=True):
                rows[i] = sweep_row(name, spec, setups[i], gpus, margin, cols[i], c, trainable)
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
