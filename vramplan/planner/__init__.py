"""Planning on top of the estimator: fit, the GPU ladder, sweeps and plan-file checks.

Everything here calls :func:`vramplan.estimate.estimate` and never reimplements a formula (one deliberate,
tested exception: :func:`~vramplan.planner.cards.device_used_on`). No torch import, no printing.

- :mod:`.search`: exponential-then-bisect searches and their limits
- :mod:`.cards`: an estimate on a card, the verdict per catalogue card, rental prices
- :mod:`.fit`: the largest batch, sequence and rank that fit, the fewest GPUs, single changes that save memory
- :mod:`.sweeps`: every model × setup of an option product, one row each
- :mod:`.planfile`: plan files (vramplan keys or another tool's config) -> validated entries
- :mod:`.check`: the CI gate over plan files
- :mod:`.page`: the data of the plan page
"""

from __future__ import annotations

from .cards import CardVerdict, PriceFileError, card_verdicts, device_used_on, fit_on, load_prices
from .fit import (
                     MAX_SUGGESTED_GPUS,
                     SHARDED,
                     FitReport,
                     Suggestion,
                     fit_report,
                     max_batch,
                     max_rank,
                     max_seq,
                     suggest,
)
from .search import BATCH_LIMIT, MIN_GPUS_LIMIT, RANK_LIMIT, SEQ_LIMIT, SEQ_STEP, search_max

__all__ = ["BATCH_LIMIT", "COUNTER_COLUMNS", "FOREIGN_READERS", "MAX_SUGGESTED_GPUS", "MIN_GPUS_LIMIT",
           "OPTION_COLUMNS", "PLAN_KEYS", "PLAN_OPTIONS", "RANK_LIMIT", "SEQ_LIMIT", "SEQ_STEP", "SHARDED",
           "CardVerdict", "FitReport", "PlanEntry", "PriceFileError", "Suggestion", "SweepResult",
           "card_verdicts", "check_files", "detect_format", "device_used_on", "fit_on", "fit_report",
           "gib_column", "gpu_columns", "load_prices", "max_batch", "max_rank", "max_seq", "plan_page_data",
           "product", "read_plan_file", "search_max", "setup_columns", "structure_key", "suggest", "sweep", "sweep_row"]

#: names imported on first use, so a command loads only what it runs: the plan-file modules load every
#: foreign-config reader (vramplan/interop, about 11 ms), which plan, fit and sweep never need; fit needs neither
#: the sweep nor the plan page
_LAZY = {"check_files": "check", "FOREIGN_READERS": "planfile", "PLAN_KEYS": "planfile",
         "PLAN_OPTIONS": "planfile", "PlanEntry": "planfile", "detect_format": "planfile",
         "read_plan_file": "planfile", "plan_page_data": "page",
         **dict.fromkeys(("COUNTER_COLUMNS", "OPTION_COLUMNS", "SweepResult", "gib_column", "gpu_columns", "product",
                          "setup_columns", "structure_key", "sweep", "sweep_row"), "sweeps")}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
