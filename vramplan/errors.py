"""Errors vramplan raises on bad input.

Library code raises a :class:`VramplanError` subclass whose message is one line that quotes the offending
value, states the rule and says how to fix it. The CLI prints that line on stderr and exits with code 2.
"""

from __future__ import annotations


class VramplanError(Exception):
    """Base class: bad input that the user can fix. The message is one line."""

    exit_code = 2


class UnknownModelError(VramplanError):
    """A model name that is neither a bundled profile, an alias, a local path, nor reachable on the Hub."""


class ConfigError(VramplanError):
    """A ``config.json`` that cannot describe a model (not JSON, a missing or invalid field)."""


class UnknownGpuError(VramplanError):
    """A GPU name that is not in the catalogue and is not a size such as ``24GB``."""


class SetupError(VramplanError):
    """An invalid training or inference setup (rank <= 0, qlora without quantization, ...)."""


class TargetError(VramplanError):
    """LoRA targets that match no module, or a regex that does not compile."""


class PlanFileError(VramplanError):
    """A plan file (YAML/JSON) that cannot be read or validated."""


class ForeignConfigError(VramplanError):
    """A key of another tool's config (LLaMA-Factory, axolotl, TrainingArguments) that vramplan cannot read
    or does not model; ``key`` names it so that the caller can say where it is."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class CannotCheckError(VramplanError):
    """A training config that is read but cannot be checked: a stage, method or setting vramplan does not model
    (DPO's reference model, a pre-quantized AWQ checkpoint, partial training...), or a value the file leaves to
    the launcher; ``reason`` says which. ``vramplan check`` reports the file as "cannot check: <reason>"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SimulationError(VramplanError):
    """A model that cannot be executed on fake tensors."""


def close_matches(word: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """Return ``" (did you mean: a, b?)"`` for the closest choices, or ``""`` when none is close."""
    import difflib

    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    if not hits:
        return ""
    return " (did you mean: " + ", ".join(lowered[h] for h in hits) + "?)"
