"""What a profiler run is told, apart from the :class:`~vramplan.setup.Setup`: run options, the rank, the errors.

The runner (:mod:`.runner`), the launcher of several ranks (:mod:`.launch`), the training loops (:mod:`.loops`)
and the rank worker (:mod:`.worker`) all read these, so they sit below all of them: this module imports nothing
else from the profiler.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import VramplanError

LOOPS = ("trainer", "plain")
DEVICES = ("auto", "cuda", "cpu")
AXES = ("batch", "seq")
#: setup options the profiler does not take: its loops compute the loss the model's own way (no fused chunked
#: cross-entropy), so ``--loss chunked`` could not be run as asked; and it runs the HF Trainer + PEFT stack (or a
#: plain loop), never another framework's code, so ``--stack`` could not either, nor the switches that stand for
#: another stack's code (a quantized head, fp16 quant states, K/V expansion, offloaded activations, the optimizer
#: in backward, fp32 frozen weights under autocast, axolotl's fp32 norms and embeddings, ms-swift's logits from the
#: first supervised label on over a masked prompt) or a multi-GPU split for inference (issue 14, 17)
NOT_PROFILED = ("loss", "stack", "quant_head", "quant_state_dtype", "kv_expand", "act_offload", "optim_in_bwd",
                "frozen_dtype", "fp32_norms_embeddings", "device_map", "max_memory", "prompt_tokens", "logits_to_keep")
#: ``--until-oom`` stops doubling here even without an OOM (a host with unbounded swap would never stop).
UNTIL_OOM_MAX_DOUBLINGS = 20

Callback = Callable[[str], None]


class ProfileError(VramplanError):
    """Profiler options that cannot work (no CUDA device for ``--device cuda``, ``--steps 0``, ...)."""


def stderr_warn(message: str) -> None:
    """The default ``warn`` callback of a run: one ``vramplan: warning: ...`` line on stderr."""
    sys.stderr.write(f"vramplan: warning: {message}\n")


#: most measured (or warm-up) steps a run may ask for: a memory profile repeats after a few steps, and the
#: sampler keeps every sample of the run in memory
MAX_STEPS = 100_000


@dataclass(frozen=True)
class RunOptions:
    """How to run and measure (everything that is not the :class:`~vramplan.setup.Setup`)."""

    steps: int = 5
    warmup: int = 1
    sample_hz: float = 100.0
    out: str = "reports/runs"
    loop: str = "trainer"
    snapshot: bool = False
    device: str = "auto"
    fault: str | None = None          # tests: "oom@backward:2"; None reads $VRAMPLAN_PROFILE_FAULT
    write: bool = True

    def validate(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ProfileError(f"--steps must be an integer >= 1, got {self.steps!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ProfileError(f"--warmup must be an integer >= 0, got {self.warmup!r}")
        for flag, n in (("--steps", self.steps), ("--warmup", self.warmup)):
            if n > MAX_STEPS:        # issue 18: --steps 10**30 was accepted and ran until killed
                text = str(n) if n < 10**24 else f"a {len(str(n)):,}-digit number"
                raise ProfileError(f"{flag} must be at most {MAX_STEPS:,}, got {text}")
        if not (0 < float(self.sample_hz) <= 10_000) or math.isnan(float(self.sample_hz)):
            raise ProfileError(f"--sample-hz must be in (0, 10000], got {self.sample_hz!r}")
        if self.loop not in LOOPS:
            raise ProfileError(f"--loop {self.loop!r} is not one of: {', '.join(LOOPS)}")
        if self.device not in DEVICES:
            raise ProfileError(f"--device {self.device!r} is not one of: {', '.join(DEVICES)}")


@dataclass(frozen=True)
class Rank:
    """This process's place in a multi-process run, as the launcher set it (``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``), and which launcher that was (``torchrun`` or ``accelerate``)."""

    rank: int
    local_rank: int
    world_size: int
    launcher: str

    @classmethod
    def from_env(cls, launcher: str) -> Rank:
        try:
            return cls(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]),
                       launcher)
        except (KeyError, ValueError) as exc:
            raise ProfileError(f"the profiler worker runs under torchrun or accelerate launch, which set RANK, "
                               f"LOCAL_RANK and WORLD_SIZE; {exc} is missing or not an integer") from None


def needs_launch(setup: Any) -> bool:
    """Whether ``setup`` runs as several processes (``--gpus > 1``) or under a sharding engine (``--strategy``
    other than ddp, which needs its launcher even on one GPU)."""
    return setup.gpus > 1 or setup.strategy != "ddp"
