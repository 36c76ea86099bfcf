"""The counters of one structural setup at many (batch, seq) points: the sweep's evaluator.

:func:`estimate_counters` gives, for every point, exactly what ``estimate(spec, setup.with_(batch=b, seq=s),
gpu, detail=False)`` gives for ``peak_allocated_bytes``, ``peak_reserved_bytes``, ``device_used_bytes`` and
``peak_phase`` (``tests/estimate/test_grid.py`` compares them integer for integer). It restates nothing: the
structure is resolved once per call (``model.model_states``), then each point runs the estimator's own
:meth:`~vramplan.estimate.activations.LayerActivations.at` and :func:`~vramplan.estimate.timeline.phase_peaks`
(training) or :func:`~vramplan.estimate.inference.inference_bytes` (inference) — without itemizing the
components, formulas and assumptions an :class:`~vramplan.estimate.Estimate` carries. Python ints throughout
(no numpy): exact at any size, with no overflow to guard against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ..quantized import checkpoint_setup
from ..setup import Setup
from ..shapes.spec import ModelSpec
from . import overhead
from .inference import inference_bytes
from .optimizer import step_timeline
from .quant_kernels import inference_terms, plan_kernel
from .states import model_states
from .timeline import peak_of, phase_peaks
from .vision import images as vision_images


class Counters(NamedTuple):
    """The counters of one point (the fields of :class:`~vramplan.estimate.Estimate` of the same names)."""

    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_used_bytes: int
    peak_phase: str


def estimate_counters(spec: ModelSpec, setup: Setup, batches_seqs: Sequence[tuple[int, int]],
                      gpu: Any = None) -> list[Counters]:
    """Counters of ``setup`` at every ``(batch, seq)`` of ``batches_seqs``.

    Args:
        spec: the model.
        setup: any setup of the structure to evaluate; its batch and seq are ignored (``new_tokens`` is kept:
            every seq must exceed it, as :class:`~vramplan.setup.Setup` requires).
        batches_seqs: the points, ``(batch, seq)`` each.
        gpu: a card (:class:`vramplan.profiles.Gpu`) whose architecture's CUDA context ``device_used_bytes``
            includes, as ``estimate(..., gpu)``; ``None``: the context of an unknown architecture.

    Returns:
        One :class:`Counters` per point, in order, equal to ``estimate(spec, setup.with_(batch=b, seq=s), gpu,
        detail=False)``'s.

    Raises:
        VramplanError: what :func:`~vramplan.estimate.estimate` raises for this structure.
    """
    setup = checkpoint_setup(spec.config, setup, spec.name)[0]     # a pre-quantized checkpoint, as estimate()
    d = model_states(spec, setup)
    arch = getattr(gpu, "architecture", "") if gpu is not None else ""
    ctx = overhead.cuda_context_bytes(arch, overhead.uses_bitsandbytes(setup))
    frag = overhead.allocator_overhead_bytes
    out: list[Counters] = []
    append = out.append
    if not setup.training:
        cublas = overhead.CUBLAS_WORKSPACE_BYTES
        km = plan_kernel(spec, setup, d.structure, gpu)          # GPTQ/AWQ kernel buffers, as estimate()
        for b, s in batches_seqs:
            r = inference_bytes(spec, d.structure, b, s, setup.new_tokens, setup.compute_dtype, setup,
                                full_logits=setup.logits == "all")
            kept, sc_prefill, sc_decode = inference_terms(km, b, s - setup.new_tokens)
            peak = d.static_weights + r.peak + cublas + kept + (sc_prefill if r.phase == "prefill" else sc_decode)
            reserved = peak + frag(peak)
            append(Counters(peak, reserved, reserved + ctx, r.phase))
        return out
    rank = d.rank
    outside = sum(c.bytes for c in rank.device) if rank is not None else 0                  # type: ignore
    device_extra = ctx + d.opt_paged + outside
    states, at = step_timeline(d.timeline, d.structure.trainables, setup, rank is not None), d.activations.at
    n_img = vision_images(spec, setup)
    for b, s in batches_seqs:
        peak, phase = peak_of(phase_peaks(states, at(b, s, n_img, setup.prompt_tokens)))
        reserved = peak + frag(peak)
        append(Counters(peak, reserved, reserved + device_extra, phase))
    return out
