"""The upstream tables vramplan mirrors, compared with the installed libraries.

``python -m vramplan.tables --check-upstream`` lists what the installed peft / transformers know that the
mirrors in :mod:`vramplan.lora` lack, and every entry on which they disagree. CI does not run it (an upstream
release adding a model type must not turn CI red); the tests check only the entries both sides know, against
the pinned versions in ``.ci/constraints.txt``. Exit code 0: nothing new; 1: differences (listed).
"""

from __future__ import annotations

import sys
from typing import Any


def upstream_tables() -> dict[str, dict[str, Any]]:
    """The installed libraries' tables, as plain data (imports peft and transformers)."""
    from peft.utils import transformers_weight_conversion as twc
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    moe_base = {k: v for k, v in twc._MODEL_TO_CONVERSION_PATTERN.items() if v in twc._MOE_TARGET_MODULE_MAPPING}
    return {
        "default targets": {k: (v if isinstance(v, str) else list(v)) for k, v in defaults.items()},
        "MoE conversion base": moe_base,
        "MoE target mapping": dict(twc._MOE_TARGET_MODULE_MAPPING),
        "MoE fused targets": {b: {k: list(v) for k, v in d.items()} for b, d in twc._MOE_FUSED_TARGETS.items()},
    }


def mirrored_tables() -> dict[str, dict[str, Any]]:
    """vramplan's mirrors of the same tables, in the same shape."""
    from .lora import (
        DEFAULT_TARGET_REGEX,
        DEFAULT_TARGETS,
        MOE_CONVERSION_BASE,
        MOE_FUSED_TARGETS,
        MOE_TARGET_MAPPING,
    )

    return {
        "default targets": {k: list(v) for k, v in DEFAULT_TARGETS.items()} | dict(DEFAULT_TARGET_REGEX),
        "MoE conversion base": dict(MOE_CONVERSION_BASE),
        "MoE target mapping": dict(MOE_TARGET_MAPPING),
        "MoE fused targets": {b: {k: list(v) for k, v in d.items()} for b, d in MOE_FUSED_TARGETS.items()},
    }


def compare(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]]) -> dict[str, dict[str, list]]:
    """Per table: ``disagree`` (keys both know, different values), ``upstream_only`` and ``mirror_only`` keys."""
    out = {}
    for table, mine in ours.items():
        up = theirs[table]
        out[table] = {
            "disagree": sorted(k for k in mine.keys() & up.keys() if mine[k] != up[k]),
            "upstream_only": sorted(up.keys() - mine.keys()),
            "mirror_only": sorted(mine.keys() - up.keys()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--check-upstream"]:
        print(__doc__.strip())
        return 2
    from importlib.metadata import version

    from .lora import PEFT_TABLE_VERSION

    print(f"mirror: peft {PEFT_TABLE_VERSION}; installed: peft {version('peft')}, "
          f"transformers {version('transformers')}")
    diff = compare(mirrored_tables(), upstream_tables())
    found = False
    for table, d in diff.items():
        for kind, keys in d.items():
            if keys:
                found = True
                print(f"{table}: {kind.replace('_', ' ')}: {', '.join(keys)}")
    if not found:
        print("no differences")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
