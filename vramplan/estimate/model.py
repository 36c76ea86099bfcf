"""The analytic estimator: every byte of one training (or inference) step, and which counter shows it.

``estimate(spec, setup)`` assembles, in this order:

1. weights and adapters (``weights.py``), gradients and optimizer states (``optimizer.py``);
2. per-layer saved activations and transients, from a symbolic replay of the layer's forward
   (``layers.py`` on ``graph.py``), traced once per distinct layer and cached, so that sweeps are cheap;
3. the head: final norm, ``lm_head``, logits and the loss (transformers ``loss/loss_utils.py::ForCausalLMLoss``);
4. the step's timeline — load, forward, loss, backward (start, through the layers, end), optimizer step — and
   the phase where the allocated total peaks;
5. the three counters: ``peak_allocated_bytes`` (``torch.cuda.max_memory_allocated``),
   ``peak_reserved_bytes`` (``max_memory_reserved``), ``device_used_bytes`` (NVML / nvidia-smi).

No I/O and no printing here; renderers read the :class:`~vramplan.estimate.result.Estimate`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache

from ..dtypes import BYTES, PAGED_MIN_NUMEL, adam8bit_state_parts, alloc, alloc_sum
from ..lora import PEFT_TABLE_VERSION, LoraConfig, LoraPlan, plan_lora
from ..memo import IdCache
from ..setup import Setup
from ..shapes.spec import ModelSpec
from ..units import GiB, ceil_div
from . import distributed, overhead
from .activations import LayerActivations
from .graph import Size, Storage, Tracer, prune, tok
from .inference import inference_bytes
from .layers import LayerInfo, Program, build_layers
from .logits import loss_formula
from .result import BreakdownError, Component, Estimate
from .timeline import PHASES, ActTerms, StateTerms, peak_of, phase_peaks
from .weights import Placement, TrainableTensor, adapter_tensors, place_weights, trainable_tensors

CATEGORY = {"attention": "activations/attention", "mlp": "activations/mlp", "norms": "activations/norms",
            "lora_inputs": "activations/lora_inputs", "other": "activations/other"}


def _fmt(n: int) -> str:
    return f"{n:,} B ({n / GiB:.3f} GiB)"


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
        return max((b for _, b in self.constants), default=0)


def _layer_key(L: LayerInfo) -> tuple:
    return L.key()


def trace_layer(program: Program, L: LayerInfo, resid_dtype: str, input_rg: bool = True) -> LayerTrace:
    """Trace one layer. ``input_rg=False`` for the first layer when the embedding output needs no gradient
    (frozen embeddings without adapters): its first norm then saves nothing."""
    tr = Tracer(program.setup.compute_dtype if program.setup.autocast else None)
    x = tr.external("layer input (residual stream)", tok(program.spec.hidden_size), resid_dtype, input_rg)
    out = program.layer(tr, x, L)
    saved = tuple(tr.saved_storages())
    return LayerTrace(
        saved=saved,
        input_saved=any(s is x.storage for s in saved),
        fwd_transients=tuple(prune(tr.transient_candidates(keep=(out.storage,)))),
        bwd_candidates=tuple(prune(tr.backward_candidates())),
        constants=tuple(tr.constants),
        out_dtype=out.dtype,
    )


# ------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class _Static:
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


def _static(spec: ModelSpec, setup: Setup) -> _Static:
    """Cached per (spec object, structural setup)."""
    return _STATIC_CACHE.get((spec,), (setup,), lambda: _build_static(spec, setup))


def _lora_plan(spec: ModelSpec, config: LoraConfig) -> LoraPlan:
    """``plan_lora`` depends on the spec and the LoRA config only: shared by every precision, attention kernel,
    optimizer and checkpointing choice of a sweep."""
    return _LORA_PLANS.get((spec,), (config,), lambda: plan_lora(spec, config))


def _layers(spec: ModelSpec, placements: tuple[Placement, ...], plan: LoraPlan | None,
            setup: Setup) -> list[LayerInfo]:
    """``build_layers`` reads the placements, the LoRA plan and the adapters' dtype (``setup.mixed``): shared by
    the attention kernels, optimizers and checkpointing choices of a sweep (read-only)."""
    return _LAYERS.get((placements, plan), (setup.mixed, setup.trainable_dtype),
                       lambda: build_layers(spec, list(placements), plan, setup))


def _placements(spec: ModelSpec, setup: Setup) -> tuple[Placement, ...]:
    """``place_weights`` depends on the method, quantization and precision only: shared by every LoRA rank,
    target set and attention kernel of a sweep (read-only)."""
    return _PLACEMENTS.get((spec,), (setup.method, setup.quant, setup.double_quant, setup.quant_blocksize,
                                     setup.precision, setup.kbit_prep, setup.training),
                           lambda: tuple(place_weights(spec, setup)))


def _build_static(spec: ModelSpec, setup: Setup) -> _Static:
    plan = _lora_plan(spec, setup.lora) if setup.method in ("lora", "qlora") and setup.lora is not None else None
    placements = _placements(spec, setup)
    adapters = adapter_tensors(plan, placements, setup)
    trainables = trainable_tensors(placements, adapters)
    resid = _resid_dtype(spec, placements, setup)
    program = Program(spec, setup)
    layers = _layers(spec, placements, plan, setup)
    cache: dict[tuple, LayerTrace] = {}
    traces = []
    embed_rg = _embedding_output_requires_grad(spec, setup, plan, placements)
    for L in layers:
        input_rg = embed_rg or L.index > 0
        key = (_layer_key(L), input_rg)
        if key not in cache:
            try:
                cache[key] = trace_layer(program, L, resid, input_rg)
            except (KeyError, AttributeError, AssertionError, ZeroDivisionError) as exc:
                # a layer layout the replay does not know (an unknown family): use coefficients calibrated by
                # simulating 1 and 2 layers of the real model on meta tensors (vramplan/simulate/calibrate.py)
                cache[key] = _calibrated_trace(spec, setup, resid, exc)
        traces.append(cache[key])
    head = _trace_head(spec, setup, placements, program, resid)
    logits_dtype = setup.compute_dtype if setup.autocast else _head_dtype(spec, placements, resid)
    trainable = plan.trainable if plan is not None else (spec.params_total if setup.method == "full" else 0)
    total = plan.total if plan is not None else spec.params_total
    return _Static(plan, tuple(placements), tuple(adapters), tuple(trainables), tuple(traces), resid, head,
                   logits_dtype, trainable, total)


def _calibrated_trace(spec: ModelSpec, setup: Setup, resid: str, cause: BaseException) -> LayerTrace:
    """A layer trace from the simulation's calibration: one storage of ``const + a·T + b·bss`` bytes."""
    from ..errors import SimulationError

    try:
        from ..simulate.calibrate import calibrate

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
                resid: str) -> LayerTrace:
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
    with tr.in_section("other"):
        program.linear(tr, h, lin)
    saved = tuple(tr.saved_storages())
    return LayerTrace(saved, any(s is x.storage for s in saved), tuple(prune(tr.transient_candidates())),
                      (), tuple(tr.constants), resid)


# ----------------------------------------------------------------------------------------- optimizer
def optimizer_states(trainables: tuple[TrainableTensor, ...], setup: Setup) -> tuple[int, int, str]:
    """(bytes in the torch allocator, bytes in paged/unified memory, formula) of the optimizer states."""
    o = setup.optim
    gpu, paged = 0, 0
    n_tensors = len(trainables)
    numel = sum(t.numel for t in trainables)
    if o == "adamw":
        # torch.optim.AdamW(fused=True) (HF Trainer default adamw_torch_fused): exp_avg, exp_avg_sq in the
        # param dtype, and a 0-dim fp32 'step' tensor per param on the device (torch/optim/adamw.py _init_group)
        for t in trainables:
            gpu += 2 * alloc(t.numel * BYTES[t.dtype]) + alloc(4)
        formula = (f"AdamW (fused): 2 states × param dtype per trainable element ({numel:,} elements in "
                   f"{n_tensors} tensors) + one fp32 step tensor each; torch/optim/adamw.py")
    elif o in ("adamw-8bit", "paged-adamw-8bit"):
        for t in trainables:
            parts = adam8bit_state_parts(t.numel)
            big = [b for k, b in parts.items() if k.startswith("state")]
            small = [b for k, b in parts.items() if k.startswith("absmax")]
            if o == "paged-adamw-8bit" and t.numel >= PAGED_MIN_NUMEL:
                paged += sum(big)
            else:
                gpu += sum(alloc(b) for b in big)
            gpu += sum(alloc(b) for b in small)
        # the shared dynamic/udynamic quantization maps, moved to the GPU with the first 8-bit state only
        # (Optimizer2State.init_state: tensors below min_8bit_size never touch them)
        if any("absmax1" in adam8bit_state_parts(t.numel) for t in trainables):
            gpu += 2 * alloc(256 * 4)
        formula = ("bitsandbytes AdamW8bit: uint8 exp_avg/exp_avg_sq + fp32 absmax per 256 for tensors >= 4096 "
                   "elements, fp32 states below (bitsandbytes/optim/optimizer.py Optimizer2State.init_state)"
                   + ("; paged (cudaMallocManaged) for tensors >= 1e5 elements (get_state_buffer)"
                      if o.startswith("paged") else ""))
    elif o == "paged-adamw":
        for t in trainables:
            b = 2 * t.numel * 4
            if t.numel >= PAGED_MIN_NUMEL:
                paged += b
            else:
                gpu += 2 * alloc(t.numel * 4)
        formula = ("bitsandbytes PagedAdamW (32-bit): two fp32 states; tensors >= 1e5 elements in paged unified "
                   "memory (bitsandbytes/optim/optimizer.py get_state_buffer)")
    elif o == "lion":
        for t in trainables:
            gpu += alloc(t.numel * 4)
        formula = "bitsandbytes Lion (32-bit): one fp32 exp_avg per element (Optimizer1State)"
    elif o == "adafactor":
        for t in trainables:
            if len(t.shape) >= 2:
                rows = 1
                for d in t.shape[:-1]:
                    rows *= d
                cols = t.shape[-1]
                gpu += alloc(rows * BYTES[t.dtype]) + alloc(cols * BYTES[t.dtype] * (rows // max(t.shape[-2], 1)))
            else:
                gpu += alloc(t.numel * BYTES[t.dtype])
            gpu += alloc(4)      # state["RMS"]: a 0-dim tensor on the device per parameter
        formula = ("transformers Adafactor (beta1=None): factored row/column second moments for matrices, a "
                   "full one for vectors, and a 0-dim RMS tensor per parameter (transformers/optimization.py "
                   "Adafactor.step)")
    else:  # sgd
        formula = "SGD without momentum (HF Trainer 'sgd'): no state"
    return gpu, paged, formula


def optimizer_step_transient(trainables: tuple[TrainableTensor, ...], setup: Setup) -> int:
    """Temporaries of ``optimizer.step()``: fused AdamW and bitsandbytes kernels update in place; Adafactor
    builds ``grad**2 + eps`` and the update per tensor (one tensor at a time)."""
    if setup.optim == "adafactor" and trainables:
        biggest = max(trainables, key=lambda t: t.numel)
        return 2 * alloc(biggest.numel * BYTES[biggest.dtype])
    return 0


# -------------------------------------------------------------------------------------------- estimate
def estimate(spec: ModelSpec, setup: Setup, gpu=None, margin: float = 0.0, *, detail: bool = True) -> Estimate:
    """Estimate the memory of one step of ``setup`` on ``spec``; ``gpu`` (a :class:`vramplan.profiles.Gpu`)
    adds the fit verdict with ``margin`` (a fraction of capacity kept free)."""
    ss = _structural(setup)
    st = _static(spec, _layout_key(ss))
    b, s = setup.batch, setup.seq
    comps: dict[str, list] = {}

    def add(name: str, n: int, formula: str, counter: str = "allocated") -> None:
        if n:
            if name in comps:
                comps[name][0] += n
            else:
                comps[name] = [n, formula, counter]

    d = _derived(spec, st, ss)
    for name, nb, formula in d.weight_comps:
        add(name, nb, formula)
    static_weights = d.static_weights

    if not setup.training:
        return _inference(spec, setup, st, comps, static_weights, gpu, margin)

    rank = d.rank
    a = d.activations.at(b, s)
    peaks = phase_peaks(d.timeline, a)
    peak, phase = peak_of(peaks)
    candidates = dict(zip(PHASES, peaks[:4], strict=True))
    if not detail:   # sweeps: the counters and the phase only, same numbers as the detailed estimate
        return _finish(spec, setup, st, {}, peak, phase, candidates, d.opt_paged, gpu, margin, rank, detail=False)
    _itemize(spec, setup, st, d, a, phase, peaks[4], add)
    check_breakdown(comps, peak, phase)
    buf_load = rank.buffer_bytes("load") if rank is not None else 0
    phases = {"load": static_weights + overhead.CUBLAS_WORKSPACE_BYTES + buf_load, **candidates}
    return _finish(spec, setup, st, comps, peak, phase, phases, d.opt_paged, gpu, margin, rank)


def _itemize(spec: ModelSpec, setup: Setup, st: _Static, d: _Derived, a: ActTerms, phase: str, at_start: bool,
             add) -> None:
    """The components live at the ``phase`` peak, each a term of :func:`~.timeline.phase_peaks` with its
    formula (the weights are already added)."""
    sa, rank, ts = d.sa, d.rank, d.timeline
    T, bss = setup.batch * setup.seq, setup.batch * setup.seq * setup.seq
    n_layers = spec.num_layers
    ckpt = setup.grad_ckpt
    cublas = overhead.CUBLAS_WORKSPACE_BYTES
    grad_formula = rank.grad_formula if rank is not None else _grad_formula(st, d.trainable_numel)
    logits_formula = loss_formula(spec, T, sa.logits_dtype, setup.compute_dtype, setup.loss == "chunked")
    add("optimizer/states", d.opt_gpu, d.opt_formula)
    if rank is not None:
        for name, nb, formula in rank.buffers[phase]:
            add(name, nb, formula)
    add("buffers/cublas_workspace", cublas, "cuBLAS workspace through the caching allocator: ':4096:8' = 32 MiB + "
        "1 MiB cuBLASLt (aten/src/ATen/cuda/CublasHandlePool.cpp)")

    def layer_activations() -> None:
        if ckpt:
            add("activations/checkpoint_inputs", a.layer_acts,
                f"gradient checkpointing saves each layer's input: {n_layers} layers × tokens {T:,} × hidden "
                f"{spec.hidden_size} × {BYTES[sa.resid_dtype]} B ({sa.resid_dtype} residual stream) = "
                f"{_fmt(a.layer_acts)}; torch.utils.checkpoint (non-reentrant) via transformers "
                "GradientCheckpointingLayer")
            return
        act_cat: dict[str, int] = defaultdict(int)
        counts: dict[int, int] = defaultdict(int)
        distinct = {id(tr): tr for tr in sa.layer_traces}
        for tr in sa.layer_traces:
            counts[id(tr)] += 1
        for k_id, n in counts.items():
            for k, v in distinct[k_id].by_category(T, bss).items():
                act_cat[k] += v * n
        for k, v in sorted(act_cat.items()):
            add(k, v, _act_formula(k, sa, T, bss, n_layers))

    casts_live = {"forward": ts.casts, "backward": ts.casts_backward}.get(
        phase, ts.casts_backward + (ts.casts_layer if ckpt else 0))
    if (phase in ("forward", "backward") or (phase == "backward (layers)" and at_start)) and casts_live:
        add("buffers/autocast_weight_casts", casts_live,
            f"autocast caches a {setup.compute_dtype} copy of each fp32 trainable matmul weight for the whole "
            "forward and autograd saves it for backward (aten/src/ATen/autocast_mode.cpp cached_cast): "
            f"2 B × {sum(p.numel for p in st.placements if p.trainable):,} params")
    if phase in ("forward", "backward"):
        layer_activations()
        add("activations/head", a.head_saved, _head_formula(sa, T, bss, spec))
        add("logits/log_softmax", a.logits_saved, logits_formula)
        if phase == "forward":
            tmp = max(a.loss_fwd_tmp, a.fwd_tmp + a.dequant)
            add("logits/forward_temporaries" if tmp == a.loss_fwd_tmp else "buffers/layer_temporaries", tmp,
                logits_formula if tmp == a.loss_fwd_tmp else "largest set of a layer's short-lived tensors in forward")
        else:
            add("logits/loss_gradients", a.loss_bwd_tmp, logits_formula)
    elif phase == "backward (layers)":
        if at_start:
            layer_activations()
            if ckpt:
                add("activations/recomputed_layer", a.recompute + a.fwd_tmp,
                    "one layer's activations recomputed in backward (checkpointing)")
            add("activations/head", a.head_saved, _head_formula(sa, T, bss, spec))
            add("gradients/trainable", ts.grad_head + ts.grad_layers // max(n_layers, 1), "gradients produced so far")
        else:
            add("activations/remaining", (a.resid if ckpt else a.first_layer_acts) + a.recompute,
                "activations of the first layer, last to be freed")
            add("buffers/autocast_weight_casts", ts.casts_layer, "autocast copies of one layer's weights")
            add("gradients/trainable", ts.grad_head + ts.grad_layers, grad_formula)
        add("buffers/backward_working_set", a.bwd_ws,
            "gradients of one op's outputs and inputs while it runs backward, plus a dequantized weight")
    else:  # optimizer
        add("gradients/trainable", ts.grads_step, grad_formula)
        add("buffers/optimizer_step", ts.opt_tmp, "optimizer step temporaries")


@dataclass(frozen=True)
class _Derived:
    """Model-state totals and formulas that depend on the structure only (cached beside :class:`_Static`)."""

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
    rank: object
    sa: _Static
    timeline: StateTerms | None = None          # training only: the fixed terms of phase_peaks
    activations: LayerActivations | None = None  # training only: the activation terms at any (batch, seq)


_DERIVED_CACHE = IdCache(512)
_WEIGHT_COMPS = IdCache(256)


def _derived(spec: ModelSpec, st: _Static, setup: Setup) -> _Derived:
    return _DERIVED_CACHE.get((spec,), (setup,), lambda: _build_derived(spec, st, setup))


def model_states(spec: ModelSpec, setup: Setup) -> _Derived:
    """The model states :func:`estimate` prices for ``setup`` (any batch and sequence length): weights,
    gradients, optimizer states and autocast weight copies, in bytes, with the layout whose layer traces give
    the activations (``.sa``). What the simulation's comparison reads (``simulate/compare.py``)."""
    ss = _structural(setup)
    return _derived(spec, _static(spec, _layout_key(ss)), ss)


def _base_weight_comps(st: _Static, setup: Setup) -> tuple[tuple[str, int, str], ...]:
    """``weights/*`` components (bytes and formulas) of a placement list, shared across setups that place the
    weights identically (the placements tuple is shared through :func:`_placements`)."""
    return _WEIGHT_COMPS.get((st.placements,), (setup.quant, setup.double_quant, setup.quant_blocksize),
                             lambda: _build_weight_comps(st, setup))


def _build_weight_comps(st: _Static, setup: Setup) -> tuple[tuple[str, int, str], ...]:
    wsum: dict[str, int] = defaultdict(int)
    by_comp: dict[str, dict[int, Placement]] = defaultdict(dict)
    for p in st.placements:
        for comp, nb in p.parts:
            wsum[comp] += alloc(nb)
            by_comp[comp][id(p)] = p
    return tuple((comp, nb, _weight_formula(comp, list(by_comp[comp].values()), setup))
                 for comp, nb in sorted(wsum.items()) if nb)


def _build_derived(spec: ModelSpec, st: _Static, setup: Setup) -> _Derived:
    comps: list[tuple[str, int, str]] = list(_base_weight_comps(st, setup))
    asum: dict[str, int] = defaultdict(int)
    for t in st.adapters:
        asum[t.component] += alloc(t.numel * BYTES[t.dtype])
    for comp, nb in sorted(asum.items()):
        if nb:
            comps.append((comp, nb, _adapter_formula(comp, st, setup)))
    grads = sum(alloc(t.numel * BYTES[t.dtype]) for t in st.trainables)
    # the head's gradient is the first one backward produces (the embedding's, when tied)
    head_comp = "weights/lm_head" if any(t.component == "weights/lm_head" for t in st.trainables) \
        else "weights/embeddings"
    grad_head = sum(alloc(t.numel * BYTES[t.dtype]) for t in st.trainables
                    if t.component == head_comp and setup.method == "full")
    opt_gpu, opt_paged, opt_formula = optimizer_states(st.trainables, setup)
    opt_tmp = optimizer_step_transient(st.trainables, setup)
    trainable_numel = sum(t.numel for t in st.trainables)

    # ---- autocast weight copies (fp32 trainable weights under autocast: cached bf16 copies, saved)
    casts = 0
    if setup.autocast and setup.method == "full":
        # F.linear / Conv1D addmm / the MoE router's F.linear are autocast ops; the fused experts' _grouped_mm
        # is not (transformers integrations/moe.py), so expert stacks get no copy
        casts = sum(alloc(p.numel * 2) for p in st.placements
                    if p.trainable and p.tensor.param_name != "bias"
                    and (p.tensor.module_type in ("linear", "conv1d") or p.tensor.role == "moe_router"))
        for t in spec.tensors:   # a tied head is cast as the head weight
            if t.tied_to is not None and t.role == "lm_head":
                casts += alloc(t.numel * 2)
    casts_head = 0
    if casts:
        head = [t for t in spec.tensors if t.role == "lm_head" and t.param_name == "weight"]
        casts_head = sum(alloc(t.numel * 2) for t in head)
    # autocast's cast cache is cleared when the forward (under autocast) ends; checkpointed layers saved no copy,
    # so in backward only the head's copy lives on, plus the copies a recomputed layer makes
    if setup.grad_ckpt and casts:
        casts_bwd, casts_layer = casts_head, (casts - casts_head) // max(spec.num_layers, 1)
    else:
        casts_bwd, casts_layer = casts, casts // max(spec.num_layers, 1)

    # ---- multi-GPU: one rank's weights, gradients, optimizer states and buffers (distributed.py)
    rank = distributed.rank_states(spec, setup, st) if (setup.training and distributed.applies(setup)) else None
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
    return _Derived(tuple(comps), static_weights, grads, grad_head, opt_gpu, opt_paged, opt_formula, opt_tmp,
                    trainable_numel, casts, casts_head, casts_bwd, casts_layer, rank, sa, timeline, acts)


_LAYOUT: dict[Setup, Setup] = {}


def _layout_key(setup: Setup) -> Setup:
    """The part of a structural setup that decides placements and layer traces: the optimizer, the loss and the
    multi-GPU options do not (they only change :class:`_Derived` and the timeline)."""
    if (setup.optim, setup.loss, setup.gpus, setup.strategy, setup.offload) == ("adamw", "standard", 1, "ddp", "none"):
        return setup
    hit = _LAYOUT.get(setup)
    if hit is None:
        if len(_LAYOUT) > 65536:
            _LAYOUT.clear()
        hit = _LAYOUT[setup] = replace(setup, optim="adamw", loss="standard", gpus=1, strategy="ddp", offload="none")
    return hit


_STRUCTURAL: dict[Setup, Setup] = {}


def _structural(setup: Setup) -> Setup:
    """The setup with batch and sequence normalized: the cache key of :func:`_static` (memoized: sweeps ask
    for the same few thousand setups again and again)."""
    hit = _STRUCTURAL.get(setup)
    if hit is None:
        if len(_STRUCTURAL) > 65536:
            _STRUCTURAL.clear()
        hit = setup if (setup.batch, setup.seq) == (1, 1) else replace(setup, batch=1, seq=1, new_tokens=0)
        _STRUCTURAL[setup] = hit
    return hit


def _inference(spec: ModelSpec, setup: Setup, st: _Static, comps: dict, static_weights: int, gpu, margin: float):
    """Prefill of ``seq - new_tokens`` prompt tokens and decoding to ``seq``: weights + KV cache + the prefill's
    transient working set under ``torch.no_grad`` (nothing saved)."""
    b, s = setup.batch, setup.seq
    kv_dtype = setup.compute_dtype
    layers = spec.num_layers
    kv, work, logits = inference_bytes(spec, st, b, s, setup.new_tokens, kv_dtype)
    cublas = overhead.CUBLAS_WORKSPACE_BYTES
    comps["kv_cache"] = [kv, f"2 (K,V) × {layers} layers × batch {b} × seq {s} × kv heads {spec.num_kv_heads} × "
                             f"head_dim {spec.head_dim} × {BYTES[kv_dtype]} B (transformers DynamicCache)",
                         "allocated"]
    comps["activations/prefill_working_set"] = [work, "one layer's tensors during the prefill under no_grad "
                                                      "(upper bound: all alive at once)", "allocated"]
    comps["logits/last_token"] = [logits, "logits of the last position, fp32 upcast for sampling", "allocated"]
    comps["buffers/cublas_workspace"] = [cublas, "cuBLAS workspace (CublasHandlePool.cpp)", "allocated"]
    peak = sum(v[0] for v in comps.values())
    phases = {"load": static_weights + cublas, "prefill": peak, "decode": peak - work}
    return _finish(spec, setup, st, comps, peak, "prefill", phases, 0, gpu, margin)


def _finish(spec: ModelSpec, setup: Setup, st: _Static, comps: dict, peak: int, phase: str, phases: dict,
            paged: int, gpu, margin: float, rank: distributed.RankStates | None = None,
            detail: bool = True) -> Estimate:
    frag = overhead.allocator_overhead_bytes(peak)
    arch = getattr(gpu, "architecture", "") if gpu is not None else ""
    uses_bnb = overhead.uses_bitsandbytes(setup)
    ctx = overhead.cuda_context_bytes(arch, uses_bnb)
    if not detail:
        outside_bytes = sum(c.bytes for c in rank.device) if rank is not None else 0
        reserved = peak + frag
        device = reserved + ctx + paged + outside_bytes
        fit = overhead.fit_verdict(gpu, device, margin) if gpu is not None else None
        return Estimate(model=spec.name, setup=setup, params_total=st.params_total,
                        params_trainable=st.params_trainable, components=(), peak_phase=phase,
                        peak_allocated_bytes=peak, peak_reserved_bytes=reserved, device_used_bytes=device,
                        phases=phases, assumptions=(), fit=fit)
    components = [Component(k, v[0], v[1], v[2]) for k, v in comps.items()]
    components.append(Component("overhead/allocator", frag,
                                f"reserved beyond allocated: max(64 MiB, {overhead.ALLOCATOR_FRAGMENTATION:.0%} of "
                                "peak allocated) — uncalibrated (segment rounding and fragmentation, "
                                "c10/cuda/CUDACachingAllocator.cpp)", "reserved"))
    components.append(Component("overhead/cuda_context", ctx,
                                f"CUDA context + kernels ({arch or 'unknown architecture'})"
                                + (" + bitsandbytes library" if uses_bnb else "")
                                + " as nvidia-smi shows it — uncalibrated (vramplan/estimate/overhead.py)", "device"))
    if paged:
        components.append(Component("optimizer/paged_states", paged,
                                    "paged optimizer states in CUDA unified memory: outside the torch allocator, "
                                    "resident on the GPU while there is room (evicted to host RAM under pressure)",
                                    "device"))
    outside = list(rank.device) if rank is not None else []     # NCCL buffers: outside the torch allocator
    components += outside
    reserved = peak + frag
    device = reserved + ctx + paged + sum(c.bytes for c in outside)
    trainable, total = st.params_trainable, st.params_total
    fit = overhead.fit_verdict(gpu, device, margin) if gpu is not None else None
    return Estimate(
        model=spec.name, setup=setup, params_total=total, params_trainable=trainable,
        components=tuple(sorted(components, key=lambda c: (c.group, -c.bytes))), peak_phase=phase,
        peak_allocated_bytes=peak, peak_reserved_bytes=reserved, device_used_bytes=device,
        phases=phases, assumptions=tuple(assumptions(spec, setup, st) + (rank.assumptions if rank else [])),
        warnings=tuple(warnings_for(spec, setup) + (rank.warnings if rank else [])),
        fit=fit, versions=_versions(), extra=rank.extra(setup) if rank is not None else {})


def check_breakdown(comps: dict[str, list], peak: int, phase: str) -> None:
    """The allocated components are the parts of the phase's peak, itemized: they must sum to it exactly.

    Raises:
        BreakdownError: when they do not (a bug in the itemization, never a user error).
    """
    total = sum(v[0] for v in comps.values() if v[2] == "allocated")
    if total != peak:
        raise BreakdownError(f"internal error: the allocated components at the {phase!r} peak sum to {total:,} B, "
                             f"the peak is {peak:,} B (difference {peak - total:+,} B); please report it")


# ----------------------------------------------------------------------------------------- explanations
def _weight_formula(comp: str, ps: list[Placement], setup: Setup) -> str:
    n = sum(p.numel for p in ps)
    dtypes = sorted({p.dtype for p in ps})
    if comp == "weights/quantized":
        if setup.quant == "int8":
            return f"{n:,} int8 elements (bitsandbytes Int8Params), 1 B each, in {len(ps)} Linear weights"
        return (f"{n:,} elements of {len(ps)} Linear weights packed two per byte: ceil(n/2) B each "
                "(bitsandbytes/functional.py quantize_4bit)")
    if comp == "weights/quant_constants":
        if setup.quant == "int8":
            return "one fp32 row scale (SCB) per output row (bitsandbytes Int8Params)"
        blocks = sum(ceil_div(p.numel, setup.quant_blocksize) for p in ps)
        if setup.double_quant:
            return (f"{blocks:,} blocks of {setup.quant_blocksize}: uint8 absmax (1 B each) + fp32 nested absmax per "
                    "256 blocks + 1 KiB nested code + 4 B offset + 64 B code per weight, each allocation rounded "
                    "to 512 B (double quantization, QLoRA §2)")
        return f"{blocks:,} blocks of {setup.quant_blocksize}: fp32 absmax (4 B each) + 64 B code per weight"
    return f"{n:,} elements in {', '.join(dtypes)} ({len(ps)} tensors, each allocation rounded to 512 B)"


def _adapter_formula(comp: str, st: _Static, setup: Setup) -> str:
    ts = [t for t in st.adapters if t.component == comp]
    n = sum(t.numel for t in ts)
    dt = ", ".join(sorted({t.dtype for t in ts}))
    if comp == "adapters/lora" and st.plan is not None:
        return (f"r={st.plan.config.r} × (in + out) for {len(st.plan.adapters)} adapted modules = {n:,} params in "
                f"{dt} (PEFT keeps adapters in fp32 on a 16-bit base: autocast_adapter_dtype)")
    return f"{n:,} params in {dt}"


def _grad_formula(st: _Static, numel: int) -> str:
    dts = ", ".join(sorted({t.dtype for t in st.trainables}))
    return f"one gradient per trainable element ({numel:,}) in the parameter's dtype ({dts})"


def _act_formula(comp: str, st: _Static, T: int, bss: int, L: int) -> str:
    cat = {v: k for k, v in CATEGORY.items()}.get(comp, "other")
    tr = st.layer_traces[-1] if st.layer_traces else None
    if tr is None:
        return ""
    items = [f"{s.saved_by[0]} [{s.dtype}, {alloc(s.nbytes(T, bss)):,} B]" for s in tr.saved if s.category == cat]
    return (f"Σ over {L} layers of tensors autograd saves in the {cat} part of a layer (tokens {T:,}); last layer: "
            + "; ".join(items))


def _head_formula(st: _Static, T: int, bss: int, spec: ModelSpec) -> str:
    items = [f"{s.saved_by[0]} [{s.dtype}, {alloc(s.nbytes(T, bss)):,} B]" for s in st.head.saved]
    return "final norm and lm_head: " + ("; ".join(items) if items else "nothing saved")


def assumptions(spec: ModelSpec, setup: Setup, st: _Static) -> list[str]:
    a = [
        f"precision {setup.precision}: "
        + ("autocast to " + setup.compute_dtype + " with fp32 trainable weights (HF Trainer bf16/fp16=True)"
           if setup.autocast else "no autocast; every tensor in " + setup.compute_dtype),
        f"base weights loaded in {setup.base_dtype}" + (" (fp32 masters for full fine-tuning)"
                                                        if setup.method == "full" and setup.mixed else ""),
        "HF Trainer loop: model outputs (bf16 logits) are dropped before backward; zero_grad(set_to_none=True)",
        f"attention: {setup.attn}" + (" (flash / memory-efficient kernel: O(seq) saved tensors)"
                                      if setup.attn != "eager" else " (scores materialized: O(seq²))"),
        "optimizer states counted from the second step on (they persist after the first step)",
        "no padding (every sequence exactly --seq tokens), no packed-sequence masks",
    ]
    if setup.quantized and setup.training and setup.kbit_prep:
        a.append("prepare_model_for_kbit_training: non-quantized parameters upcast to fp32 (embeddings, norms, "
                 "lm_head), residual stream in fp32, gradient checkpointing on by default")
    if spec.is_moe:
        a.append("MoE: transformers >= 5 fused expert weights are not nn.Linear, so bitsandbytes leaves them "
                 "unquantized; activations assume perfectly balanced routing (top-k rows per token)")
    if setup.optim.startswith("paged"):
        a.append("paged optimizer states live in CUDA unified memory: not in torch's allocated/reserved counters, "
                 "counted in device_used while resident")
    if st.plan is not None and st.plan.default_source is not None:
        used = st.plan.targets_used
        a.append(f"LoRA default targets for model_type {spec.model_type!r} "
                 f"({used if isinstance(used, str) else ', '.join(used)}) "
                 f"from {st.plan.default_source}: vramplan's mirrored table (peft {PEFT_TABLE_VERSION}) lacks it")
    if spec.model_type in ("bloom",):
        a.append("bloom's ALiBi attention materializes the scores (eager-like) whatever --attn says")
    return a


def warnings_for(spec: ModelSpec, setup: Setup) -> list[str]:
    w = []
    if spec.max_position_embeddings and setup.seq > spec.max_position_embeddings:
        w.append(f"--seq {setup.seq} exceeds the model's max_position_embeddings {spec.max_position_embeddings}")
    if not setup.training and (setup.gpus > 1 or setup.strategy != "ddp"):
        w.append(f"--method inference on --gpus {setup.gpus} --strategy {setup.strategy}: estimated as one full "
                 "replica per GPU (data parallel); sharded inference is not modelled")
    return w


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour the formulas follow.

    Read from the ``*.dist-info`` folder names on ``sys.path`` (no imports, and cheaper than
    ``importlib.metadata``, which costs ~0.1 s to import on a cold start).
    """
    import os
    import sys

    from .. import __version__

    wanted = {"torch": None, "transformers": None, "peft": None, "bitsandbytes": None}
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
                if key in wanted and wanted[key] is None:
                    wanted[key] = rest
        if all(wanted.values()):
            break
    return {"vramplan": __version__, **{k: v or "not installed" for k, v in wanted.items()}}
