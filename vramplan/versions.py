"""Library versions as an input: which versions an estimate is for, and the memory behaviours that changed by
release, each with the release it landed in and its source (``docs/stacks.md``, "Library versions").

The estimator follows the behaviour of the tested stack (:data:`PINNED`, the versions of ``.ci/constraints.txt``).
``--versions PKG=VER,...`` names the versions a run really uses; where one of them predates a change in
:data:`CHANGES`, the estimate follows the older behaviour where that change is ``modelled`` (an ``assumptions`` line
names it and the code that prices it) and says so in ``warnings`` where it is not yet, never silently.
Without ``--versions`` the installed versions are used (read from ``*.dist-info`` names, no import), else the
pinned ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import SetupError

#: the versions the suite passes on (.ci/constraints.txt; tests/test_versions.py keeps them equal)
PINNED: dict[str, str] = {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2", "bitsandbytes": "0.50.2",
                          "accelerate": "1.16.0"}
#: packages --versions takes: the libraries above and each stack's own package
PACKAGES: tuple[str, ...] = (*PINNED, "trl", "ms-swift", "llamafactory", "axolotl", "torchtune", "litgpt",
                             "unsloth")


@dataclass(frozen=True)
class Change:
    """A memory behaviour that changed in ``package`` at ``release``; before it, ``before`` held.

    ``modelled``: where the estimator prices the older behaviour (empty: not yet, a warning instead).
    """

    package: str
    release: str
    before: str
    source: str
    modelled: str = ""


CHANGES: tuple[Change, ...] = (
    Change("transformers", "4.45.0", "generate computes the logits of every prompt position (no "
           "num_logits_to_keep): a batch x prompt x vocab tensor at the prefill",
           "transformers 4.44.2 generation/utils.py (no num_logits_to_keep for the model); 4.45.0 "
           "generation/utils.py:1903-1904, models/llama/modeling_llama.py:1214",
           "vramplan/estimate/inference.py inference.inference_bytes: the prefill's head over every position"),
    Change("transformers", "4.46.0", "causal-LM forward upcasts the logits to fp32 (an fp32 batch x seq x vocab "
           "model output)", "transformers 4.44.2 models/llama/modeling_llama.py:1208-1215; 4.46.0 "
           "loss/loss_utils.py:32-49",
           "vramplan/estimate/logits.py logits.loss_bytes: STANDARD_FP32_OUTPUT (training); inference.py "
           "inference_bytes: the head's fp32 output"),
    Change("transformers", "4.49.0", "the loss shifts the logits with a second fp32 batch x seq x vocab copy at "
           "batch > 1", "transformers 4.48.3 loss/loss_utils.py:36-39; 4.49.0 loss/loss_utils.py:39 pads the "
           "labels instead", "vramplan/estimate/logits.py logits.loss_bytes: STANDARD_SHIFTED"),
    Change("transformers", "4.54.0", "the Trainer's default optimizer is foreach AdamW (an extra temporary the "
           "size of one moment at the optimizer step)", "transformers 4.54.0 training_args.py:806-811",
           "vramplan/setup.py Setup.create: --optim adamw-foreach when not given (optimizer.py)"),
    Change("peft", "0.12.0", "adapters take the base layer's dtype (no autocast_adapter_dtype fp32 upcast)",
           "peft 0.12.0 mapping.py, peft_model.py (absent in 0.11.1); 0.11.1 tuners/lora/layer.py:123-131 "
           "update_layer casts the layer to a floating-point base weight's dtype",
           "vramplan/setup.py Setup.adapter_weight_dtype: --adapter-dtype auto is the base dtype (fp32 on a "
           "quantized base)"),
    Change("bitsandbytes", "0.43.2", "MatMul4Bit.forward saves its input for backward (+tokens x in_features x 2 B "
           "per quantized Linear whose compute-dtype input is not saved otherwise)",
           "bitsandbytes 0.43.1 autograd/_functions.py:515-516 ctx.tensors = (A, B); 0.43.2 :516 (None, B), PR #1270",
           "vramplan/estimate/layers.py Program.linear: the 4-bit matmul saves its input"),
    Change("bitsandbytes", "0.50.0", "the 4-bit forward dequantizes in the quant-state dtype, then casts (two "
           "copies of the weight when the quant-state dtype is not the compute dtype)",
           "bitsandbytes 0.49.2 autograd/_functions.py:315 dequantize_4bit(B, quant_state).to(A.dtype) vs 0.50.0 "
           ":324-343 gemm_4bit (backends/cuda/ops.py _dequant_linear_fallback: one copy in A.dtype)",
           "vramplan/estimate/layers.py Program.linear: the forward's dequantized copies"),
    Change("accelerate", "1.6.0", "no FSDP2: --strategy fsdp is FSDP1 with flat parameters",
           "accelerate 1.6.0 utils/dataclasses.py (absent in 1.5.2)",
           "vramplan/setup.py Setup.create: --strategy fsdp runs as fsdp1 (docs/fsdp1.md)"),
)

_VERSION = re.compile(r"\d+(\.\d+)*([.+-]?[A-Za-z0-9.+-]*)?")


def release_tuple(version: str) -> tuple[int, ...]:
    """``"0.43.2"`` -> ``(0, 43, 2)``; local and pre-release suffixes (``+cpu``, ``.dev0``, ``rc1``) are dropped."""
    m = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def parse_versions(text: str | None) -> dict[str, str]:
    """``"bitsandbytes=0.43.1, transformers=4.44.2"`` -> ``{"bitsandbytes": "0.43.1", "transformers": "4.44.2"}``.

    Raises:
        SetupError: a part that is not ``PKG=VER``, an unknown package, or a version that is not a release number.
    """
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        pkg, sep, ver = part.partition("=")
        pkg, ver = pkg.strip().lower().replace("_", "-"), ver.strip().lstrip("=")
        if not sep or not pkg or not ver:
            raise SetupError(f"--versions {part[:60]!r} is not PKG=VER: write e.g. bitsandbytes=0.43.1")
        if pkg not in PACKAGES:
            raise SetupError(f"--versions: package {pkg[:40]!r} is not one vramplan models; "
                             f"use one of {', '.join(PACKAGES)}")
        if not _VERSION.fullmatch(ver) or len(ver) > 40:
            raise SetupError(f"--versions {pkg}={ver[:40]!r}: not a release number such as 0.43.1")
        out[pkg] = ver
    return out


def format_versions(versions: dict[str, str]) -> str | None:
    """The canonical ``--versions`` text (sorted by package), or ``None`` when empty."""
    return ",".join(f"{k}={v}" for k, v in sorted(versions.items())) or None


@lru_cache(maxsize=1)
def installed_versions() -> dict[str, str]:
    """Versions of the installed :data:`PACKAGES`, read from the ``*.dist-info`` folder names on ``sys.path``
    (no imports, and cheaper than ``importlib.metadata``, which costs ~0.1 s to import on a cold start)."""
    import os
    import sys

    found: dict[str, str] = {}
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):
                pkg, _, rest = name[: -len(".dist-info")].partition("-")
                key = pkg.lower().replace("_", "-")
                if key in PACKAGES and key not in found:
                    found[key] = rest
    return found


def modelled_versions(given: str | None) -> dict[str, tuple[str, str]]:
    """package -> (version, where it came from: ``--versions``, ``installed`` or ``pinned``) for the libraries the
    formulas follow, plus any stack package given."""
    asked = parse_versions(given)
    installed = installed_versions()
    out: dict[str, tuple[str, str]] = {}
    for pkg in PACKAGES:
        if pkg in asked:
            out[pkg] = (asked[pkg], "--versions")
        elif pkg in installed and pkg in PINNED:
            out[pkg] = (installed[pkg], "installed")
        elif pkg in PINNED:
            out[pkg] = (PINNED[pkg], "pinned")
    return out


def predates(versions: dict[str, tuple[str, str]], package: str, release: str) -> bool:
    """Whether the version of ``package`` in ``versions`` (as :func:`modelled_versions` gives them) is older than
    ``release``; ``False`` when the package is not named."""
    v = versions.get(package)
    return v is not None and release_tuple(v[0]) < release_tuple(release)


@lru_cache(maxsize=256)
def runs_before(given: str | None, package: str, release: str) -> bool:
    """Whether the versions an estimate is for (``--versions`` text ``given``, else the installed, else the pinned
    ones: :func:`modelled_versions`) put ``package`` before ``release``; cached, as setups and sweep points ask
    it many times for the same text."""
    return predates(modelled_versions(given), package, release)


def _predated(versions: dict[str, tuple[str, str]], modelled: bool) -> list[tuple[Change, tuple[str, str]]]:
    return [(c, versions[c.package]) for c in CHANGES
            if bool(c.modelled) == modelled and predates(versions, c.package, c.release)]


def version_warnings(versions: dict[str, tuple[str, str]]) -> list[str]:
    """One warning per change in :data:`CHANGES` that the named versions predate and that is not modelled yet."""
    return [f"{c.package} {v} ({origin}) predates {c.release}: before it, {c.before} — not modelled, the estimate "
            f"follows {c.package} >= {c.release} ({c.source})" for c, (v, origin) in _predated(versions, False)]


def version_assumptions(versions: dict[str, tuple[str, str]]) -> list[str]:
    """One ``assumptions`` line per modelled change in :data:`CHANGES` that the named versions predate."""
    return [f"{c.package} {v} ({origin}) predates {c.release}: {c.before} — modelled ({c.source}; {c.modelled})"
            for c, (v, origin) in _predated(versions, True)]
