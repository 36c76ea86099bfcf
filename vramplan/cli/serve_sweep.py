"""``vramplan serve --sweep KEY=V1,V2 ...``: every combination of serve settings, one row each (not a command).

Values are read by the serve command's own option types, so ``--sweep tp=x`` is refused as ``--tp x`` is; a
combination the engine's accounting refuses (a TP size that does not divide the heads, a ``max_model_len``
longer than the model's) is skipped with a warning, as ``vramplan sweep`` skips invalid combinations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from ..errors import SetupError
from .render import warn

#: the most rows a serve sweep runs (each row is milliseconds; this bounds a typo such as tp=1,2,...,4096)
SERVE_SWEEP_MAX_ROWS = 10_000

#: ``--sweep`` key -> the serve command's parameter name, where they differ
_PARAM = {"gpu": "gpu_name"}


def parse_sweep(ctx: click.Context, items: tuple[str, ...]) -> dict[str, list[Any]]:
    """``("tp=1,2,4", "max-model-len=4096,8192")`` -> ``{"tp": [1, 2, 4], "max_model_len": [4096, 8192]}``,
    keyed by the serve parameter name, each value converted by that option's type.

    Raises:
        SetupError: a malformed item, an unknown or repeated key, an empty list, a bad value (one line each).
    """
    from ..serve.sweep import SWEEP_KEYS

    params = {p.name: p for p in ctx.command.params}
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        if not sep or key not in SWEEP_KEYS:
            raise SetupError(f"--sweep {item!r}: expected KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)}")
        name = _PARAM.get(key, key.replace("-", "_"))
        if name in axes:
            raise SetupError(f"--sweep {item!r}: {key} is swept twice; give its values in one comma list")
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values:
            raise SetupError(f"--sweep {item!r}: no values after '='")
        param = params[name]
        out = []
        for v in values:
            try:
                out.append(param.type.convert(v, param, ctx))
            except click.BadParameter as exc:
                raise SetupError(f"--sweep {key}={v!r}: {exc.message}") from None
        axes[name] = list(dict.fromkeys(out))
    rows = math.prod(len(v) for v in axes.values())
    if rows > SERVE_SWEEP_MAX_ROWS:
        raise SetupError(f"--sweep gives {rows:,} combinations, more than {SERVE_SWEEP_MAX_ROWS:,}: shorten the lists")
    return axes


def sweep_rows(axes: dict[str, list[Any]], base: dict[str, Any],
               plan_json: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per combination: ``plan_json(settings)`` (the JSON ``serve --json`` prints for them) made a row.
    Refused combinations are skipped, with one warning naming the reasons.

    Raises:
        SetupError: every combination was refused.
    """
    from ..serve.sweep import combinations, serve_row

    rows, skipped = [], []
    for combo in combinations(axes):
        try:
            rows.append(serve_row(plan_json({**base, **combo})))
        except SetupError as exc:
            skipped.append(str(exc))
    if skipped:
        reasons = list(dict.fromkeys(skipped))
        warn(f"skipped {len(skipped)} combination{'s' if len(skipped) != 1 else ''} the engine's accounting "
             f"refuses: " + "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""))
    if not rows:
        raise SetupError(f"--sweep: no combination could be planned ({skipped[0]})")
    return rows
