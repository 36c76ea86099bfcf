"""Planning on top of the estimator: fit, the GPU ladder, sweeps and plan-file checks.

Everything here calls :func:`vramplan.estimate.estimate` and never reimplements a formula, with one
exception kept deliberately small: :func:`device_used_on` moves an estimate made without a GPU onto a card by
swapping the architecture-dependent CUDA context (``estimate/overhead.py::cuda_context_bytes``), the only
thing the estimator reads from a card besides its capacity. ``tests/planner`` checks it against
``estimate(spec, setup, gpu)`` on every catalogue card, so a new GPU dependence in the estimator shows up there.

Searches (:func:`search_max`) grow exponentially and then bisect. They assume the verdict is monotone in the
searched value (more batch, sequence or rank never needs less memory), a property of the estimator that is
property-tested with it; under that assumption the result is exact: the value fits and the next step does not.

No torch import, no printing.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ForeignConfigError, PlanFileError, SetupError, VramplanError, close_matches
from .estimate import Estimate, Fit, estimate, overhead
from .estimate.distributed import smallest_gpus
from .estimate.grid import Counters, estimate_counters
from .interop import TRAINING_ARGS_KEYS, from_axolotl, from_llama_factory
from .interop.hf import from_training_args_json
from .lora import DEFAULT_TARGETS, LoraConfig
from .options import Option, read_value
from .setup import RUN_OPTIONS, SETUP_OPTIONS, Setup, option_columns, setup_kwargs
from .spec.model import ModelSpec
from .units import GiB

#: ``fit`` reports the largest sequence length as a multiple of this (what cutoff_len / max_seq_length values
#: usually are; finer than powers of two, which would under-report by up to half).
SEQ_STEP = 128
#: Search limits: a value equal to its limit means "at least this" (reported in ``at_limit``).
BATCH_LIMIT = 1 << 16
SEQ_LIMIT = 1 << 22
RANK_LIMIT = 1 << 14
#: ``fit`` looks for the fewest GPUs up to this many (``min_gpus`` is ``null`` when even this many do not fit)
MIN_GPUS_LIMIT = 64


# ---------------------------------------------------------------------------------------------- search
def search_max(ok: Callable[[int], bool], lo: int, hi: int, start: int | None = None) -> int | None:
    """The largest ``n`` in ``[lo, hi]`` with ``ok(n)``, for a predicate that is true up to some point.

    Starts at ``start`` (default ``lo``), doubles while ``ok`` holds, then bisects between the last value
    that passed and the first that failed; when ``start`` fails it bisects between ``lo`` and ``start``.

    Returns:
        The largest passing value, ``hi`` when even ``hi`` passes, or ``None`` when ``lo`` fails.
    """
    if lo > hi:
        return None
    seen: dict[int, bool] = {}

    def test(n: int) -> bool:
        if n not in seen:
            seen[n] = ok(n)
        return seen[n]

    start = min(max(start if start is not None else lo, lo), hi)
    if test(start):
        good = start
        while True:
            if good >= hi:
                return hi
            probe = min(hi, max(good * 2, good + 1))
            if test(probe):
                good = probe
            else:
                bad = probe
                break
    else:
        if start == lo or not test(lo):
            return None
        good, bad = lo, start
    while bad - good > 1:
        mid = (good + bad) // 2
        if test(mid):
            good = mid
        else:
            bad = mid
    return good


# ------------------------------------------------------------------------------------------------- GPUs
def device_used_on(est: Estimate, gpu: Any) -> int:
    """``device_used_bytes`` of ``est`` (estimated with ``gpu=None``) on ``gpu``: the same setup with that
    card's CUDA context (``estimate/overhead.py::cuda_context_bytes`` by architecture)."""
    arch = getattr(gpu, "architecture", "") or ""
    return (est.device_used_bytes - overhead.cuda_context_bytes("", False)
            + overhead.cuda_context_bytes(arch, False))


def fit_on(est: Estimate, gpu: Any, margin: float = 0.0) -> Fit:
    """The verdict ``estimate(spec, setup, gpu, margin).fit`` would give, from an estimate made without a GPU."""
    device = device_used_on(est, gpu)
    cap = int(gpu.memory_bytes * (1 - margin))
    return Fit(gpu.name, gpu.memory_bytes, cap - device, device <= cap, margin)


@dataclass(frozen=True)
class CardVerdict:
    """One card of ``vramplan gpus --fits``."""

    gpu: str
    capacity_bytes: int
    device_used_bytes: int
    headroom_bytes: int
    fits: bool
    usd_per_hour: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "capacity_bytes": self.capacity_bytes, "device_used_bytes": self.device_used_bytes,
                "headroom_bytes": self.headroom_bytes, "fits": self.fits, "usd_per_hour": self.usd_per_hour}


def card_verdicts(spec: ModelSpec, setup: Setup, margin: float = 0.0, cards: Sequence[Any] | None = None,
                  prices: Mapping[str, float] | None = None) -> list[CardVerdict]:
    """Every card (default: the catalogue) with verdict and headroom.

    Order: cards that fit first; among them the smallest memory first, or, with ``prices``, the cheapest
    first (cards without a price after the priced ones); then the cards that do not fit, smallest first
    (a price does not rank a card that cannot run the setup).
    """
    from .profiles import gpu_catalogue

    cards = list(cards) if cards is not None else list(gpu_catalogue())
    est = estimate(spec, setup)
    out = []
    for g in cards:
        f = fit_on(est, g, margin)
        price = None if prices is None else prices.get(g.name)
        out.append(CardVerdict(g.name, g.memory_bytes, device_used_on(est, g), f.headroom_bytes, f.fits, price))
    if prices is None:
        out.sort(key=lambda v: (not v.fits, v.capacity_bytes, v.gpu))
    else:
        out.sort(key=lambda v: (False, v.usd_per_hour is None, v.usd_per_hour or 0.0, v.capacity_bytes, v.gpu)
                 if v.fits else (True, False, 0.0, v.capacity_bytes, v.gpu))
    return out


class PriceFileError(VramplanError):
    """A ``--prices`` file that cannot be read: not YAML, an unknown card, a price that is not a number."""


def load_prices(path: str | Path) -> dict[str, float]:
    """``{card name: usd_per_hour}`` from a YAML mapping ``{gpu: price}`` or a list of
    ``{gpu: name, usd_per_hour: price}`` (``name``/``price`` also accepted); card names resolve through
    the catalogue's aliases.

    Raises:
        PriceFileError: naming the file and the entry.
    """
    import yaml

    from .profiles import gpu_catalogue, resolve_gpu

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceFileError(f"{p}: cannot read the price file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PriceFileError(f"{p}: not YAML: {_yaml_problem(exc)}") from None
    pairs: list[tuple[str, Any, Any]] = []
    if isinstance(data, dict):
        pairs = [(f"key {k!r}", k, v) for k, v in data.items()]
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise PriceFileError(f"{p}: entry {i + 1}: expected a mapping with gpu and usd_per_hour, "
                                     f"got {type(item).__name__}")
            name = item.get("gpu", item.get("name"))
            price = item.get("usd_per_hour", item.get("price"))
            pairs.append((f"entry {i + 1}", name, price))
    else:
        raise PriceFileError(f"{p}: expected a mapping {{gpu-name: usd_per_hour}} or a list of "
                             f"{{gpu, usd_per_hour}}, got {type(data).__name__}")
    names = [g.name for g in gpu_catalogue()]
    out: dict[str, float] = {}
    for where, name, price in pairs:
        if not isinstance(name, str):
            raise PriceFileError(f"{p}: {where}: the card name must be a string, got {name!r}")
        try:
            g = resolve_gpu(name)
        except VramplanError:
            g = None
        if g is None or g.from_size:
            raise PriceFileError(f"{p}: {where}: unknown GPU {name!r}{close_matches(name, names)}; "
                                 "use a name from `vramplan gpus`")
        if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0 or math.isnan(price):
            raise PriceFileError(f"{p}: {where}: usd_per_hour must be a number >= 0, got {price!r}")
        out[g.name] = float(price)
    return out


def _yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)


# ------------------------------------------------------------------------------------------ plan page
def _around(value: int, floor: int) -> list[int]:
    """Powers of two from value/8 to value*8 (at least ``floor``), with ``value`` itself."""
    p = 1 << max(0, value.bit_length() - 1)
    vals = {v for v in (p >> 3, p >> 2, p >> 1, p, p << 1, p << 2, p << 3) if v >= floor}
    vals.add(value)
    return sorted(vals)


def plan_page_data(spec: ModelSpec, setup: Setup, plan_json: dict[str, Any], gpu: Any = None) -> dict[str, Any]:
    """``plan_json`` plus the two views of ``vramplan plan --html``.

    ``ladder``: every catalogue card, smallest first, with the setup's device use on it, headroom (keeping
    the plan's margin) and verdict. ``grid``: ``device_used_bytes`` for batch × seq, rows = batch, columns =
    seq, over powers of two from an eighth to eight times the setup's own values (which are always included),
    on ``gpu``'s architecture.
    """
    from .profiles import gpu_catalogue

    fits = plan_json.get("fits") or {}
    margin = float(fits.get("margin") or 0.0)
    base = estimate(spec, setup)
    ladder = []
    for g in gpu_catalogue():
        f = fit_on(base, g, margin)
        ladder.append({"gpu": g.name, "capacity_bytes": g.memory_bytes, "device_used_bytes": device_used_on(base, g),
                       "headroom_bytes": f.headroom_bytes, "fits": f.fits})
    batches = _around(setup.batch, 1)
    seqs = [s for s in _around(setup.seq, 128) if s > setup.new_tokens]
    z = [[estimate(spec, setup.with_(batch=b, seq=s), gpu, detail=False).device_used_bytes for s in seqs]
         for b in batches]
    out = dict(plan_json)
    out["ladder"] = ladder
    out["grid"] = {"batch": batches, "seq": seqs, "device_used_bytes": z}
    return out


# ------------------------------------------------------------------------------------------------- fit
@dataclass(frozen=True)
class Suggestion:
    """One change that lowers device memory: what, the option to pass, how much it saves, and whether the
    setup then fits."""

    change: str
    option: str
    saves_bytes: int
    fits_after: bool
    device_used_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"change": self.change, "saves_bytes": self.saves_bytes, "fits_after": self.fits_after,
                "option": self.option, "device_used_bytes": self.device_used_bytes}


@dataclass(frozen=True)
class FitReport:
    """What ``vramplan fit`` reports."""

    estimate: Estimate
    max_batch: int | None           # at the setup's seq
    max_seq: int | None             # at the setup's batch, a multiple of SEQ_STEP
    max_rank: int | None            # LoRA/QLoRA only, at the setup's batch and seq
    suggestions: tuple[Suggestion, ...] = ()
    at_limit: tuple[str, ...] = ()  # searched values that reached their search limit ("at least")
    #: the fewest GPUs of this card on which the setup fits per rank, and the strategy
    #: (:func:`vramplan.estimate.distributed.smallest_gpus`); ``None``: not even :data:`MIN_GPUS_LIMIT`
    min_gpus: tuple[int, str] | None = None

    @property
    def fit(self) -> Fit:
        assert self.estimate.fit is not None
        return self.estimate.fit

    def to_dict(self, plan_json: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"fits": self.fit.fits, "headroom_bytes": self.fit.headroom_bytes, "max_batch": self.max_batch,
                "max_seq": self.max_seq, "seq_step": SEQ_STEP, "max_rank": self.max_rank,
                "at_limit": list(self.at_limit), "suggestions": [s.to_dict() for s in self.suggestions],
                "min_gpus": (None if self.min_gpus is None
                             else {"gpus": self.min_gpus[0], "strategy": self.min_gpus[1]}),
                "plan": plan_json if plan_json is not None else self.estimate.to_dict()}


def _fits(spec: ModelSpec, setup: Setup, gpu: Any, margin: float) -> bool:
    est = estimate(spec, setup, gpu, margin, detail=False)
    assert est.fit is not None
    return est.fit.fits


def max_batch(spec: ModelSpec, setup: Setup, gpu: Any, margin: float = 0.0) -> int | None:
    """Largest batch that fits at ``setup.seq`` (``None``: not even 1)."""
    return search_max(lambda b: _fits(spec, setup.with_(batch=b), gpu, margin), 1, BATCH_LIMIT, setup.batch)


def max_seq(spec: ModelSpec, setup: Setup, gpu: Any, margin: float = 0.0) -> int | None:
    """Largest multiple of :data:`SEQ_STEP` that fits at ``setup.batch`` (``None``: not even the smallest one
    above ``new_tokens``)."""
    lo = setup.new_tokens // SEQ_STEP + 1
    k = search_max(lambda k: _fits(spec, setup.with_(seq=k * SEQ_STEP), gpu, margin), lo, SEQ_LIMIT // SEQ_STEP,
                   max(lo, setup.seq // SEQ_STEP))
    return None if k is None else k * SEQ_STEP


def max_rank(spec: ModelSpec, setup: Setup, gpu: Any, margin: float = 0.0) -> int | None:
    """Largest LoRA rank that fits at the setup's batch and seq (``None``: not LoRA, or not even r=1)."""
    if setup.lora is None or setup.method not in ("lora", "qlora"):
        return None
    lora = setup.lora
    return search_max(lambda r: _fits(spec, setup.with_(lora=replace(lora, r=r)), gpu, margin), 1, RANK_LIMIT,
                      lora.r)


def fit_report(spec: ModelSpec, setup: Setup, gpu: Any, margin: float = 0.0) -> FitReport:
    """Verdict, largest batch / seq / rank, the fewest GPUs of this card (and the strategy) on which the setup
    fits per rank, and when the setup does not fit the changes that would help, most memory saved first.

    The GPU count comes from the estimator's per-rank model (``estimate/distributed.py``, ``docs/multi-gpu.md``):
    ``--batch`` stays per GPU, the setup's ``--gpus``/``--strategy`` are replaced, its ``--offload`` is kept.
    """
    if gpu is None:
        raise SetupError("fit needs a card: pass --gpu (a name from `vramplan gpus` or a size such as 24GB)")
    est = estimate(spec, setup, gpu, margin)
    assert est.fit is not None
    mb, ms, mr = max_batch(spec, setup, gpu, margin), max_seq(spec, setup, gpu, margin), max_rank(spec, setup, gpu,
                                                                                                  margin)
    limits = [n for n, v, lim in (("batch", mb, BATCH_LIMIT), ("seq", ms, SEQ_LIMIT), ("rank", mr, RANK_LIMIT))
              if v is not None and v >= lim]
    suggestions: tuple[Suggestion, ...] = ()
    if not est.fit.fits:
        suggestions = tuple(suggest(spec, setup, gpu, margin, est, mb, ms))
    fewest = smallest_gpus(spec, setup, gpu, margin, max_gpus=MIN_GPUS_LIMIT)
    return FitReport(est, mb, ms, mr, suggestions, tuple(limits), fewest)


def _candidates(spec: ModelSpec, s: Setup, mb: int | None, ms: int | None) -> Iterator[tuple[str, str, Any]]:
    """(change, option, setup-or-factory) for every single change worth trying on ``s``."""
    # QLoRA comes with prepare_model_for_kbit_training, which turns checkpointing on (and upcasts the residual
    # stream to fp32, so QLoRA without checkpointing can need more memory than LoRA): suggest it that way
    q_note = "" if s.grad_ckpt else " + gradient checkpointing (QLoRA's default)"
    if s.training and not s.grad_ckpt:
        yield "gradient checkpointing on", "--grad-ckpt", lambda: s.with_(grad_ckpt=True)
    if s.method == "full":
        yield ("LoRA (PEFT default targets) instead of full fine-tuning", "--method lora",
               lambda: Setup.create(**setup_kwargs(s, method="lora", lora=LoraConfig())))
        yield (f"QLoRA (nf4 base, PEFT default targets){q_note} instead of full fine-tuning",
               "--method qlora --grad-ckpt",
               lambda: Setup.create(**setup_kwargs(s, method="qlora", quant="nf4", lora=LoraConfig(),
                                                     grad_ckpt=True)))
    if s.method == "lora" and s.quant == "none":
        yield (f"QLoRA (nf4 base){q_note} instead of LoRA", "--method qlora --grad-ckpt",
               lambda: Setup.create(**setup_kwargs(s, method="qlora", quant="nf4", grad_ckpt=True)))
    if s.method == "inference" and s.quant == "none":
        yield "nf4 (4-bit) weights", "--quant nf4", lambda: s.with_(quant="nf4")
        yield "int8 weights", "--quant int8", lambda: s.with_(quant="int8")
    if s.training:
        for optim, what in (("adamw-8bit", "8-bit AdamW (bitsandbytes)"),
                            ("paged-adamw-8bit", "paged 8-bit AdamW (bitsandbytes)")):
            if s.optim != optim and s.optim not in ("sgd", "adafactor") \
                    and not (optim == "adamw-8bit" and s.optim == "paged-adamw-8bit"):
                yield f"{what} instead of {s.optim}", f"--optim {optim}", lambda o=optim: s.with_(optim=o)
        if s.loss == "standard":
            yield "chunked loss (fused linear cross-entropy)", "--loss chunked", lambda: s.with_(loss="chunked")
    if ms is not None and ms < s.seq:
        yield f"shorter sequences: seq {s.seq:,} → {ms:,}", f"--seq {ms}", lambda: s.with_(seq=ms)
    if s.batch > 1:
        fitting = mb if mb is not None else 1
        b = max(d for d in range(1, min(fitting, s.batch) + 1) if s.batch % d == 0)
        if b < s.batch:
            steps = s.batch // b
            change = (f"batch {s.batch} → {b} with gradient_accumulation_steps × {steps} (effective batch "
                      f"{s.batch} kept)" if s.training else f"batch {s.batch} → {b}")
            yield change, f"--batch {b}", lambda: s.with_(batch=b)
    if s.lora is not None and s.method in ("lora", "qlora"):
        default = DEFAULT_TARGETS.get(spec.model_type)
        if default is not None and s.lora.target_regex is None and s.lora.targets is not None \
                and set(s.lora.targets) != set(default):
            what = ",".join(s.lora.targets)
            yield (f"PEFT's default targets for {spec.model_type} ({','.join(default)}) instead of {what}",
                   f"--targets {','.join(default)}", lambda: s.with_(lora=replace(s.lora, targets=None)))
        if s.lora.modules_to_save:
            yield (f"no modules_to_save (train only adapters, not copies of {','.join(s.lora.modules_to_save)})",
                   "--modules-to-save ''", lambda: s.with_(lora=replace(s.lora, modules_to_save=())))


#: sharding strategies ``suggest`` proposes for more GPUs, and how it names them
SHARDED = {"fsdp": "FSDP (FULL_SHARD)", "zero3": "DeepSpeed ZeRO-3", "fsdp-grad-op": "FSDP (SHARD_GRAD_OP)",
           "zero2": "DeepSpeed ZeRO-2", "zero1": "DeepSpeed ZeRO-1"}
MAX_SUGGESTED_GPUS = 64


def suggest(spec: ModelSpec, setup: Setup, gpu: Any, margin: float, est: Estimate | None = None,
            mb: int | None = None, ms: int | None = None) -> list[Suggestion]:
    """Single changes that lower ``device_used_bytes``, most saved first (changes that save nothing dropped).

    More GPUs: the setup sharded with FSDP (or more ranks of the sharding strategy it already uses), on the
    smallest of 2, 4, 8 ... times the GPUs that fits (the largest tried when none does); the per-GPU batch is
    kept. Savings come from the estimator's per-rank model (``estimate/distributed.py``): sharded weights,
    gradients and optimizer states against the engine's buffers; a change that saves nothing is dropped.
    """
    est = est or estimate(spec, setup, gpu, margin)
    out = []

    def consider(change: str, option: str, make: Callable[[], Setup]) -> Estimate | None:
        try:
            new = estimate(spec, make(), gpu, margin)
        except VramplanError:
            return None     # a change that is invalid for this model (e.g. no default targets)
        saves = est.device_used_bytes - new.device_used_bytes
        if saves > 0:
            assert new.fit is not None
            out.append(Suggestion(change, option, saves, new.fit.fits, new.device_used_bytes))
        return new

    for change, option, make in _candidates(spec, setup, mb, ms):
        consider(change, option, make)
    if setup.training:
        _suggest_more_gpus(spec, setup, gpu, margin, est, out)
    out.sort(key=lambda x: (-x.saves_bytes, x.change))
    return out


def _suggest_more_gpus(spec: ModelSpec, setup: Setup, gpu: Any, margin: float, est: Estimate,
                       out: list[Suggestion]) -> None:
    strategy = setup.strategy if setup.strategy in SHARDED else "fsdp"
    counts = [n for n in (setup.gpus * 2 ** k for k in range(7)) if 2 <= n <= MAX_SUGGESTED_GPUS
              and (n > setup.gpus or strategy != setup.strategy)]
    best: tuple[int, Estimate] | None = None
    for n in counts:
        try:
            new = estimate(spec, setup.with_(gpus=n, strategy=strategy), gpu, margin)
        except VramplanError:
            return
        assert new.fit is not None
        best = (n, new)
        if new.fit.fits:
            break
    if best is None:
        return
    n, new = best
    saves = est.device_used_bytes - new.device_used_bytes
    if saves > 0:
        assert new.fit is not None
        out.append(Suggestion(
            f"{SHARDED[strategy]} across {n} GPUs (per-GPU batch {setup.batch} kept: effective batch × {n})",
            f"--gpus {n} --strategy {strategy}", saves, new.fit.fits, new.device_used_bytes))


# ----------------------------------------------------------------------------------------------- sweep
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
        cap = int(g.memory_bytes * (1 - margin))
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
        groups.setdefault((_structure_key(s), s.new_tokens), []).append(i)
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


def _structure_key(s: Setup) -> Setup:
    """``s`` without batch, seq and generated tokens: what the estimator's structural cache is keyed on."""
    return replace(s, batch=1, seq=1, new_tokens=0)


def product(axes: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """The cartesian product of option lists, as one dict of option values per combination."""
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        yield dict(zip(keys, values, strict=True))


# ----------------------------------------------------------------------------------------------- check
#: plan-file keys (the long options with underscores) -> their options: a plan's name and model, where it
#: runs (gpu, margin, trust_remote_code) and every setup option
PLAN_OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("name", "str", "A name for the plan, shown in check's output."),
    Option("model", "str", "A bundled name, Hub id or config path."),
    *RUN_OPTIONS, *SETUP_OPTIONS)}
#: plan-file keys -> the kind of value they take
PLAN_KEYS: dict[str, str] = {k: o.kind for k, o in PLAN_OPTIONS.items()}


@dataclass(frozen=True)
class PlanEntry:
    """One plan of a plan file, validated: where it came from, its options, GPU and margin."""

    file: str
    index: int          # 1-based
    count: int
    format: str         # vramplan / llama-factory / axolotl / training-args
    options: dict[str, Any]
    model: str | None
    gpu: str | None
    margin: float
    name: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}: plan {self.index} of {self.count}"


def _err(file: str, index: int, count: int, key: str | None, msg: str) -> PlanFileError:
    where = f"{file}: plan {index} of {count}"
    return PlanFileError(f"{where}: key {key!r}: {msg}" if key else f"{where}: {msg}")


def _normalize_keys(d: Mapping[Any, Any], file: str, index: int, count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw, value in d.items():
        if not isinstance(raw, str):
            raise _err(file, index, count, str(raw), "keys must be strings")
        key = raw.strip().replace("-", "_").lower()
        if key not in PLAN_KEYS:
            raise _err(file, index, count, raw, f"unknown key{close_matches(key, list(PLAN_KEYS))}; plan keys are "
                                                "the long options of `vramplan plan` (rank, batch, seq, gpu, ...)")
        try:
            out[key] = read_value(PLAN_OPTIONS[key], value) if value is not None else None
        except ValueError as exc:
            raise _err(file, index, count, raw, str(exc)) from None
    return out


# ---- foreign formats -------------------------------------------------------------------------------
def _from_training_args(d: Mapping[str, Any]) -> dict[str, Any]:
    """transformers ``TrainingArguments`` JSON plus vramplan keys (``model``, ``method``, ``rank``, ``seq``...):
    the TrainingArguments fields that decide memory (:func:`vramplan.interop.hf.from_training_args_json`),
    overridden by plan keys given alongside; ``optim`` is TrainingArguments' own."""
    o = from_training_args_json(d)
    o.update({k: v for k, v in d.items() if isinstance(k, str) and k.replace("-", "_") in PLAN_KEYS
              and k != "optim"})
    return o


#: plan-file formats other than vramplan's own -> their reader
FOREIGN_READERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "llama-factory": from_llama_factory, "axolotl": from_axolotl, "training-args": _from_training_args}


def detect_format(d: Mapping[str, Any]) -> str:
    """``vramplan`` / ``axolotl`` / ``llama-factory`` / ``training-args``, from a plan mapping's keys."""
    keys = {str(k).replace("-", "_") for k in d}
    if "plans" in keys:
        return "vramplan"
    if "base_model" in keys:
        return "axolotl"
    if "model_name_or_path" in keys:
        return "llama-factory"
    if keys & set(TRAINING_ARGS_KEYS) - set(PLAN_KEYS):
        return "training-args"
    return "vramplan"


def read_plan_file(path: str | Path, gpu: str | None = None, margin: float | None = None,
                   model: str | None = None) -> list[PlanEntry]:
    """Every plan of a plan file, validated (options are not yet turned into setups).

    A vramplan plan file is one mapping of plan keys, or ``plans:`` (a list of mappings) with the other
    top-level keys as defaults for each. LLaMA-Factory, axolotl and TrainingArguments files are detected by
    their keys. ``gpu``/``margin`` (from the command line) override the file's; ``model`` is used for plans
    that name none (a TrainingArguments JSON).

    Raises:
        PlanFileError: naming the file, the plan (1-based) and the key.
    """
    import json

    import yaml

    p = Path(path)
    file = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanFileError(f"{file}: cannot read the plan file: {exc.strerror or exc}") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise PlanFileError(f"{file}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except yaml.YAMLError as exc:
        raise PlanFileError(f"{file}: not YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise PlanFileError(f"{file}: expected a mapping of plan keys (model, method, rank, batch, seq, gpu, ...) "
                            f"or plans: [...], got {type(data).__name__ if data is not None else 'an empty file'}")
    fmt = detect_format(data)
    raws: list[tuple[dict[str, Any], str]]
    if "plans" in data:
        plans = data["plans"]
        defaults = {k: v for k, v in data.items() if k != "plans"}
        if not isinstance(plans, list) or not plans:
            raise PlanFileError(f"{file}: key 'plans' must be a non-empty list of mappings, got {plans!r}")
        raws = []
        for i, item in enumerate(plans):
            if not isinstance(item, dict):
                raise _err(file, i + 1, len(plans), None, f"expected a mapping of plan keys, got {item!r}")
            merged = {**defaults, **item}
            raws.append((merged, detect_format(merged)))
    else:
        raws = [(data, fmt)]
    count = len(raws)
    out = []
    for i, (raw, kind) in enumerate(raws, start=1):
        reader = FOREIGN_READERS.get(kind)
        try:
            opts = reader(raw) if reader is not None else dict(raw)
        except ForeignConfigError as exc:
            raise _err(file, i, count, exc.key, exc.message) from None
        opts = _normalize_keys(opts, file, i, count)
        name = opts.pop("name", None)
        m = opts.pop("model", None) or model
        g = gpu if gpu is not None else opts.pop("gpu", None)
        opts.pop("gpu", None)
        mg = margin if margin is not None else opts.pop("margin", None)
        opts.pop("margin", None)
        if m is None:
            raise _err(file, i, count, "model", "missing: name the model in the file or pass --model")
        if g is None:
            raise _err(file, i, count, "gpu", "missing: name a card in the file (gpu: rtx-4090) or pass --gpu")
        out.append(PlanEntry(file, i, count, kind, opts, m, g, mg or 0.0, name))
    return out


def _plan_error(entry: PlanEntry, exc: Exception, key: str | None = None) -> PlanFileError:
    """Prefix an error with the plan's place and the key it is about (read from ``--option`` in the message)."""
    msg = str(exc)
    if key is None:
        m = re.search(r"--([a-z][a-z0-9-]*)", msg)
        key = m.group(1).replace("-", "_") if m else None
    return PlanFileError(f"{entry.where}: key {key!r}: {msg}" if key else f"{entry.where}: {msg}")


@dataclass(frozen=True)
class CheckResult:
    entry: PlanEntry
    model: str
    estimate: Estimate

    @property
    def fit(self) -> Fit:
        assert self.estimate.fit is not None
        return self.estimate.fit

    def to_dict(self) -> dict[str, Any]:
        f = self.fit
        return {"file": self.entry.file, "plan": self.entry.index, "name": self.entry.name,
                "format": self.entry.format, "model": self.model, "fits": f.fits, "gpu": f.gpu,
                "capacity_bytes": f.capacity_bytes, "device_used_bytes": self.estimate.device_used_bytes,
                "headroom_bytes": f.headroom_bytes, "margin": f.margin, "setup": self.estimate.setup.to_dict()}


def check_plans(entries: Sequence[PlanEntry], make_setup: Callable[[dict[str, Any]], Setup]) -> list[CheckResult]:
    """Validate every entry (setup via ``make_setup(options)``, model, card) first, then estimate each: bad
    input anywhere raises :class:`PlanFileError` (file, plan, key) before anything is estimated."""
    from .profiles import resolve_gpu, resolve_model

    prepared = []
    models: dict[tuple[str, bool], Any] = {}
    for e in entries:
        try:
            setup = make_setup(dict(e.options))
        except VramplanError as exc:
            raise _plan_error(e, exc) from None
        trust = bool(e.options.get("trust_remote_code"))
        key = (str(e.model), trust)
        try:
            if key not in models:
                models[key] = resolve_model(str(e.model), trust_remote_code=trust)
        except VramplanError as exc:
            raise _plan_error(e, exc, "model") from None
        try:
            gpu = resolve_gpu(str(e.gpu))
        except VramplanError as exc:
            raise _plan_error(e, exc, "gpu") from None
        prepared.append((e, models[key], setup, gpu))
    out = []
    for e, rm, setup, gpu in prepared:
        try:
            est = estimate(rm.spec, setup, gpu, e.margin)
        except VramplanError as exc:
            raise _plan_error(e, exc) from None
        out.append(CheckResult(e, rm.name, est))
    return out
