"""vramplan: exact GPU-memory planning for LoRA, QLoRA, full fine-tuning and inference of LLMs.

``vramplan.plan(model, ...)`` estimates a setup; see :mod:`vramplan.api`. Nothing here imports torch.
"""

from __future__ import annotations

from .version import __version__

__all__ = ["plan", "__version__"]


def __getattr__(name: str):
    if name == "plan":
        from .api import plan

        return plan
    raise AttributeError(name)
