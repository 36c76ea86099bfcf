"""The model states of a structure: weights, adapters, gradients, optimizer states, autocast weight copies and,
on several GPUs, one rank's share (``distributed.py``) — in bytes with their formulas, cached per structural
setup. :func:`model_states` is what the estimator, the sweep's evaluator and the simulation's comparison read.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..dtypes import BYTES, alloc
from ..memo import IdCache
from ..setup import Setup
from ..shapes.spec import ModelSpec
from ..stacks import STACKS
from . import overhead
from .activations import LayerActivations
from .optimizer import optimizer_states, optimizer_step_transient
from .structure import Structure, layout_setup, static_structure, structural_setup
from .structure import clear_caches as _clear_structures
from .timeline import PHASES, StateTerms

if TYPE_CHECKING:
    from .distributed import RankStates
from .weights import (
    Placement,
    adapter_formula,
    gradient_bytes,
    head_component,
    stepped,
    unstepped_gradient_bytes,
    weight_formula,
)


@dataclass(frozen=True)
class ModelStates:
    """Model-state totals and formulas that depend on the structure only (cached beside :class:`Structure`)."""

    weight_comps: tuple[tuple[str, int, str], ...]
    static_weights: int
    grads: int
    grad_head: int
    opt_gpu: int
    opt_paged: int
    opt_formula: str
    opt_tmp: int
    trainable_numel: int
    casts: int
    casts_head: int                   # the part of ``casts`` that is the output head's copy
    casts_backward: int               # the copies held at the start of backward (autograd saved them)
    casts_layer: int                  # one decoder layer's copies
    rank: RankStates | None                     # one rank's share on several GPUs / a sharding engine
    structure: Structure                        # the layout placed on the GPU (weights, LoRA plan, counts)
    compute: Structure                          # the layout whose layer traces give the activations
    timeline: StateTerms | None = None          # training only: the fixed terms of phase_peaks
    activations: LayerActivations | None = None  # training only: the activation terms at any (batch, seq)


_STATES_CACHE = IdCache(512)
_WEIGHT_COMPS = IdCache(256)


def _states_of(spec: ModelSpec, st: Structure, setup: Setup) -> ModelStates:
    return _STATES_CACHE.get((spec,), (setup,), lambda: _build_states(spec, st, setup))


def model_states(spec: ModelSpec, setup: Setup) -> ModelStates:
    """The model states :func:`estimate` prices for ``setup`` (any batch and sequence length): weights,
    gradients, optimizer states and autocast weight copies, in bytes, with the layout whose layer traces give
    the activations (``.compute``). What the simulation's comparison reads (``simulate/compare.py``)."""
    spec.require_plannable(setup.training)
    ss = structural_setup(setup)
    return _states_of(spec, static_structure(spec, layout_setup(ss)), ss)


def _base_weight_comps(st: Structure, setup: Setup) -> tuple[tuple[str, int, str], ...]:
    """``weights/*`` components (bytes and formulas) of a placement list, shared across setups that place the
    weights identically (the placements tuple is shared through :func:`_placements`)."""
    return _WEIGHT_COMPS.get((st.placements,), (setup.quant, setup.double_quant, setup.quant_blocksize),
                             lambda: _build_weight_comps(st, setup))


def _build_weight_comps(st: Structure, setup: Setup) -> tuple[tuple[str, int, str], ...]:
    wsum: dict[str, int] = defaultdict(int)
    by_comp: dict[str, dict[int, Placement]] = defaultdict(dict)
    for p in st.placements:
        for comp, nb in p.parts:
            wsum[comp] += alloc(nb)
            by_comp[comp][id(p)] = p
    return tuple((comp, nb, weight_formula(comp, list(by_comp[comp].values()), setup))
                 for comp, nb in sorted(wsum.items()) if nb)


#: torchtune 0.6.1 rope classes whose cache is cat([cos, sin]) of cat([theta, theta]), (max_seq_len, 2 x head_dim)
#: (models/qwen2/_positional_embeddings.py:51-66, models/phi3/_position_embeddings.py); the others stack cos and
#: sin of (max_seq_len, head_dim // 2): (max_seq_len, head_dim // 2, 2)
_ROPE_DOUBLED = ("qwen2", "phi3")


def rope_cache_item(spec: ModelSpec, setup: Setup) -> tuple[str, int, str] | None:
    """The resident rotary cos/sin buffer of a stack whose builders make one (``Stack.rope_cache``), or ``None``."""
    if not STACKS[setup.stack].rope_cache or any(t.role == "position_embedding" for t in spec.tensors):
        return None
    width = spec.head_dim * (2 if spec.model_type in _ROPE_DOUBLED else 1)
    n = spec.max_position_embeddings * width * 4
    return ("buffers/rope_cache", alloc(n),
            f"the rotary cos/sin table its builder registers at init: max_seq_len {spec.max_position_embeddings:,} x "
            f"{width} x 4 B (fp32 whatever the dtype), one per model (torchtune 0.6.1 modules/position_embeddings.py"
            ":46-67, models/llama3_1/_position_embeddings.py:62-101)")


def _unstepped_formula(st: Structure) -> str:
    ts = [t for t in st.trainables if not t.in_optimizer]
    return (f"{sum(t.numel for t in ts):,} elements in {', '.join(sorted({t.dtype for t in ts}))} ({len(ts)} tensors): "
            "the gradients of parameters that require grad but are not in the optimizer (LitGPT QLoRA's "
            "StableEmbedding weight and LayerNorm, swapped in after the optimizer is built: never stepped, never "
            "zeroed, so alive from the first backward on; litgpt 0.5.13 finetune/lora.py:217-230)")


def _build_states(spec: ModelSpec, st: Structure, setup: Setup) -> ModelStates:
    comps: list[tuple[str, int, str]] = list(_base_weight_comps(st, setup))
    asum: dict[str, int] = defaultdict(int)
    for t in st.adapters:
        asum[t.component] += alloc(t.numel * BYTES[t.dtype])
    for comp, nb in sorted(asum.items()):
        if nb:
            comps.append((comp, nb, adapter_formula(comp, st.adapters, st.plan)))
    rope = rope_cache_item(spec, setup)
    if rope is not None:
        comps.append(rope)
    if setup.training and setup.quant in ("gptq", "awq"):   # a trainable kernel's own buffers (card-independent)
        from .quant_kernels import plan_kernel

        km = plan_kernel(spec, setup, st, None)
        if km is not None and km.persistent:
            comps.append(("buffers/quant_kernel_workspace", km.persistent, km.persistent_formula))
    unstepped = unstepped_gradient_bytes(st.trainables)
    if unstepped:          # alive in every phase from the first backward on: with the weights
        comps.append(("gradients/not_in_optimizer", unstepped, _unstepped_formula(st)))
    grads = gradient_bytes(st.trainables)
    # the head's gradient is the first one backward produces (full fine-tuning: the head is trainable)
    grad_head = gradient_bytes(st.trainables, component=head_component(st.trainables)) \
        if setup.method == "full" else 0
    opt_gpu, opt_paged, opt_formula = optimizer_states(st.trainables, setup)
    opt_tmp = optimizer_step_transient(st.trainables, setup)
    trainable_numel = sum(t.numel for t in stepped(st.trainables))

    # ---- autocast weight copies (fp32 trainable weights under autocast: cached bf16 copies, saved)
    casts = 0
    if setup.autocast and setup.method == "full":
        # F.linear / Conv1D addmm / the MoE router's F.linear are autocast ops; the fused experts' _grouped_mm
        # is not (transformers integrations/moe.py), so expert stacks get no copy
        # (a weight already in the compute dtype — --fp32-norms-embeddings' Linears — is used as it is)
        # TRL's fused head casts the head weight one vocabulary tile at a time inside ChunkedLogProbFunction and
        # saves the fp32 weight itself (trl 1.16.0 kernels/chunked_logprob.py:354-356, :386): no cached copy (its
        # tile casts are the loss's transients, logits.py); measured (tests/estimate/test_stack_full_ft_cpu.py)
        fused_head = setup.loss == "trl-fused"
        casts = sum(alloc(p.numel * 2) for p in st.placements
                    if p.trainable and p.tensor.param_name != "bias" and p.dtype == "fp32"
                    and (p.tensor.module_type in ("linear", "conv1d") or p.tensor.role == "moe_router")
                    and not (fused_head and p.tensor.role == "lm_head"))
        fp32 = {p.tensor.name for p in st.placements if p.dtype == "fp32"}
        head = [] if fused_head else [t for t in spec.tensors if t.role == "lm_head" and t.param_name == "weight"
                                      and (t.tied_to or t.name) in fp32]
        for t in head:           # a tied head is cast as the head weight
            if t.tied_to is not None:
                casts += alloc(t.numel * 2)
    casts_head = 0
    if casts:
        casts_head = sum(alloc(t.numel * 2) for t in head)
    # autocast's cast cache is cleared when the forward (under autocast) ends; checkpointed layers saved no copy,
    # so in backward only the head's copy lives on, plus the copies a recomputed layer makes
    if setup.grad_ckpt and casts:
        casts_bwd, casts_layer = casts_head, (casts - casts_head) // max(spec.num_layers, 1)
    else:
        casts_bwd, casts_layer = casts, (casts - casts_head) // max(spec.num_layers, 1)

    # ---- multi-GPU: one rank's weights, gradients, optimizer states and buffers (distributed.py)
    rank = None
    if setup.distributed:       # imported only then: a single-GPU plan does not load the per-rank model
        from .distributed import rank_states

        rank = rank_states(spec, setup, st)
    sa = st                          # the layout whose layer traces give the activations
    if rank is not None:
        comps = [c for c in comps if not c[0].startswith(("weights/", "adapters/"))]
        merged: dict[str, list] = {}
        for name, nb, formula in rank.weights:
            if nb:
                if name in merged:
                    merged[name][0] += nb
                else:
                    merged[name] = [nb, formula]
        comps += [(k, v[0], v[1]) for k, v in merged.items()]
        grads, grad_head = rank.grads, rank.grad_head
        opt_gpu, opt_paged, opt_formula, opt_tmp = rank.opt_gpu, rank.opt_paged, rank.opt_formula, rank.opt_tmp
        if setup.strategy != "ddp":   # FSDP gathers / DeepSpeed casts to 16-bit: no copies
            casts = casts_head = casts_bwd = casts_layer = 0
        sa = rank.compute
    static_weights = sum(c[1] for c in comps)
    timeline = acts = None
    if setup.training:
        buffers = tuple(rank.buffer_bytes(p) for p in PHASES) if rank is not None else (0, 0, 0, 0)
        timeline = StateTerms(static_weights + opt_gpu + overhead.CUBLAS_WORKSPACE_BYTES, casts, casts_bwd,
                              casts_layer, grad_head, grads - grad_head, rank.grads_step if rank is not None else grads,
                              opt_tmp, buffers, spec.num_layers, setup.grad_ckpt)
        acts = LayerActivations(spec, setup, sa)
    return ModelStates(tuple(comps), static_weights, grads, grad_head, opt_gpu, opt_paged, opt_formula, opt_tmp,
                       trainable_numel, casts, casts_head, casts_bwd, casts_layer, rank, st, sa, timeline, acts)


def clear_caches() -> None:
    """Forget every cached structure and model state (tests and benchmarks that time a cold start)."""
    _clear_structures()
    _STATES_CACHE.clear()
    _WEIGHT_COMPS.clear()
