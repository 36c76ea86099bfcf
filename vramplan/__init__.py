"""vramplan: exact GPU-memory planning for LoRA, QLoRA, full fine-tuning and inference of LLMs.

``vramplan.plan(model, ...)`` estimates a setup; see :mod:`vramplan.api`. Nothing here imports torch.
"""

# The first instruction (no ``from __future__`` import before it: that is an import too): a Ctrl-C while the
# command starts is one line and exit 130, no traceback (vramplan/startup.py).
from .startup import install as _install_ctrl_c

_install_ctrl_c()

from .hooks import set_layer_calibrator  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["plan", "__version__"]


def __getattr__(name: str):
    if name == "plan":
        from .api import plan

        return plan
    raise AttributeError(name)


def _calibrate_layer(spec, setup):
    """The simulator's calibration of a layer layout the analytic replay does not know (see vramplan.hooks)."""
    from .simulate.calibrate import calibrate

    return calibrate(spec, setup)


set_layer_calibrator(_calibrate_layer)
