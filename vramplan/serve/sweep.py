"""Serving sweeps: one row per combination of ``vramplan serve`` settings, from each plan's JSON.

A row is the flat part of ``vramplan serve --json`` (:data:`ROW_KEYS`, in that order, the keys the engine has):
the settings the plan was made with, then its results. It is taken from the JSON, so a row and
``vramplan serve ... --json`` for the same settings agree by construction of the numbers, not of the table.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: the settings of a row, as ``serve --json`` names them (the swept ones among them)
SETTING_KEYS = ("model", "engine", "release", "gpu", "tp", "max_model_len", "dtype", "kv_cache_dtype", "quant",
                "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "block_size",
                "mem_fraction_static", "page_size")
#: the results of a row: sizes in bytes; vLLM's blocks or SGLang's tokens; the concurrency and the verdict
RESULT_KEYS = ("total_bytes", "weights_bytes", "available_kv_bytes", "num_gpu_blocks", "kv_cache_bytes",
               "kv_cache_tokens", "max_total_num_tokens", "max_concurrency", "fits")
ROW_KEYS = SETTING_KEYS + RESULT_KEYS

#: ``--sweep KEY=...`` keys: the ``vramplan serve`` options a sweep varies, by flag name without dashes
SWEEP_KEYS = ("engine", "gpu", "tp", "max-model-len", "gpu-memory-utilization", "mem-fraction-static",
              "max-num-seqs", "max-num-batched-tokens", "kv-cache-dtype", "quant", "dtype", "block-size",
              "page-size")


def serve_row(plan_json: Mapping[str, Any]) -> dict[str, Any]:
    """The row of one ``serve --json`` answer: :data:`ROW_KEYS` it has, in order (the other engine's left out)."""
    return {k: plan_json[k] for k in ROW_KEYS if k in plan_json}


def combinations(axes: Mapping[str, Sequence[Any]]) -> Iterator[dict[str, Any]]:
    """The cartesian product of the swept values, first key slowest, one dict per combination."""
    keys = list(axes)
    for values in itertools.product(*(axes[k] for k in keys)):
        yield dict(zip(keys, values, strict=True))


def row_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of a sweep: :data:`ROW_KEYS` that some row has, in order."""
    present = {k for r in rows for k in r}
    return [k for k in ROW_KEYS if k in present]
