"""The training step's timeline: what is allocated in each phase, and where the total peaks.

One :func:`phase_peaks` over plain integers serves the estimator (``estimator.py::estimate``, with and without
``detail``) and the sweep's evaluator (``grid.py::estimate_counters``), so the timeline is written once.
The phases, in the order of a step of the HF Trainer loop (a tie goes to the earlier phase):

* ``forward`` — the end of forward, while the loss runs: every saved activation plus the loss's temporaries
  (or one layer's forward transients and a dequantized weight, whichever is larger);
* ``backward`` — the first backward node (log_softmax): the activations and two fp32 logits gradients (the
  head's gradient comes after these are freed, in ``lm_head``'s backward: see ``backward (layers)``);
* ``backward (layers)`` — through the decoder layers, the larger of two moments: the first layer's backward
  (all layer activations still saved, the head's and one layer's gradients, one layer's working set and, with
  checkpointing, its recompute) and the last (the first layer's activations, every gradient);
* ``optimizer`` — ``optimizer.step()``: gradients, states and the step's temporaries (activations are gone).

Two terms are alive in every phase: logits a training loop keeps (LitGPT's ``logits`` list, ``logits.py``) and
an offloader's persistent staging buffers (Unsloth's, ``activations.py``). With ``--act-offload`` the layer
activations on the GPU are what the offloader leaves there (``ActTerms.layer_acts`` in forward and at the
loss's backward, ``bwd_layer_acts`` at the last layer's backward, ``stash`` while a layer runs forward). With the
optimizer step in backward (``--optim-in-bwd``, :func:`optimizer_in_backward`) one parameter's gradient at a time
is alive and the step's temporaries move into ``backward (layers)``.

Every term is allocator-rounded bytes; :class:`StateTerms` holds those fixed by the structure,
:class:`ActTerms` those that depend on batch and sequence length (``activations.py`` computes them).
"""

from __future__ import annotations

from typing import NamedTuple

#: the phases :func:`phase_peaks` returns, in order
PHASES = ("forward", "backward", "backward (layers)", "optimizer")


class StateTerms(NamedTuple):
    """Bytes fixed by the structure (model states, buffers), any batch and sequence length."""

    base: int              # weights + optimizer states in the allocator + cuBLAS workspace
    casts: int             # autocast's 16-bit copies of fp32 trainable weights, held through forward
    casts_backward: int    # the copies held at the start of backward (only the head's with checkpointing)
    casts_layer: int       # one decoder layer's copies
    grad_head: int         # the output head's gradient, the first one backward produces
    grad_layers: int       # every other gradient
    grads_step: int        # the gradients left at optimizer.step() (sharded strategies keep less)
    opt_tmp: int           # optimizer.step() temporaries
    buffers: tuple[int, int, int, int]   # per phase of PHASES: multi-GPU buffers (DDP buckets, gathers, ...)
    num_layers: int
    grad_ckpt: bool
    step_in_bwd: int = 0   # optimizer in backward: one parameter's step temporaries, during backward (layers)


class ActTerms(NamedTuple):
    """Activation bytes at one (batch, seq)."""

    layer_acts: int        # what the decoder layers save (their inputs only, with checkpointing)
    head_saved: int        # final norm and lm_head saves
    logits_saved: int      # the loss's saved tensors (log-probs, ...)
    loss_fwd_tmp: int
    loss_bwd_tmp: int
    fwd_tmp: int           # the largest set of one layer's short-lived forward tensors
    dequant: int           # the largest dequantized weight (4/8-bit layers)
    bwd_ws: int            # one op's backward working set (+ a dequantized weight)
    recompute: int         # the recomputed layer's saves, less its checkpointed input (checkpointing only)
    resid: int             # one layer input (the residual stream at these tokens)
    first_layer_acts: int  # what layer 0 saves (freed last)
    kept: int = 0          # logits the loop keeps alive in every phase (LitGPT)
    stash: int = 0         # offloading: tensors kept on the GPU while a layer runs forward (copy in flight)
    bwd_layer_acts: int = 0  # the layer activations on the GPU at the last layer's backward (= layer_acts unless offloaded)
    buffers: int = 0       # offloading: persistent device staging buffers (alive in every phase)
    offloaded: int = 0     # offloading: bytes of activations moved to CPU memory (not on the GPU)
    vision: int = 0        # a multimodal step's vision tower and projector saves: made first, freed last (vision.py)


def phase_peaks(s: StateTerms, a: ActTerms) -> tuple[int, int, int, int, bool]:
    """Allocated bytes of each phase of :data:`PHASES`, and whether the ``backward (layers)`` peak is its
    first moment (the first layer's backward, all activations still saved) rather than its last."""
    (base, casts, casts_bwd, casts_layer, grad_head, grad_layers, grads_step, opt_tmp, buf, n_layers, ckpt,
     step) = s
    (layer_acts, head_saved, logits_saved, loss_fwd_tmp, loss_bwd_tmp, fwd_tmp, dequant, bwd_ws, recompute,
     resid, first_layer_acts, kept, stash, bwd_layer_acts, buffers, _, vision) = a
    # the vision saves are made before the first decoder layer runs and freed after the last one's backward
    acts_total = layer_acts + head_saved + logits_saved + vision
    live = kept + buffers
    tmp = fwd_tmp + dequant + stash
    forward = base + casts + acts_total + live + (loss_fwd_tmp if loss_fwd_tmp > tmp else tmp) + buf[0]
    backward = base + casts_bwd + acts_total + live + loss_bwd_tmp + buf[1]
    if ckpt:
        first = (casts_bwd + casts_layer + bwd_layer_acts + head_saved + grad_head + recompute + fwd_tmp + bwd_ws
                 + grad_layers // (n_layers or 1) + step)
        # the autocast weight copies are freed layer by layer with the activations that saved them
        last = resid + recompute + grad_head + grad_layers + bwd_ws + casts_layer + step
    else:
        first = casts_bwd + bwd_layer_acts + head_saved + grad_head + bwd_ws + grad_layers // (n_layers or 1) + step
        last = first_layer_acts + recompute + grad_head + grad_layers + bwd_ws + casts_layer + step
    at_start = first >= last
    layers = base + live + vision + (first if at_start else last) + buf[2]
    return forward, backward, layers, base + live + grads_step + opt_tmp + buf[3], at_start


def optimizer_in_backward(s: StateTerms, grad_one: int, step_one: int) -> StateTerms:
    """The fixed terms with the optimizer step in backward (torchtune ``optimizer_in_bwd``): each parameter's
    step runs in its post-accumulate-grad hook and its gradient is freed there (torchtune 0.6.1
    ``training/memory.py:219-242 register_optim_in_bwd_hooks``: ``step()`` then ``zero_grad()``, one optimizer per
    parameter, ``recipes/full_finetune_single_device.py:468-478``; torch ``Tensor.register_post_accumulate_grad_hook``).
    Autograd runs ``AccumulateGrad`` as soon as it is ready (it has the highest sequence number), so one gradient
    — at most ``grad_one``, the largest — is alive at a time in ``backward (layers)``, with one parameter's step
    temporaries ``step_one``; ``optimizer.step()`` has nothing left to do."""
    return s._replace(grad_head=grad_one, grad_layers=0, grads_step=0, opt_tmp=0, step_in_bwd=step_one)


def peak_of(peaks: tuple[int, int, int, int, bool]) -> tuple[int, str]:
    """The largest phase of :func:`phase_peaks` (the earliest on a tie) and its name."""
    f, b, lay, o, _ = peaks
    peak, phase = f, "forward"
    if b > peak:
        peak, phase = b, "backward"
    if lay > peak:
        peak, phase = lay, "backward (layers)"
    if o > peak:
        peak, phase = o, "optimizer"
    return peak, phase
