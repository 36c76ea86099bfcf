"""The static structure of a model under a setup: placements, LoRA plan, one traced program per distinct layer.

Everything here is independent of batch and sequence length and cached per (spec object, structural setup):
:func:`static_structure` places the weights (``weights.py``), plans LoRA (``lora.py``), builds the layer facts
and replays each distinct layer's forward on the symbolic tracer (``layers.py`` on ``graph.py``) into a
:class:`LayerTrace`, reusable at any batch and sequence length. A layer layout the replay does not know falls
back to coefficients calibrated by simulation (``simulate/calibrate.py``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from functools import cached_property

from ..dtypes import BYTES, alloc, alloc_sum
from ..hooks import layer_calibrator
from ..lora import LoraConfig, LoraPlan, plan_lora
from ..memo import IdCache
from ..setup import Setup
from ..shapes.spec import ModelSpec
from ..stacks import STACKS
from .graph import Size, Storage, Tracer, prune, tok
from .layers import LayerInfo, Program, UnknownLayout, build_layers
from .seq2seq import Seq2SeqTrace, is_seq2seq, seq2seq_trace
from .vision import VisionTrace, image_features_require_grad, vision_trace
from .weights import (
    Placement,
    TrainableTensor,
    adapter_tensors,
    frozen_vision_roles,
    place_weights,
    stable_embedding,
    stable_embedding_tensors,
    trainable_tensors,
)

#: the program section that saved a storage -> its component
CATEGORY = {"attention": "activations/attention", "mlp": "activations/mlp", "norms": "activations/norms",
            "lora_inputs": "activations/lora_inputs", "other": "activations/other"}


# ------------------------------------------------------------------------------------------ layer traces
@dataclass(frozen=True)
class LayerTrace:
    """One traced layer, reusable at any batch and sequence length."""

    saved: tuple[Storage, ...]                  # saved storages, including the layer input when saved
    input_saved: bool                           # the layer input is among ``saved``
    fwd_transients: tuple[tuple[Size, str], ...]
    bwd_candidates: tuple[tuple[Size, str], ...]
    constants: tuple[tuple[str, int], ...]      # dequantization buffers etc. (bytes, size-independent)
    out_dtype: str
    bwd_constants: tuple[tuple[str, int], ...] = ()   # backward's where larger (a 4-bit weight's grad_input copies)

    @cached_property
    def saved_terms(self) -> tuple[tuple[int, int, int], ...]:
        """Per saved storage: its bytes as (const, per token, per batch·seq²)."""
        out = []
        for st in self.saved:
            k = BYTES[st.dtype]
            out.append((st.size.const * k, st.size.per_token * k, st.size.per_bss * k))
        return tuple(out)

    @cached_property
    def _categories(self) -> tuple[str, ...]:
        return tuple(CATEGORY.get(st.category, "activations/other") for st in self.saved)

    def saved_at(self, tokens: int, bss: int) -> int:
        """Distinct saved storages, each rounded to the allocator's 512-B blocks."""
        return alloc_sum(self.saved_terms, tokens, bss)

    def by_category(self, tokens: int, bss: int) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (c, a, q), cat in zip(self.saved_terms, self._categories, strict=True):
            out[cat] += alloc(c + a * tokens + q * bss)
        return out

    @cached_property
    def max_constant(self) -> int:
        """The largest size-independent forward transient (a dequantized weight)."""
        return max((b for _, b in self.constants), default=0)

    @cached_property
    def max_bwd_constant(self) -> int:
        """The largest size-independent backward transient: the forward's, or a larger backward dequantization."""
        return max([self.max_constant, *(b for _, b in self.bwd_constants)])


def _layer_key(layer: LayerInfo) -> tuple:
    return layer.key()


def trace_layer(program: Program, layer: LayerInfo, resid_dtype: str, input_rg: bool = True) -> LayerTrace:
    """Trace one layer. ``input_rg=False`` for the first layer when the embedding output needs no gradient
    (frozen embeddings without adapters): its first norm then saves nothing."""
    tr = Tracer(program.setup.compute_dtype if program.setup.autocast else None)
    x = tr.external("layer input (residual stream)", tok(program.spec.hidden_size), resid_dtype, input_rg)
    out = program.layer(tr, x, layer)
    saved = tuple(tr.saved_storages())
    return LayerTrace(
        saved=saved,
        input_saved=any(s is x.storage for s in saved),
        fwd_transients=tuple(prune(tr.transient_candidates(keep=(out.storage,)))),
        bwd_candidates=tuple(prune(tr.backward_candidates())),
        constants=tuple(tr.constants),
        out_dtype=out.dtype,
        bwd_constants=tuple(tr.bwd_constants),
    )


# ------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Structure:
    """Everything that does not depend on batch and sequence length (cached per spec and setup)."""

    plan: LoraPlan | None
    placements: tuple[Placement, ...]
    adapters: tuple[TrainableTensor, ...]
    trainables: tuple[TrainableTensor, ...]
    layer_traces: tuple[LayerTrace, ...]        # one per layer (shared objects for identical layers)
    resid_dtype: str
    head: LayerTrace                            # final norm (+ lm_head weight cast)
    logits_dtype: str
    params_trainable: int = 0                  # PEFT's counts (LoraPlan sums them on every access)
    params_total: int = 0
    vision: VisionTrace | None = None           # a multimodal checkpoint's tower and projector replay (vision.py)
    seq2seq: Seq2SeqTrace | None = None         # an encoder-decoder model's encoder/decoder parts (seq2seq.py)


def _resid_dtype(spec: ModelSpec, placements: list[Placement], setup: Setup) -> str:
    """dtype of the residual stream = the embedding's dtype (fp32 after kbit prep or as a fp32 master)."""
    for p in placements:
        if p.tensor.role == "embedding":
            return p.dtype
    return setup.compute_dtype


_STATIC_CACHE = IdCache(512)
_LORA_PLANS = IdCache(256)
_LAYERS = IdCache(256)
_PLACEMENTS = IdCache(256)


def static_structure(spec: ModelSpec, setup: Setup) -> Structure:
    """Cached per (spec object, structural setup)."""
    return _STATIC_CACHE.get((spec,), (setup,), lambda: _buildstatic_structure(spec, setup))


def _lora_plan(spec: ModelSpec, config: LoraConfig, frozen: tuple[str, ...] = ()) -> LoraPlan:
    """``plan_lora`` depends on the spec, the LoRA config and the frozen vision parts only: shared by every
    precision, attention kernel, optimizer and checkpointing choice of a sweep."""
    return _LORA_PLANS.get((spec,), (config, frozen), lambda: plan_lora(spec, config, frozen))


def _layers(spec: ModelSpec, placements: tuple[Placement, ...], plan: LoraPlan | None,
            setup: Setup) -> list[LayerInfo]:
    """``build_layers`` reads the placements, the LoRA plan and the adapters' dtype (``setup.mixed``): shared by
    the attention kernels, optimizers and checkpointing choices of a sweep (read-only)."""
    return _LAYERS.get((placements, plan), (setup.mixed, setup.trainable_dtype, setup.adapter_weight_dtype),
                       lambda: build_layers(spec, list(placements), plan, setup))


def _placements(spec: ModelSpec, setup: Setup) -> tuple[Placement, ...]:
    """``place_weights`` depends on the method, quantization and precision only: shared by every LoRA rank,
    target set and attention kernel of a sweep (read-only)."""
    # the stack decides which library stores the nf4 weights (weights.nf4_kernel)
    return _PLACEMENTS.get((spec,), (setup.stack, setup.method, setup.quant, setup.double_quant, setup.quant_blocksize,
                                     setup.precision, setup.kbit_prep, setup.training, setup.quant_bits,
                                     setup.quant_group, setup.quant_skip, setup.quant_head, setup.frozen_dtype,
                                     setup.train_vision, setup.fp32_norms_embeddings),
                           lambda: tuple(place_weights(spec, setup)))


def _buildstatic_structure(spec: ModelSpec, setup: Setup) -> Structure:
    plan = _lora_plan(spec, setup.lora, frozen_vision_roles(setup) if spec.is_multimodal else ()) \
        if setup.method in ("lora", "qlora") and setup.lora is not None else None
    placements = _placements(spec, setup)
    adapters = adapter_tensors(plan, placements, setup)
    trainables = trainable_tensors(placements, adapters, plan) + stable_embedding_tensors(placements, setup)
    resid = _resid_dtype(spec, placements, setup)
    if is_seq2seq(spec):      # T5 / BART: encoder and decoder parts at source and target lengths (seq2seq.py)
        return _seq2seq_structure(spec, setup, plan, placements, adapters, trainables, resid)
    program = Program(spec, setup)
    layers = _layers(spec, placements, plan, setup)
    cache: dict[tuple, LayerTrace] = {}
    traces = []
    embed_rg = _embedding_output_requires_grad(spec, setup, plan, placements)
    text_rg = embed_rg
    # image features that need a gradient make layer 0's input need one (masked_scatter's source)
    if setup.image_tokens and image_features_require_grad(spec, setup, placements, plan):
        embed_rg = True
    for layer in layers:
        input_rg = embed_rg or layer.index > 0
        key = (_layer_key(layer), input_rg)
        if key not in cache:
            try:
                cache[key] = trace_layer(program, layer, resid, input_rg)
            except UnknownLayout as exc:
                # a layer layout the replay does not know (an unknown family): use coefficients calibrated by
                # simulating 1 and 2 layers of the real model on meta tensors (vramplan/simulate/calibrate.py)
                cache[key] = _calibrated_trace(spec, setup, resid, exc)
        traces.append(cache[key])
    head = _trace_head(spec, setup, placements, program, resid, plan)
    logits_dtype = "fp32" if STACKS[setup.stack].fp32_model_output else \
        setup.compute_dtype if setup.autocast else _head_dtype(spec, placements, resid)
    trainable = plan.trainable if plan is not None else \
        (sum(p.numel for p in placements if p.trainable) if setup.method == "full" else 0)
    total = plan.total if plan is not None else spec.params_total
    vision = vision_trace(spec, setup, placements, plan, text_rg) if spec.is_multimodal else None
    return Structure(plan, tuple(placements), tuple(adapters), tuple(trainables), tuple(traces), resid, head,
                   logits_dtype, trainable, total, vision)


def _seq2seq_structure(spec: ModelSpec, setup: Setup, plan: LoraPlan | None, placements: tuple[Placement, ...],
                       adapters: list, trainables: list, resid: str) -> Structure:
    logits_dtype = setup.compute_dtype if setup.autocast else _head_dtype(spec, list(placements), resid)
    s2s, tr, x = seq2seq_trace(spec, setup, placements, plan, resid, logits_dtype)
    saved = tuple(tr.saved_storages())
    head = LayerTrace(saved, any(s is x.storage for s in saved), tuple(prune(tr.transient_candidates())), (),
                      tuple(tr.constants), resid, tuple(tr.bwd_constants))
    trainable = plan.trainable if plan is not None else \
        (sum(p.numel for p in placements if p.trainable) if setup.method == "full" else 0)
    return Structure(plan, tuple(placements), tuple(adapters), tuple(trainables), (), resid, head, logits_dtype,
                     trainable, plan.total if plan is not None else spec.params_total, None, s2s)


def _calibrated_trace(spec: ModelSpec, setup: Setup, resid: str, cause: BaseException) -> LayerTrace:
    """A layer trace from the simulation's calibration: one storage of ``const + a·T + b·bss`` bytes."""
    from ..errors import SimulationError

    calibrate = layer_calibrator()
    try:
        if calibrate is None:
            raise SimulationError("no layer calibrator is registered (vramplan.hooks)")
        cal = calibrate(spec, setup.with_(batch=1, seq=max(1, setup.seq)))
    except (SimulationError, ImportError) as exc:
        raise SimulationError(
            f"{spec.name}: model_type {spec.model_type!r} has a layer layout the analytic replay does not know "
            f"({type(cause).__name__}: {cause}) and it cannot be simulated either: {exc}") from None
    st = Storage(Size(cal.const_bytes, cal.per_token_bytes, cal.per_bss_bytes), "uint8",
                 "layer activations (calibrated by simulation)",
                 [f"calibrated from 1- and 2-layer simulations (key {cal.key})"], "other")
    return LayerTrace((st,), False, (), (), (), resid)


def _embedding_output_requires_grad(spec: ModelSpec, setup: Setup, plan: LoraPlan | None,
                                    placements: list[Placement]) -> bool:
    """Whether the residual stream entering layer 0 requires grad: a trainable (full) or adapted embedding,
    or one in modules_to_save. Learned position embeddings count too."""
    if setup.method == "full":
        return True
    if setup.quantized and setup.kbit_prep and setup.grad_ckpt:
        # prepare_model_for_kbit_training(use_gradient_checkpointing=True) calls enable_input_require_grads()
        # (peft/utils/other.py, for reentrant checkpointing)
        return True
    if setup.method in ("lora", "qlora") and STACKS[setup.stack].input_requires_grad:
        return True         # its loader calls enable_input_require_grads() (axolotl)
    if stable_embedding(setup):
        return True         # LitGPT QLoRA's StableEmbedding trains (litgpt 0.5.13 finetune/lora.py:217-230)
    if plan is None:
        return False
    emb = {p.tensor.module for p in placements if p.tensor.role in ("embedding", "position_embedding")}
    return any(a.module in emb for a in plan.adapters) or any(sv.module in emb for sv in plan.saved)


def _head_dtype(spec: ModelSpec, placements: list[Placement], resid: str) -> str:
    for p in placements:
        if p.tensor.role == "lm_head":
            return p.dtype if p.quant == "none" else resid
    for p in placements:
        if p.tensor.role == "embedding":
            return p.dtype
    return resid


def _trace_head(spec: ModelSpec, setup: Setup, placements: list[Placement], program: Program,
                resid: str, plan: LoraPlan | None = None) -> LayerTrace:
    """Final norm and the lm_head matmul input/weight saves (logits and loss are handled separately)."""
    from .layers import Lin, Norm

    tr = Tracer(setup.compute_dtype if setup.autocast else None)
    x = tr.external("final hidden states", tok(spec.hidden_size), resid, True)
    fn = None
    for p in placements:
        t = p.tensor
        if t.layer is None and t.role == "norm" and t.param_name == "weight":
            fn = Norm(t.module, t.shape[0], p.dtype, p.trainable)
    h = program.norm(tr, x, fn, "final norm") if fn is not None else x
    head = next((p for p in placements if p.tensor.role == "lm_head"), None)
    if head is None:      # tied: the embedding matrix is the head
        head = next(p for p in placements if p.tensor.role == "embedding")
    lin = Lin("lm_head", spec.hidden_size, spec.vocab_size, head.dtype, head.trainable)
    a = next((a for a in plan.adapters if a.module == head.tensor.module and a.parameter is None and not a.frozen),
             None) if plan is not None else None
    if a is not None:       # LoRA on the head (PEFT target "lm_head", LitGPT lora_head): its branch saves too
        lin.lora_r, lin.lora_dtype = a.rank, setup.adapter_weight_dtype
        lin.dropout, lin.dora = plan.config.dropout, plan.config.dora
    with tr.in_section("other"):
        program.linear(tr, h, lin)
    saved = tuple(tr.saved_storages())
    return LayerTrace(saved, any(s is x.storage for s in saved), tuple(prune(tr.transient_candidates())),
                      (), tuple(tr.constants), resid, tuple(tr.bwd_constants))


_LAYOUT: dict[Setup, Setup] = {}


def layout_setup(setup: Setup) -> Setup:
    """The part of a structural setup that decides placements and layer traces: the optimizer, the loss and the
    multi-GPU options do not (they only change :class:`ModelStates` and the timeline)."""
    if (setup.optim, setup.loss, setup.gpus, setup.strategy, setup.offload) == ("adamw", "standard", 1, "ddp", "none"):
        return setup
    hit = _LAYOUT.get(setup)
    if hit is None:
        if len(_LAYOUT) > 65536:
            _LAYOUT.clear()
        hit = _LAYOUT[setup] = replace(setup, optim="adamw", loss="standard", gpus=1, strategy="ddp", offload="none")
    return hit


_STRUCTURAL: dict[Setup, Setup] = {}


def structural_setup(setup: Setup) -> Setup:
    """The setup with batch and sequence normalized: the cache key of :func:`static_structure` (memoized: sweeps ask
    for the same few thousand setups again and again)."""
    hit = _STRUCTURAL.get(setup)
    if hit is None:
        if len(_STRUCTURAL) > 65536:
            _STRUCTURAL.clear()
        # --image-tokens: only whether there are any is structural (layer 0's input may then need a gradient)
        # --prompt-tokens is evaluated with batch and seq (LayerActivations.at), never structural
        hit = setup if (setup.batch, setup.seq, setup.image_tokens, setup.prompt_tokens) in ((1, 1, 0, 0), (1, 1, 1, 0)) \
            else replace(setup, batch=1, seq=1, new_tokens=0, image_tokens=min(setup.image_tokens, 1), prompt_tokens=0)
        _STRUCTURAL[setup] = hit
    return hit


def clear_caches() -> None:
    """Forget every cached structure (tests and benchmarks that time a cold start)."""
    for c in (_STATIC_CACHE, _LORA_PLANS, _LAYERS, _PLACEMENTS):
        c.clear()
    _LAYOUT.clear()
    _STRUCTURAL.clear()
