"""Variable sequence lengths: length distributions, batching rules, per-step allocation traces built from the
analytic estimator's terms, and the run-level reserved peak the caching allocator reaches over N steps.

A run is: draw sample lengths (:func:`parse_lengths`, deterministic with a seed) → batch them
(:func:`step_shapes`: pad to the longest in the batch, pad to ``--seq``, or pack) → one allocation trace per
step at that step's shape (:class:`StepModel`, from :func:`vramplan.estimate.step_allocations`: the
estimator's per-layer saved storages, transients, logits and gradients, through its public API) →
:func:`~vramplan.allocator.replay.replay_trace` → :class:`RunReserved`.
:func:`reserved_fixes` reruns it with the usual remedies and ranks them.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dtypes import alloc
from ..errors import VramplanError
from .conf import AllocConf, parse_alloc_conf
from .replay import ReplayResult, replay_trace
from .trace import Alloc, EmptyCache, Event, Free, Mark

BATCHINGS = ("longest", "fixed", "pack")
LONG_SAMPLES = ("truncate", "drop")
#: a histogram file larger than this is refused (a histogram is small; a token dump is not one)
MAX_HISTOGRAM_BYTES = 16 << 20
MAX_HISTOGRAM_BINS = 1_000_000
#: steps replayed when every step has the same shape (the allocator's state repeats from the second step)
CONSTANT_STEPS = 3


class LengthsError(VramplanError):
    """A ``--lengths`` value that is not a list of lengths, a histogram file or a known profile."""


@dataclass(frozen=True)
class LengthDist:
    """Sample lengths in tokens with their weights (a histogram); ``name`` says where they came from."""

    name: str
    lengths: tuple[int, ...]
    weights: tuple[float, ...]
    source: str = ""

    def sample(self, n: int, rng: random.Random) -> list[int]:
        return rng.choices(self.lengths, self.weights, k=n)

    @property
    def max_length(self) -> int:
        return max(self.lengths)


# The "alpaca" profile: a synthetic approximation, NOT a measured histogram. Stanford Alpaca
# (tatsu-lab/stanford_alpaca, alpaca_data.json, 52,002 instruction/input/output records) formatted with its
# prompt template and a Llama-family tokenizer gives short samples with a long right tail; we approximate the
# token count of one formatted sample by a log-normal with median 180 tokens and sigma 0.6 (p90 ~ 390,
# p99 ~ 730 tokens), cut at 16 and 2,048 tokens, in 8-token bins. The parameters were chosen to match
# commonly quoted figures for the dataset, not fitted in this repository: for a real run, pass a histogram
# of your own tokenized data (``--lengths lengths.csv``). Truncation at ``--seq`` is applied when sampling.
ALPACA_MEDIAN, ALPACA_SIGMA, ALPACA_MIN, ALPACA_MAX, ALPACA_BIN = 180, 0.6, 16, 2048, 8


def _lognormal_profile(name: str, median: float, sigma: float, lo: int, hi: int, step: int, source: str
                       ) -> LengthDist:
    mu = math.log(median)

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2))))

    lengths, weights = [], []
    for L in range(lo, hi + 1, step):
        # probability mass of [L - step/2, L + step/2) under the log-normal, by its CDF
        a, b = max(L - step / 2, 1e-9), L + step / 2
        lengths.append(L)
        weights.append(cdf(b) - cdf(a))
    return LengthDist(name, tuple(lengths), tuple(weights), source)


PROFILES = {
    "alpaca": lambda: _lognormal_profile(
        "alpaca", ALPACA_MEDIAN, ALPACA_SIGMA, ALPACA_MIN, ALPACA_MAX, ALPACA_BIN,
        "synthetic log-normal approximation of Stanford Alpaca (tatsu-lab/stanford_alpaca, 52,002 records, "
        f"prompt template + Llama tokenizer): median {ALPACA_MEDIAN} tokens, sigma {ALPACA_SIGMA}, "
        f"{ALPACA_MIN}..{ALPACA_MAX} tokens; not fitted here (vramplan/allocator/lengths.py)"),
}


def _histogram_file(path: Path) -> LengthDist:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise LengthsError(f"--lengths {str(path)!r} cannot be read: {exc.strerror}") from None
    if size > MAX_HISTOGRAM_BYTES:
        raise LengthsError(f"--lengths {str(path)!r} is {size:,} bytes; a histogram file must be at most "
                           f"{MAX_HISTOGRAM_BYTES:,} (give length,count rows, not one row per sample)")
    from ..io import read_text

    # the bounded reader: a FIFO or a device given as the file is refused without blocking, bad UTF-8 named
    text = read_text(path, MAX_HISTOGRAM_BYTES, error=LengthsError, what="--lengths histogram")
    pairs: list[tuple[int, float]] = []
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                pairs = [(int(k), float(v)) for k, v in data.items()]
            elif isinstance(data, list):
                pairs = [(int(x), 1.0) if not isinstance(x, list) else (int(x[0]), float(x[1])) for x in data]
            else:
                raise ValueError("expected an object {length: count} or a list")
        else:
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                cells = [c.strip() for c in line.split(",")]
                if n == 1 and not cells[0].lstrip("-").isdigit():
                    continue                                   # a header row
                pairs.append((int(cells[0]), float(cells[1]) if len(cells) > 1 else 1.0))
    except (ValueError, IndexError, TypeError) as exc:
        raise LengthsError(f"--lengths {str(path)!r} is not a histogram (CSV rows 'length,count' or JSON "
                           f"{{length: count}}): {exc}") from None
    if not pairs:
        raise LengthsError(f"--lengths {str(path)!r} holds no lengths")
    if len(pairs) > MAX_HISTOGRAM_BINS:
        raise LengthsError(f"--lengths {str(path)!r} has {len(pairs):,} bins, more than {MAX_HISTOGRAM_BINS:,}")
    bad = [p for p in pairs if p[0] < 1 or p[1] < 0]
    if bad:
        raise LengthsError(f"--lengths {str(path)!r}: length {bad[0][0]} with count {bad[0][1]:g} (lengths must "
                           f"be >= 1 token, counts >= 0)")
    return LengthDist(path.name, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), str(path))


def parse_lengths(value: str | Sequence[int] | None) -> LengthDist | None:
    """Read ``--lengths``: ``None`` (every sample is ``--seq`` tokens), a list of lengths (``"300,812,2048"``
    or a sequence of ints; each equally likely), a histogram file (``.csv``: ``length,count`` rows;
    ``.json``: ``{"length": count}``), or a profile name (:data:`PROFILES`).

    Raises:
        LengthsError: anything else, with what is accepted.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        vals = [int(v) for v in value]
        if not vals or min(vals) < 1:
            raise LengthsError(f"--lengths {vals!r}: give at least one length, each >= 1 token")
        return LengthDist("list", tuple(vals), (1.0,) * len(vals), "given")
    text = value.strip()
    if text.lower() in PROFILES:
        return PROFILES[text.lower()]()
    if all(p.strip().isdigit() for p in text.split(",")) and text:
        return parse_lengths([int(p) for p in text.split(",")])
    p = Path(text).expanduser()
    if p.suffix.lower() in (".csv", ".json", ".txt") or p.exists():
        return _histogram_file(p)
    from ..errors import close_matches

    raise LengthsError(f"--lengths {text!r} is not a list of lengths, a histogram file (.csv/.json) or a profile"
                       f"{close_matches(text, tuple(PROFILES))}; profiles: {', '.join(PROFILES)}")


def step_shapes(dist: LengthDist | None, batch: int, seq: int, steps: int, *, batching: str = "longest",
                long_samples: str = "truncate", seed: int = 0, multiple_of: int = 1) -> list[tuple[int, int]]:
    """The ``(batch, seq)`` shape of each step.

    Args:
        dist: sample lengths (``None``: every sample is ``seq`` tokens).
        batch: samples per step.
        seq: the maximum length (``--seq``, the tokenizer's ``max_length``).
        steps: how many steps.
        batching: ``longest`` — pad to the longest sample of the batch (``DataCollatorWithPadding``,
            ``padding="longest"``: the HF Trainer, TRL and ms-swift default), rounded up to ``multiple_of``;
            ``fixed`` — pad every batch to ``seq`` (``padding="max_length"``); ``pack`` — padding-free packing
            (TRL ``packing=True``): the batch's samples fill ``batch`` rows of ``seq`` tokens in order and the
            step runs them as one sequence of their total length (shape ``(1, tokens)``).
        long_samples: ``truncate`` cuts samples longer than ``seq`` to ``seq``; ``drop`` skips them.
        seed: the sampling seed (the same seed gives the same shapes).
        multiple_of: ``pad_to_multiple_of`` of the collator.

    Raises:
        LengthsError: an unknown rule, or ``drop`` with no sample of at most ``seq`` tokens.
    """
    if batching not in BATCHINGS:
        raise LengthsError(f"batching {batching!r} is not one of {', '.join(BATCHINGS)}")
    if long_samples not in LONG_SAMPLES:
        raise LengthsError(f"long samples {long_samples!r}: choose {' or '.join(LONG_SAMPLES)}")
    if dist is None or batching == "fixed":
        return [(batch, seq)] * steps
    if long_samples == "drop":
        keep = [(L, w) for L, w in zip(dist.lengths, dist.weights, strict=True) if L <= seq]
        if not keep or sum(w for _, w in keep) <= 0:
            raise LengthsError(f"--lengths {dist.name}: every sample is longer than --seq {seq}, none is left "
                               f"to train on after dropping (truncate them instead)")
        dist = LengthDist(dist.name, tuple(k[0] for k in keep), tuple(k[1] for k in keep), dist.source)
    rng = random.Random(seed)
    out: list[tuple[int, int]] = []
    if batching == "longest":
        for _ in range(steps):
            longest = min(max(dist.sample(batch, rng)), seq)
            longest = min(-(-longest // multiple_of) * multiple_of, seq)
            out.append((batch, longest))
        return out
    for _ in range(steps):                              # pack: `batch` rows of `seq` tokens, first fit in order
        rows, used, tokens = 1, 0, 0
        while True:
            L = min(dist.sample(1, rng)[0], seq)
            if used + L > seq:
                if rows == batch:
                    break
                rows, used = rows + 1, 0
            used += L
            tokens += L
        out.append((1, tokens))
    return out


class StepModel:
    """One training step as an allocation trace, at any shape, from the analytic estimator's terms.

    The order is the estimator's timeline (``estimate/timeline.py``): forward layer by layer (autocast copies,
    the layer's short-lived transients, then what it saves — only its input under checkpointing), the head's
    saves, the loss (saved log-probs, forward temporaries); backward: the loss's fp32 gradients, the head's
    gradient, then each layer from the last (recompute under checkpointing, the backward working set, the
    layer's gradient; its saves freed); ``optimizer.step()`` temporaries; gradients freed
    (``zero_grad(set_to_none=True)``). Logits a loop keeps (LitGPT, ``StepAllocations.kept_blocks``) are made
    with the head's and freed at the next step's head, once its own are made. Sizes are the estimator's, one
    block per saved storage.

    Simplified: the optimizer states are shared evenly over two blocks per trainable tensor; a layer's
    gradients are one block; the loss's saved tensors are one block; multi-GPU buffers are left
    out (single-GPU runs).
    """

    def __init__(self, spec: Any, setup: Any) -> None:
        if not setup.training:
            raise LengthsError("--lengths models training steps; inference runs are not replayed")
        from ..estimate import step_allocations

        self.sa = step_allocations(spec, setup)         # the estimator's public description of the step
        self.L = max(self.sa.num_layers, 1)
        self.ckpt = self.sa.grad_ckpt
        self._next = 0
        self._kept: list[int | None] = []               # the kept logits of the last step traced

    def _id(self) -> int:
        self._next += 1
        return self._next

    def persistent(self) -> list[Event]:
        """The model states, allocated once before the first step: each weight tensor's allocations (the
        estimator's placements: data, quantization state), each adapter, two optimizer states per trainable
        tensor (the estimator's optimizer total, shared evenly), and the rest of the estimator's fixed base
        (the cuBLAS workspace) as one block."""
        sa = self.sa
        self._kept = []                                 # a new trace: no step before it
        sizes = list(sa.model_state_bytes)
        rest = sa.fixed_bytes - sum(alloc(x) for x in sizes)
        if not sizes or rest < 0:                       # the states as num_layers + 1 equal blocks
            n = self.L + 1
            part = sa.fixed_bytes // n
            sizes = [part + (sa.fixed_bytes - part * n if i == 0 else 0) for i in range(n)]
        elif rest > 0:
            sizes.append(rest)
        return [Alloc(self._id(), max(x, 1)) for x in sizes]

    def step(self, batch: int, seq: int, label: str = "") -> list[Event]:
        """The events of one step at ``batch`` sequences of ``seq`` tokens."""
        sa = self.sa
        T, bss = batch * seq, batch * seq * seq
        ev: list[Event] = [Mark(label)]
        nid = self._id

        def new(size: int) -> int | None:
            if size <= 0:
                return None
            i = nid()
            ev.append(Alloc(i, size))
            return i

        def free(*ids: int | None) -> None:
            for i in ids:
                if i is not None:
                    ev.append(Free(i))

        resid = sa.resid_bytes(T)
        head_casts = new(max(sa.casts_bytes - self.L * sa.casts_layer_bytes, 0))
        saved: list[list[int | None]] = []
        casts: list[int | None] = []
        for layer in sa.layers:
            c = new(sa.casts_layer_bytes)
            tmp = new(layer.forward_transient_bytes(T, bss) + sa.dequant_bytes)
            kept = [new(resid)] if self.ckpt else [new(x) for x in layer.saved_bytes(T, bss)]
            free(tmp)
            if self.ckpt:
                free(c)
                c = None
            saved.append(kept)
            casts.append(c)
        TL, rows = sa.logits_shape(batch, seq)          # the positions whose logits are computed
        head = [new(x) for x in sa.head_saved_bytes(T, bss) + sa.head_kept_bytes(TL, rows)]
        # logits the loop keeps (LitGPT): this step's list is made by the head while the previous step's is
        # still bound to `logits`, which the assignment then frees (litgpt 0.5.13 finetune/lora.py:355); it lives
        # through backward and optimizer.step() into the next step's forward
        kept = [new(x) for x in sa.kept_blocks(TL, rows)]
        free(*self._kept)
        self._kept = kept
        loss_saved, loss_fwd, loss_bwd = sa.loss(TL, rows)
        f32 = sa.logits_fp32_bytes(TL)                 # one fp32 tokens x vocab tensor
        tail: list[int | None] = []
        if not sa.standard_loss or f32 == 0:
            ls = [new(loss_saved)]
            free(new(loss_fwd))
            free(new(loss_bwd))
        else:
            # the loss's tensors one by one, as loss_bytes sums them: logits and logits.float() (forward
            # temporaries), log_softmax's saved fp32 output (+ tanh's under softcapping), then backward's fp32
            # gradients of the log-probs and of the logits
            fwd = [new(loss_fwd - f32), new(f32)] if loss_fwd > f32 else [new(loss_fwd)]
            ls = [new(f32), new(loss_saved - f32)]
            free(*fwd[::-1])
            g1, g2 = new(loss_bwd - loss_bwd // 2), new(loss_bwd // 2)
            free(g1)
            tail = [g2]
        free(*ls)
        free(*tail)
        grads = [new(sa.grad_head_bytes)]
        free(head_casts)
        per_layer = sa.grad_layers_bytes // self.L
        for k in range(len(sa.layers) - 1, -1, -1):
            layer = sa.layers[k]
            extra: list[int | None] = []
            if self.ckpt:
                casts[k] = new(sa.casts_layer_bytes)
                rec = layer.saved_bytes(T, bss)
                if layer.input_saved and resid in rec:
                    rec.remove(resid)
                extra = [new(x) for x in rec]
                free(new(layer.forward_transient_bytes(T, bss) + sa.dequant_bytes))
            ws = new(layer.backward_working_bytes(T, bss))
            grads.append(new(per_layer + (sa.grad_layers_bytes - per_layer * self.L if k == 0 else 0)))
            free(ws)
            free(*extra)
            free(*saved[k])
            free(casts[k])
            if k == len(sa.layers) - 1:
                free(*head)
        free(new(sa.optimizer_step_bytes))
        free(*grads)
        return ev


@dataclass(frozen=True)
class RunReserved:
    """What the caching allocator reserves over a run of steps with varying shapes.

    Attributes:
        peak_reserved_bytes: ``max_memory_reserved()`` over the run.
        peak_allocated_bytes: ``max_memory_allocated()`` over the run.
        fragmentation_share: ``(peak_reserved - peak_allocated) / peak_reserved``.
        oom_step: the first step (1-based) where the allocator raises OutOfMemoryError on ``capacity``;
            ``None``: no OOM (or no capacity given).
        steps: steps replayed.
        longest: the largest step shape ``(batch, seq)`` by tokens.
        step_reserved: reserved peak of each step.
        alloc_conf: the ``PYTORCH_CUDA_ALLOC_CONF`` replayed.
        batching: the batching rule.
        empty_cache_every: ``torch.cuda.empty_cache()`` after every N-th step (0: never).
        analytic_reserved_bytes: the analytic estimator's ``peak_reserved_bytes`` (allocated plus a constant
            slack) at the longest step's shape, for comparison.
    """

    peak_reserved_bytes: int
    peak_allocated_bytes: int
    fragmentation_share: float
    oom_step: int | None
    steps: int
    longest: tuple[int, int]
    step_reserved: tuple[int, ...]
    alloc_conf: str
    batching: str
    empty_cache_every: int = 0
    analytic_reserved_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"peak_reserved_bytes": self.peak_reserved_bytes, "peak_allocated_bytes": self.peak_allocated_bytes,
                "fragmentation_share": round(self.fragmentation_share, 4), "oom_step": self.oom_step,
                "steps": self.steps, "longest_batch_seq": list(self.longest), "alloc_conf": self.alloc_conf,
                "batching": self.batching, "empty_cache_every": self.empty_cache_every,
                "analytic_reserved_bytes": self.analytic_reserved_bytes}


def run_trace(model: StepModel, shapes: Sequence[tuple[int, int]], empty_cache_every: int = 0) -> list[Event]:
    """The whole run's trace: the model states, then each step (``empty_cache`` after every N-th)."""
    ev = model.persistent()
    for k, (b, s) in enumerate(shapes, 1):
        ev.extend(model.step(b, s, f"step {k}"))
        if empty_cache_every and k % empty_cache_every == 0:
            ev.append(EmptyCache())
    return ev


def run_reserved(spec: Any, setup: Any, lengths: LengthDist | str | None, steps: int = 100,
                 alloc_conf: AllocConf | str | None = None, capacity_bytes: int | None = None, *,
                 batching: str = "longest", long_samples: str = "truncate", seed: int = 0,
                 empty_cache_every: int = 0, model: StepModel | None = None) -> RunReserved:
    """Replay ``steps`` training steps of ``setup`` (its ``batch`` and ``seq``) with sample lengths
    ``lengths`` through the caching allocator.

    Args:
        spec: the model.
        setup: the training setup; ``setup.seq`` is the maximum length, ``setup.batch`` the samples per step.
        lengths: a :class:`LengthDist`, a ``--lengths`` string, or ``None`` (fixed length ``seq``).
        steps: steps to replay.
        alloc_conf: ``PYTORCH_CUDA_ALLOC_CONF`` (string or parsed).
        capacity_bytes: what the allocator may reserve (the card less the CUDA context); ``None``: no limit.
        batching, long_samples, seed: see :func:`step_shapes`.
        empty_cache_every: call ``empty_cache`` after every N-th step (0: never).
        model: a :class:`StepModel` to reuse (built from ``spec``/``setup`` when ``None``).

    Raises:
        LengthsError, AllocConfError: bad ``lengths`` or ``alloc_conf``.
    """
    dist = parse_lengths(lengths) if isinstance(lengths, str) else lengths
    conf = parse_alloc_conf(alloc_conf) if not isinstance(alloc_conf, AllocConf) else alloc_conf
    shapes = step_shapes(dist, setup.batch, setup.seq, steps, batching=batching, long_samples=long_samples,
                         seed=seed)
    m = model if model is not None else StepModel(spec, setup)
    replayed = shapes
    if len(set(shapes)) == 1 and len(shapes) > CONSTANT_STEPS:
        # one shape: every step asks for the same sizes in the same order, so from the second step on the
        # allocator repeats its state (the cache holds what the first step left): a few steps say it all
        replayed = shapes[:CONSTANT_STEPS]
    r: ReplayResult = replay_trace(run_trace(m, replayed, empty_cache_every), conf, capacity_bytes)
    oom_step = None
    if r.oom is not None:
        oom_step = int(r.oom.mark.split()[-1]) if r.oom.mark.startswith("step ") else 0
    longest = max(shapes, key=lambda x: x[0] * x[1])
    from ..estimate import estimate_counters

    analytic = estimate_counters(spec, setup, [longest])[0].peak_reserved_bytes
    per_step = [mk.peak_reserved_bytes for mk in r.marks]
    if per_step and len(replayed) < len(shapes) and oom_step is None:
        per_step += [per_step[-1]] * (len(shapes) - len(replayed))
    return RunReserved(r.peak_reserved_bytes, r.peak_allocated_bytes, r.fragmentation_share, oom_step, len(shapes),
                       longest, tuple(per_step), conf.describe(), batching, empty_cache_every, analytic)


@dataclass(frozen=True)
class Fix:
    """One remedy and what the replay says it does to the run's reserved peak."""

    name: str                 # "expandable_segments:True", "fixed padding", ...
    how: str                  # what to set
    result: RunReserved
    saved_bytes: int          # baseline peak reserved - this peak reserved (negative: worse)

    def to_dict(self) -> dict[str, Any]:
        return {"fix": self.name, "how": self.how, "peak_reserved_bytes": self.result.peak_reserved_bytes,
                "peak_allocated_bytes": self.result.peak_allocated_bytes, "saved_bytes": self.saved_bytes,
                "oom_step": self.result.oom_step}


def reserved_fixes(spec: Any, setup: Any, lengths: LengthDist | str | None, steps: int = 100,
                   alloc_conf: AllocConf | str | None = None, capacity_bytes: int | None = None, *,
                   batching: str = "longest", long_samples: str = "truncate", seed: int = 0,
                   max_split_mb: int = 256) -> tuple[RunReserved, list[Fix]]:
    """The baseline run and the usual remedies, best (lowest reserved peak, no OOM first) first:
    ``expandable_segments:True``, fixed padding to ``--seq``, ``max_split_size_mb`` (``max_split_mb``), and
    ``torch.cuda.empty_cache()`` after every step. A remedy already in ``alloc_conf`` is skipped."""
    dist = parse_lengths(lengths) if isinstance(lengths, str) else lengths
    conf = parse_alloc_conf(alloc_conf) if not isinstance(alloc_conf, AllocConf) else alloc_conf
    m = StepModel(spec, setup)
    kw = dict(long_samples=long_samples, seed=seed, model=m)
    base = run_reserved(spec, setup, dist, steps, conf, capacity_bytes, batching=batching, **kw)
    fixes: list[Fix] = []

    def add(name: str, how: str, r: RunReserved) -> None:
        fixes.append(Fix(name, how, r, base.peak_reserved_bytes - r.peak_reserved_bytes))

    if not conf.expandable_segments:
        c = conf.with_(expandable_segments=True)
        add("expandable_segments:True", f"PYTORCH_CUDA_ALLOC_CONF={c.describe()}",
            run_reserved(spec, setup, dist, steps, c, capacity_bytes, batching=batching, **kw))
    if batching != "fixed" and dist is not None:
        add("fixed padding", f"pad every batch to --seq {setup.seq} (padding='max_length')",
            run_reserved(spec, setup, dist, steps, conf, capacity_bytes, batching="fixed", **kw))
    if conf.max_split_size is None and not conf.expandable_segments:
        c = conf.with_(max_split_size=max_split_mb << 20)
        add(f"max_split_size_mb:{max_split_mb}", f"PYTORCH_CUDA_ALLOC_CONF={c.describe()}",
            run_reserved(spec, setup, dist, steps, c, capacity_bytes, batching=batching, **kw))
    add("empty_cache every step", "torch.cuda.empty_cache() after each optimizer step",
        run_reserved(spec, setup, dist, steps, conf, capacity_bytes, batching=batching, empty_cache_every=1, **kw))
    fixes.sort(key=lambda f: (f.result.oom_step is not None, f.result.peak_reserved_bytes))
    return base, fixes
