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
from .check import CheckResult, check_plans
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
from .page import plan_page_data
from .planfile import FOREIGN_READERS, PLAN_KEYS, PLAN_OPTIONS, PlanEntry, detect_format, read_plan_file
from .search import BATCH_LIMIT, MIN_GPUS_LIMIT, RANK_LIMIT, SEQ_LIMIT, SEQ_STEP, search_max
from .sweeps import (
                     COUNTER_COLUMNS,
                     OPTION_COLUMNS,
                     SweepResult,
                     gib_column,
                     gpu_columns,
                     product,
                     setup_columns,
                     structure_key,
                     sweep,
                     sweep_row,
)

__all__ = ["BATCH_LIMIT", "COUNTER_COLUMNS", "FOREIGN_READERS", "MAX_SUGGESTED_GPUS", "MIN_GPUS_LIMIT",
           "OPTION_COLUMNS", "PLAN_KEYS", "PLAN_OPTIONS", "RANK_LIMIT", "SEQ_LIMIT", "SEQ_STEP", "SHARDED",
           "CardVerdict", "CheckResult", "FitReport", "PlanEntry", "PriceFileError", "Suggestion", "SweepResult",
           "card_verdicts", "check_plans", "detect_format", "device_used_on", "fit_on", "fit_report",
           "gib_column", "gpu_columns", "load_prices", "max_batch", "max_rank", "max_seq", "plan_page_data",
           "product", "read_plan_file", "search_max", "setup_columns", "structure_key", "suggest", "sweep", "sweep_row"]
