"""Measure what a fine-tuning or inference step really uses, and write it as a run record.

``profile_run`` builds the model (real weights from a local folder, else the exact architecture with random
weights, quantized through transformers' own bitsandbytes loader), runs ``warmup + steps`` steps with the HF
``Trainer`` or a plain loop while a background thread samples NVML, the PyTorch allocator and the process
RSS, and writes one ``vramplan.run/1`` JSON record. torch, transformers, peft and bitsandbytes are imported
only when a run starts.
"""

from __future__ import annotations

from .record import SCHEMA, UNTIL_OOM_SCHEMA, RecordError, load_record, validate_record
from .runner import ProfileError, RunOptions, RunResult, UntilOomResult, profile_run, until_oom

__all__ = ["SCHEMA", "UNTIL_OOM_SCHEMA", "ProfileError", "RecordError", "RunOptions", "RunResult",
           "UntilOomResult", "load_record", "profile_run", "until_oom", "validate_record"]
