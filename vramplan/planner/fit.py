"""``fit``: the largest batch, sequence and rank that fit, the fewest GPUs, and single changes that save memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..errors import SetupError, VramplanError
from ..estimate import Estimate, Fit, estimate, smallest_gpus
from ..lora import DEFAULT_TARGETS, LoraConfig
from ..setup import Setup, setup_kwargs
from ..shapes.spec import ModelSpec
from ..stacks import STACKS
from .search import BATCH_LIMIT, MIN_GPUS_LIMIT, RANK_LIMIT, SEQ_LIMIT, SEQ_STEP, search_max


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
    #: (:func:`vramplan.estimate.search.smallest_gpus`); ``None``: not even :data:`MIN_GPUS_LIMIT`
    min_gpus: tuple[int, str] | None = None
    #: with ``--lengths``/``--alloc-conf``: the caching allocator's replay of the run on this card
    #: (:class:`vramplan.allocator.plan.AllocatorPlan`), which then decides the verdict and the searches
    allocator: Any = None
    #: the answers given by the single-step estimate although the run is replayed: ``seq`` with varying
    #: lengths (every sample that long), ``min_gpus`` unless the run fits this one card
    single_step: tuple[str, ...] = ()

    @property
    def fit(self) -> Fit:
        """The single-step verdict of the estimate (``device_used_bytes`` against the card)."""
        assert self.estimate.fit is not None
        return self.estimate.fit

    @property
    def fits(self) -> bool:
        """The verdict: the replayed run raises no out-of-memory error on the card when the run is replayed,
        else the single-step estimate's."""
        if self.allocator is not None:
            return self.allocator.run.oom_step is None
        return self.fit.fits

    @property
    def fits_on(self) -> str:
        """Which counter decides: ``run_peak_reserved_bytes`` (the allocator replay) or ``device_used_bytes``."""
        return "run_peak_reserved_bytes" if self.allocator is not None else "device_used_bytes"

    def to_dict(self, plan_json: dict[str, Any] | None = None) -> dict[str, Any]:
        d = {"fits": self.fits, "fits_on": self.fits_on, "headroom_bytes": self.fit.headroom_bytes,
             "max_batch": self.max_batch, "max_seq": self.max_seq, "seq_step": SEQ_STEP, "max_rank": self.max_rank,
             "at_limit": list(self.at_limit), "suggestions": [s.to_dict() for s in self.suggestions],
             "min_gpus": (None if self.min_gpus is None
                          else {"gpus": self.min_gpus[0], "strategy": self.min_gpus[1]}),
             "plan": plan_json if plan_json is not None else self.estimate.to_dict()}
        if self.allocator is not None:
            d["single_step"] = list(self.single_step)
            d["allocator"] = self.allocator.to_dict()
        return d


#: a verdict on one setup: ``fits(setup)``
Verdict = Callable[[Setup], bool]


def _fits(spec: ModelSpec, setup: Setup, gpu: Any, margin: float) -> bool:
    est = estimate(spec, setup, gpu, margin, detail=False)
    assert est.fit is not None
    return est.fit.fits


def _single_step(spec: ModelSpec, gpu: Any, margin: float) -> Verdict:
    return lambda s: _fits(spec, s, gpu, margin)


def max_batch(spec: ModelSpec, setup: Setup, gpu: Any, margin: float = 0.0, fits: Verdict | None = None,
              start: int | None = None) -> int | None:
    """Largest batch that fits at ``setup.seq`` (``None``: not even 1). ``fits``: the verdict (default: the
    single-step estimate on ``gpu``); ``start``: where the search starts (default: the setup's batch)."""
    ok = fits or _single_step(spec, gpu, margin)
    return search_max(lambda b: ok(setup.with_(batch=b)), 1, BATCH_LIMIT, start or setup.batch)


def max_seq(spec: ModelSpec, setup: Setup, gpu: Any, margin: float = 0.0, fits: Verdict | None = None,
            start: int | None = None) -> int | None:
    """Largest multiple of :data:`SEQ_STEP` that fits at ``setup.batch`` (``None``: not even the smallest one
    above ``new_tokens``). ``fits``, ``start``: as :func:`max_batch` (``start`` in tokens)."""
    ok = fits or _single_step(spec, gpu, margin)
    lo = setup.new_tokens // SEQ_STEP + 1
    k = search_max(lambda k: ok(setup.with_(seq=k * SEQ_STEP)), lo, SEQ_LIMIT // SEQ_STEP,
                   max(lo, (start or setup.seq) // SEQ_STEP))
    return None if k is None else k * SEQ_STEP


def max_rank(spec: ModelSpec, setup: Setup, gpu: Any, margin: float = 0.0, fits: Verdict | None = None,
             start: int | None = None) -> int | None:
    """Largest LoRA rank that fits at the setup's batch and seq (``None``: not LoRA, or not even r=1).
    ``fits``, ``start``: as :func:`max_batch`."""
    if setup.lora is None or setup.method not in ("lora", "qlora"):
        return None
    lora = setup.lora
    ok = fits or _single_step(spec, gpu, margin)
    return search_max(lambda r: ok(setup.with_(lora=replace(lora, r=r))), 1, RANK_LIMIT, start or lora.r)


def run_verdict(spec: ModelSpec, gpu: Any, margin: float) -> Verdict:
    """The verdict of a replayed run (``--lengths``/``--alloc-conf``): the caching allocator replays the run's
    steps (``vramplan/allocator``: the setup's ``--lengths`` steps, seed and batching, its ``--alloc-conf``) on
    what it may reserve on ``gpu`` — the card less ``margin`` and what the estimate places outside the
    allocator (the CUDA context, paged optimizer states) — and the setup fits when no step raises an
    out-of-memory error. One step model per structure is reused across batch and sequence length."""
    from ..allocator.conf import parse_alloc_conf
    from ..allocator.lengths import StepModel, run_reserved
    from ..allocator.plan import capacity_from, parse_lengths_option, run_options
    from ..estimate import overhead
    from .sweeps import structure_key

    models: dict[Setup, StepModel] = {}

    def fits(s: Setup) -> bool:
        est = estimate(spec, s, gpu, margin, detail=False)
        cap = capacity_from(overhead.usable_bytes(gpu.memory_bytes, margin), est.device_used_bytes,
                            est.peak_reserved_bytes)
        if cap <= 0:
            return False
        key = structure_key(s)
        if key not in models:
            models[key] = StepModel(spec, s)
        dist, batching, long_samples = parse_lengths_option(s.lengths)
        steps, seed = run_options(s.lengths)
        run = run_reserved(spec, s, dist, steps, parse_alloc_conf(s.alloc_conf), cap, batching=batching,
                           long_samples=long_samples, seed=seed, model=models[key])
        return run.oom_step is None

    return fits


def _one_shape(setup: Setup) -> bool:
    """Whether every step of the replayed run has the setup's own shape (no ``--lengths``, or fixed padding):
    then a longer ``--seq`` is a longer step, and the run replays in a few steps (cheap)."""
    from ..allocator.plan import parse_lengths_option

    dist, batching, _ = parse_lengths_option(setup.lengths)
    return dist is None or batching == "fixed"


def fit_report(spec: ModelSpec, setup: Setup, gpu: Any, margin: float = 0.0) -> FitReport:
    """Verdict, largest batch / seq / rank, the fewest GPUs of this card (and the strategy) on which the setup
    fits per rank, and when the setup does not fit the changes that would help, most memory saved first.

    The GPU count comes from the estimator's per-rank model (``estimate/distributed.py``, ``docs/multi-gpu.md``):
    ``--batch`` stays per GPU, the setup's ``--gpus``/``--strategy`` are replaced, its ``--offload`` is kept.

    With ``--lengths`` or ``--alloc-conf`` the run is replayed through the caching allocator
    (:func:`run_verdict`): the verdict and the largest batch and rank are the run's (no out-of-memory error on
    the card over its steps), searched from the single-step answers; the largest sequence length too when the
    run has one shape (no ``--lengths``, or ``@fixed``), else it stays the single-step one (every sample
    that long; listed in ``single_step``). The fewest GPUs is 1 when the run fits the card, else the
    single-step search's; the suggested changes are single-step estimates; the allocator's own fixes come with
    the replay (``allocator``).
    """
    if gpu is None:
        raise SetupError("fit needs a card: pass --gpu (a name from `vramplan gpus` or a size such as 24GB)")
    est = estimate(spec, setup, gpu, margin)
    assert est.fit is not None
    mb, ms, mr = max_batch(spec, setup, gpu, margin), max_seq(spec, setup, gpu, margin), max_rank(spec, setup, gpu,
                                                                                                  margin)
    allocator = None
    single_step: tuple[str, ...] = ()
    from .sweeps import replays

    if replays(setup):
        from ..allocator.plan import allocator_plan, capacity_from
        from ..estimate import overhead

        cap = capacity_from(overhead.usable_bytes(gpu.memory_bytes, margin), est.device_used_bytes,
                            est.peak_reserved_bytes)
        allocator = allocator_plan(spec, setup, setup.lengths, setup.alloc_conf, cap)
        run_fits = run_verdict(spec, gpu, margin)
        mb = max_batch(spec, setup, gpu, margin, run_fits, start=mb)
        mr = max_rank(spec, setup, gpu, margin, run_fits, start=mr)
        if _one_shape(setup):
            ms = max_seq(spec, setup, gpu, margin, run_fits, start=ms)
        else:
            single_step = ("seq",)
    limits = [n for n, v, lim in (("batch", mb, BATCH_LIMIT), ("seq", ms, SEQ_LIMIT), ("rank", mr, RANK_LIMIT))
              if v is not None and v >= lim]
    fewest = smallest_gpus(spec, setup, gpu, margin, max_gpus=MIN_GPUS_LIMIT)
    if allocator is not None:
        if allocator.run.oom_step is None and setup.gpus == 1:
            fewest = (1, "ddp")                 # the replayed run fits this one card
        else:
            single_step += ("min_gpus",)
    suggestions: tuple[Suggestion, ...] = ()
    if not est.fit.fits or (allocator is not None and allocator.run.oom_step is not None):
        suggestions = tuple(_ranked(_single_changes(spec, setup, gpu, margin, est, mb, ms)
                                    + _more_gpus(spec, setup, gpu, margin, est, fewest)))
    return FitReport(est, mb, ms, mr, suggestions, tuple(limits), fewest, allocator, single_step)


def _quantized_kwargs(s: Setup, **changes: Any) -> dict[str, Any]:
    """The keywords that rebuild ``s`` with a quantized base, as its command line with ``--method qlora`` resolves
    under its stack: a value ``s`` took from a 16-bit-only stack default, and every option the stack decides only
    for a quantized base, are left to the stack again (LitGPT's ``--quantize`` means bf16-true, paged AdamW, bnb.nf4
    and a quantized head; its fp32 frozen base is a bf16-mixed LoRA's). Other values of ``s`` are kept."""
    stack = STACKS[s.stack]
    kw = setup_kwargs(s, **changes)
    lora16 = stack.defaults_for(False, s.method == "full", s.gpus)
    quantized = stack.defaults_for(True, False, s.gpus)
    for name in set(lora16) | set(quantized):
        if name in changes or lora16.get(name) == quantized.get(name):
            continue
        if name in quantized or getattr(s, name) == lora16[name].value:
            kw.pop(name)
    return kw


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
               lambda: Setup.create(**_quantized_kwargs(s, method="qlora", quant="nf4", lora=LoraConfig(),
                                                          grad_ckpt=True)))
    if s.method == "lora" and s.quant == "none":
        yield (f"QLoRA (nf4 base){q_note} instead of LoRA", "--method qlora --grad-ckpt",
               lambda: Setup.create(**_quantized_kwargs(s, method="qlora", quant="nf4", grad_ckpt=True)))
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


#: how ``suggest`` names the strategy :func:`vramplan.estimate.smallest_gpus` found
SHARDED = {"fsdp": "FSDP (FULL_SHARD)", "fsdp1": "FSDP1 (FULL_SHARD, flat parameters)", "zero3": "DeepSpeed ZeRO-3",
           "fsdp-grad-op": "FSDP (SHARD_GRAD_OP)",
           "zero2": "DeepSpeed ZeRO-2", "zero1": "DeepSpeed ZeRO-1"}
#: the most GPUs a suggestion names: the limit of the fewest-GPUs search, so that both give one answer
MAX_SUGGESTED_GPUS = MIN_GPUS_LIMIT


def suggest(spec: ModelSpec, setup: Setup, gpu: Any, margin: float, est: Estimate | None = None,
            mb: int | None = None, ms: int | None = None) -> list[Suggestion]:
    """Single changes that lower ``device_used_bytes``, most saved first (changes that save nothing dropped).

    More GPUs: the answer of :func:`vramplan.estimate.smallest_gpus` (the fewest GPUs of this card, and the
    strategy, on which the setup fits per rank: what ``fit`` prints as "fewest"), so the two never disagree;
    when nothing up to :data:`MAX_SUGGESTED_GPUS` fits, the strategy that saves most on that many. The
    per-GPU batch is kept. Savings come from the estimator's per-rank model (``estimate/distributed.py``).
    """
    est = est or estimate(spec, setup, gpu, margin)
    fewest = smallest_gpus(spec, setup, gpu, margin, max_gpus=MIN_GPUS_LIMIT) if setup.training else None
    return _ranked(_single_changes(spec, setup, gpu, margin, est, mb, ms)
                   + _more_gpus(spec, setup, gpu, margin, est, fewest))


def _ranked(out: list[Suggestion]) -> list[Suggestion]:
    return sorted(out, key=lambda x: (-x.saves_bytes, x.change))


def _saving(est: Estimate, change: str, option: str, new: Estimate) -> list[Suggestion]:
    """``[the suggestion]`` when ``new`` uses less device memory than ``est``, else ``[]``."""
    saves = est.device_used_bytes - new.device_used_bytes
    assert new.fit is not None
    return [Suggestion(change, option, saves, new.fit.fits, new.device_used_bytes)] if saves > 0 else []


def _single_changes(spec: ModelSpec, setup: Setup, gpu: Any, margin: float, est: Estimate, mb: int | None,
                    ms: int | None) -> list[Suggestion]:
    out: list[Suggestion] = []
    for change, option, make in _candidates(spec, setup, mb, ms):
        try:
            new = estimate(spec, make(), gpu, margin)
        except VramplanError:
            continue        # a change that is invalid for this model (e.g. no default targets)
        out += _saving(est, change, option, new)
    return out


def _more_gpus(spec: ModelSpec, setup: Setup, gpu: Any, margin: float, est: Estimate,
               fewest: tuple[int, str] | None) -> list[Suggestion]:
    """The "more GPUs" change, taken from ``fewest`` (``FitReport.min_gpus``): that many GPUs with that strategy;
    ``None`` (nothing up to :data:`MAX_SUGGESTED_GPUS` fits): that many with the strategy that saves most."""
    if not setup.training:
        return []
    if fewest is not None:
        n, strategy = fewest
        if (n, strategy) == (setup.gpus, setup.strategy):
            return []
        try:
            new = estimate(spec, setup.with_(gpus=n, strategy=strategy), gpu, margin)
        except VramplanError:
            return []
        what = "the fewest that fit"
    else:
        from ..estimate.distributed import OFFLOADS_BY_STRATEGY, PREFERENCE

        n, tried = MAX_SUGGESTED_GPUS, []
        for strategy in PREFERENCE:         # the strategies smallest_gpus searched, a replica per GPU aside
            if strategy == "ddp" or setup.offload not in OFFLOADS_BY_STRATEGY[strategy]:
                continue
            try:
                tried.append((estimate(spec, setup.with_(gpus=n, strategy=strategy), gpu, margin), strategy))
            except VramplanError:
                continue
        if not tried:
            return []
        new, strategy = min(tried, key=lambda t: t[0].device_used_bytes)
        what = f"none up to {n} fits"
    if n == 1:
        return _saving(est, f"a single GPU ({what})", f"--gpus 1 --strategy {strategy}", new)
    name = SHARDED.get(strategy, strategy)
    return _saving(est, f"{name} across {n} GPUs ({what}; per-GPU batch {setup.batch} kept: effective batch × {n})",
                   f"--gpus {n} --strategy {strategy}", new)
