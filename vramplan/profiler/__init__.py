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

import importlib
from typing import TYPE_CHECKING

#: the public names of the profiler and the module each lives in; read on first use, so that importing one
#: light module (``vramplan.profiler.options``, which ``vramplan profile --help`` needs) costs no more
EXPORTS = {
    "ProfileError": "options", "Rank": "options", "RunOptions": "options", "needs_launch": "options",
    "SCHEMA": "record", "UNTIL_OOM_SCHEMA": "record", "RecordError": "record", "RunResult": "record",
    "UntilOomResult": "record", "load_record": "record", "validate_record": "record",
    "profile_run": "runner", "until_oom": "runner",
}

__all__ = ["SCHEMA", "UNTIL_OOM_SCHEMA", "ProfileError", "Rank", "RecordError", "RunOptions", "RunResult",
           "UntilOomResult", "load_record", "needs_launch", "profile_run", "until_oom", "validate_record"]

if TYPE_CHECKING:
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


def __getattr__(name: str):
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
