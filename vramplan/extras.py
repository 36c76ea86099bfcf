"""Optional extras: which packages each needs, and one clear error when a command needs a missing one.

The core install (click, PyYAML, huggingface_hub) runs the analytic path; the rest are extras in
``pyproject.toml``. The check uses ``importlib.util.find_spec``, so it imports nothing.
"""

from __future__ import annotations

import importlib.util

from .errors import VramplanError

#: extra -> the top-level modules it provides (kept equal to pyproject.toml by tests/test_readme.py)
EXTRAS: dict[str, tuple[str, ...]] = {
    "report": ("plotly",),
    "simulate": ("torch", "transformers", "peft", "bitsandbytes"),
    "profile": ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "pynvml", "psutil"),
}


class MissingExtraError(VramplanError):
    """A command needs an optional extra that is not installed."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be found."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtraError` when ``what`` (e.g. ``--mode simulate``) lacks the ``extra``."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(f'{what} needs the {extra} extra ({", ".join(absent)} not installed): '
                                f'pip install "vramplan[{extra}]"')
