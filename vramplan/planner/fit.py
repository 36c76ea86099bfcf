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
