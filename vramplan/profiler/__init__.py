"""Measure what a fine-tuning or inference step really uses, and write it as a run record.

``profile_run`` builds the model (real weights from a local folder, else the exact architecture with random
weights, quantized through transformers' own bitsandbytes loader), runs ``warmup + steps`` steps with the HF
``Trainer`` or a plain loop while a background thread samples NVML, the PyTorch allocator and the process
RSS, and writes one ``vramplan.run/1`` JSON record. A setup on several GPUs (``gpus > 1`` or a sharding
strategy) runs one process per rank under torchrun or accelerate launch (:mod:`.launch`, :mod:`.worker`) and
the ranks' records are merged into one (``ranks``, ``measured`` = the maximum over ranks). torch, transformers,
peft and bitsandbytes are imported only when a run starts.
"""

from __future__ import annotations

from .options import ProfileError, Rank, RunOptions, needs_launch
from .record import (
    SCHEMA,
    UNTIL_OOM_SCHEMA,
    RecordError,
    RunResult,
    UntilOomResult,
    load_record,
    validate_record,
)
from .runner import profile_run, until_oom

__all__ = ["SCHEMA", "UNTIL_OOM_SCHEMA", "ProfileError", "Rank", "RecordError", "RunOptions", "RunResult",
           "UntilOomResult", "load_record", "needs_launch", "profile_run", "until_oom", "validate_record"]
