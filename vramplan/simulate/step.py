"""Drive one step of a built model under the tracker: load, forward + loss, backward, optimizer, zero_grad; or,
for inference, a prefill and one decode step with the KV cache.

The loop is the HF Trainer's: ``with autocast: loss = model(input_ids, labels=labels).loss`` (the outputs,
logits included, are dropped before backward), ``loss.backward()``, ``optimizer.step()``,
``optimizer.zero_grad(set_to_none=True)``. Optimizer states are created by a warm-up step before the measured
one, so the measured step is a steady-state step (states persist from the second step on).
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SimulationError
from ..setup import Setup
from ..shapes.spec import ModelSpec
from .autocast import EmulatedAutocast
from .build import TORCH_DTYPES, Built, build
from .kernels import AUTOCAST_DTYPE, CudaKernels, cuda_meta_override, workspace_for
from .tracker import Record, Tracker

_LAYER_RE = re.compile(r"\.(\d+)(\.|$)")


# ------------------------------------------------------------------------------------------------ result
@dataclass
class SegmentPeak:
    bytes: int
    breakdown: dict[str, int]
    where: str                      # "module / op"


@dataclass
class RunResult:
    """What one simulated step of a model with ``num_layers`` layers needed, by component."""

    num_layers: int
    phases: dict[str, int]                                  # peak allocated bytes per phase
    segments: dict[tuple[str, str], SegmentPeak]            # (phase, segment) -> peak with its breakdown
    static: dict[str, int]                                  # resident before the step (weights, states)
    gradients: int                                          # .grad bytes after backward
    saved: dict[str, int]                                   # activations held at the end of forward
    saved_per_layer: dict[int, int]
    saved_per_layer_raw: dict[int, int]                     # unrounded bytes (for calibration fits)
    saved_raw_total: int = 0                                # unrounded activation bytes at the end of forward
    kv_cache: int = 0
    params_total: int = 0
    params_trainable: int = 0
    kernels: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ops: int = 0
    seconds: float = 0.0
    attn_implementation: str = ""

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: self.phases[k])

    @property
    def peak_bytes(self) -> int:
        return self.phases[self.peak_phase]

    def peak_breakdown(self) -> dict[str, int]:
        phase = self.peak_phase
        best = max((s for (p, _), s in self.segments.items() if p == phase), key=lambda s: s.bytes)
        return best.breakdown


# ------------------------------------------------------------------------------------- patches and hooks
@contextlib.contextmanager
def cuda_like(autocast: EmulatedAutocast | None) -> Iterator[None]:
    """Process-wide patches that make a meta run behave like a CUDA run (undone on exit).

    * ``transformers.masking_utils.find_packed_sequence_indices`` -> ``None``: on meta its ``.all()`` cannot
      run; on a GPU, unpacked inputs give ``None`` there, so the mask is ``None`` with ``is_causal=True``.
    * fused/foreach optimizer kernels accept meta tensors (``torch.optim`` checks the device type only).
    * ``torch.is_autocast_enabled()`` reports the emulated CUDA autocast (PEFT's bnb LoRA layers read it).
    """
    import torch.optim.optimizer as topt
    import torch.utils._foreach_utils as fu
    import transformers.masking_utils as mu

    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, name: str, value: Any) -> None:
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    fused = fu._get_fused_kernels_supported_devices
    foreach = fu._get_foreach_kernels_supported_devices
    patch(mu, "find_packed_sequence_indices", lambda *a, **k: None)
    patch(fu, "_get_fused_kernels_supported_devices", lambda: [*fused(), "meta"])
    patch(fu, "_get_foreach_kernels_supported_devices", lambda: [*foreach(), "meta"])
    for name in ("_get_fused_kernels_supported_devices", "_get_foreach_kernels_supported_devices"):
        if hasattr(topt, name):
            patch(topt, name, getattr(fu, name))
    if autocast is not None:
        orig = torch.is_autocast_enabled

        def is_autocast_enabled(device_type: str | None = None) -> bool:
            if device_type in (None, "cuda", "meta"):
                return autocast.enabled
            return orig(device_type)

        patch(torch, "is_autocast_enabled", is_autocast_enabled)
    # torch.autocast(device_type=x.device.type, ...) in library code names "meta" here, where CUDA code names
    # "cuda": route it to the emulation (PEFT's ParamWrapper disables autocast this way)
    orig_autocast = torch.autocast

    def autocast_factory(device_type: str, dtype: Any = None, enabled: bool = True, cache_enabled: Any = None):
        if device_type == "meta":
            return autocast.region(enabled) if autocast is not None else contextlib.nullcontext()
        return orig_autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    patch(torch, "autocast", autocast_factory)
    patch(torch.amp, "autocast", autocast_factory)
    try:
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


class Hooks:
    """Module pre/post forward hooks: the module stack, the decoder-layer index, segments and grad hooks."""

    def __init__(self, tracker: Tracker, built: Built, autocast: EmulatedAutocast | None) -> None:
        self.t = tracker
        self.built = built
        self.autocast = autocast
        self.names = {id(m): n for n, m in built.model.named_modules()}
        self.layer_index = {id(m): i for i, m in enumerate(built.layers or [])}
        self.rotary = {id(m) for m in built.model.modules() if type(m).__name__.endswith("RotaryEmbedding")}
        self.last = (built.num_layers - 1) if built.layers is not None else -1
        self.handles: list[Any] = []
        self._ac_prev: list[bool] = []

    def __enter__(self) -> Hooks:
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self.handles.append(register_module_forward_pre_hook(self.pre))
        self.handles.append(register_module_forward_hook(self.post, always_call=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def pre(self, module: Any, args: Any) -> None:
        t = self.t
        t.module_stack.append(self.names.get(id(module), type(module).__name__))
        i = self.layer_index.get(id(module))
        if i is not None:
            t.layer_stack.append(i)
            t.segment = f"layer {i}"
            if t.phase == "forward" and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
                args[0].register_hook(self._enter("embedding" if i == 0 else f"layer {i - 1}"))
        if id(module) in self.rotary:
            t.shared += 1
        if id(module) in self.rotary and self.autocast is not None:
            self._ac_prev.append(self.autocast.enabled)
            self.autocast.enabled = False          # maybe_autocast(enabled=False) in the rotary forward

    def post(self, module: Any, args: Any, output: Any) -> None:
        t = self.t
        if t.module_stack:
            t.module_stack.pop()
        i = self.layer_index.get(id(module))
        if i is not None:
            if t.layer_stack:
                t.layer_stack.pop()
            if t.phase in ("forward", "prefill", "decode"):
                out = output[0] if isinstance(output, (tuple, list)) else output
                if t.phase == "forward" and isinstance(out, torch.Tensor) and out.requires_grad:
                    out.register_hook(self._enter(f"layer {i}"))
                if i == self.last:
                    t.segment = "head"
        if id(module) in self.rotary:
            t.shared = max(0, t.shared - 1)
        if id(module) in self.rotary and self.autocast is not None and self._ac_prev:
            self.autocast.enabled = self._ac_prev.pop()

    def _enter(self, segment: str):
        def hook(grad: torch.Tensor) -> None:
            if self.t.phase == "backward":
                self.t.segment = segment
        return hook


# ------------------------------------------------------------------------------------------ categories
def category_of(module_path: str, segment: str) -> str:
    """The analytic estimator's activation category for a tensor saved while ``module_path`` ran."""
    leaf = module_path.rpartition(".")[2].lower()
    low = module_path.lower()
    if segment == "loss":
        return "logits"
    if "lora_" in low:
        return "lora_inputs"
    if "norm" in leaf or leaf.startswith("ln"):
        return "head" if segment == "head" else "norms"
    if segment == "head":
        # the final norm and lm_head are the head; what the CausalLM's own forward saves after them
        # (Gemma-2's final_logit_softcapping tanh) belongs with the logits, as the estimator counts it
        return "head" if "lm_head" in low or "embed_out" in low or "output" in leaf else "logits"
    if segment == "embedding" or not _LAYER_RE.search(low):
        return "other"
    if any(k in low for k in (".self_attn", ".attention", ".attn")):
        return "attention"
    if any(k in low for k in (".mlp", ".block_sparse_moe", ".feed_forward", ".experts", ".moe")):
        return "mlp"
    return "other"


def component_of(r: Record) -> str:
    """Component name of a record (see docs/simulation.md for the mapping to the analytic names)."""
    if r.tag in ("parameter", "buffer"):
        return r.component or ("buffers/model" if r.tag == "buffer" else "weights/other")
    if r.tag == "optimizer_state":
        return "optimizer/states"
    if r.tag == "gradient":
        return "gradients/trainable"
    if r.tag == "kv_cache":
        return "kv_cache"
    if r.category == "weight_cast":
        return "buffers/autocast_weight_casts"
    if r.tag == "activation":
        if r.category == "logits":
            return "logits/log_softmax"
        return f"activations/{r.category or 'other'}"
    if r.category == "workspace":
        return "buffers/kernel_workspace"
    if r.category == "recomputed":
        return "activations/recomputed_layer"
    if r.segment in ("loss", "head") and r.phase == "forward":
        return "logits/forward_temporaries"
    if r.segment in ("loss", "head") and r.phase == "backward":
        return "logits/loss_gradients"
    if r.phase == "backward":
        return "buffers/backward_working_set"
    if r.phase == "forward":
        return "buffers/layer_temporaries"
    return "buffers/temporaries"


def breakdown(records: list[Record]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in records:
        out[component_of(r)] += r.nbytes
    return dict(out)


# ---------------------------------------------------------------------------------------------- driver
def _inputs(setup: Setup, tokens: int) -> torch.Tensor:
    return torch.empty((setup.batch, tokens), dtype=torch.long, device="meta")


def _optimizer(setup: Setup, params: list[torch.nn.Parameter]):
    if not params:
        return None
    o = setup.optim
    if o == "adamw":      # HF Trainer default adamw_torch_fused
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    if o == "adamw-foreach":     # torch.optim.AdamW's CUDA default (the Trainer's adamw_torch, LitGPT)
        return torch.optim.AdamW(params, lr=1e-4, foreach=True)
    if o == "sgd":
        return torch.optim.SGD(params, lr=1e-4)
    if o == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=1e-4, relative_step=False, scale_parameter=False, warmup_init=False)
    import bitsandbytes as bnb

    cls = {"adamw-8bit": bnb.optim.AdamW8bit, "paged-adamw": bnb.optim.PagedAdamW,
           "paged-adamw-8bit": bnb.optim.PagedAdamW8bit, "lion": bnb.optim.Lion}[o]
    return cls(params, lr=1e-4)


#: what a data-dependent ATen op is, in the words of the Python call that reaches it
DATA_DEPENDENT = {
    "_local_scalar_dense": "Tensor.item() / bool(tensor) / int(tensor)",
    "_to_copy": "Tensor.tolist() / .cpu() / .numpy() (a copy to the host)",
    "nonzero": "torch.nonzero / torch.where(condition) / boolean indexing (output size depends on values)",
    "masked_select": "torch.masked_select / boolean indexing (output size depends on values)",
    "unique": "torch.unique (output size depends on values)",
    "_unique2": "torch.unique (output size depends on values)",
    "bincount": "torch.bincount (output size depends on values)",
    "repeat_interleave": "torch.repeat_interleave with tensor repeats (output size depends on values)",
    "equal": "torch.equal (returns a Python bool)",
    "is_nonzero": "bool(tensor)",
    "int8_vectorwise_quant": "LLM.int8 outlier columns above the threshold (output size depends on values)",
}

_LIBS = ("transformers", "peft", "bitsandbytes", "accelerate")


def _where(exc: BaseException) -> str:
    """The innermost frame of model or library code (not torch, not vramplan) in the traceback."""
    import traceback

    best = ""
    for fs in traceback.extract_tb(exc.__traceback__):
        f = fs.filename.replace("\\", "/")
        if "/torch/" in f or "/vramplan/" in f:
            continue
        for lib in _LIBS:
            i = f.rfind(f"/{lib}/")
            if i >= 0:
                best = f"{f[i + 1:]}:{fs.lineno} ({fs.name})"
                break
        else:
            if "site-packages" not in f and "dist-packages" not in f:
                best = f"{f}:{fs.lineno} ({fs.name})"
    return best


def _fail(what: str, exc: BaseException, tracker: Tracker | None) -> SimulationError:
    func = getattr(tracker, "current_op", None) if tracker is not None else None
    op = getattr(func, "__name__", "") or "?"
    ns = getattr(func, "namespace", "aten") or "aten"
    full = str(exc)
    msg = full.splitlines()[0][:160] if full else type(exc).__name__
    base = op.split(".")[0]
    data_dependent = base in DATA_DEPENDENT or "meta tensor" in full.lower() or "data-dependent" in full
    where = _where(exc)
    at = f" at {where}" if where else ""
    if data_dependent:
        desc = DATA_DEPENDENT.get(base, "a data-dependent op")
        return SimulationError(f"cannot simulate {what}: {ns}::{op} ({desc}){at} needs real tensor values, "
                               f"which the meta device does not have; use --mode analytic")
    return SimulationError(f"cannot simulate {what}: {ns}::{op}{at} failed on the meta device "
                           f"({type(exc).__name__}: {msg}); use --mode analytic")


def run(spec: ModelSpec, setup: Setup, num_layers: int | None = None) -> RunResult:
    """Simulate one step of ``setup`` on ``spec`` with ``num_layers`` decoder layers (all by default).

    Raises:
        SimulationError: the architecture cannot run on fake tensors (the message names the op).
    """
    t0 = time.perf_counter()
    built = build(spec, setup, num_layers)
    autocast = EmulatedAutocast(TORCH_DTYPES[setup.compute_dtype]) if setup.training and setup.autocast else None
    tracker = Tracker()
    tracker.on_op = workspace_for
    tracker.override = cuda_meta_override
    names = {id(m): n for n, m in built.model.named_modules()}
    tracker.layer_names = {names[id(m)] for m in (built.layers or [])}
    tracker.checkpointing = setup.training and setup.grad_ckpt
    kernels = CudaKernels()
    tracker.counting = False
    for tensor, tag, comp in built.persistent:
        rec = tracker.see(tensor, "load", tag=tag)
        if rec is not None:
            rec.component = comp
    _recompute_context(built.model, kernels, autocast)
    if autocast is not None:
        adapters = {id(p) for n, p in built.model.named_parameters() if ".lora_" in n}

        def weight_cast(src: torch.Tensor, copy: torch.Tensor) -> None:
            # a LoRA adapter's bf16 copy is saved by its own small matmul: part of the layer's LoRA
            # activations; a full fine-tune's copies of the base weights are reported apart, as the
            # analytic estimator does (buffers/autocast_weight_casts)
            rec = tracker.record_of(copy)
            if rec is not None:
                rec.category = "lora_weight_cast" if id(src) in adapters else "weight_cast"
        autocast.on_cached_cast = weight_cast
    try:
        with cuda_like(autocast), Hooks(tracker, built, autocast), contextlib.ExitStack() as stack:
            stack.enter_context(tracker)
            stack.enter_context(kernels)
            if autocast is not None:
                stack.enter_context(autocast)
                AUTOCAST_DTYPE.append(autocast.dtype)
                stack.callback(AUTOCAST_DTYPE.pop)
            if setup.training:
                result = _train_step(spec, setup, built, tracker, autocast)
            else:
                result = _inference(spec, setup, built, tracker)
    except SimulationError:
        raise
    except (RuntimeError, NotImplementedError, TypeError, ValueError, AssertionError) as exc:
        raise _fail(f"{spec.name or spec.model_type} ({setup.method})", exc, tracker) from exc
    result.params_total, result.params_trainable = _count_params(built.model)
    result.kernels = dict(tracker.attention)
    if kernels.used.get("math"):      # composite: decomposed above the tracker, counted where it is chosen
        result.kernels["math"] = result.kernels.get("math", 0) + kernels.used["math"]
    if not result.kernels and built.attn_implementation == "eager":
        result.kernels = {"eager (matmul + softmax)": built.num_layers}
    result.notes = list(built.notes)
    result.ops = tracker.ops
    result.seconds = time.perf_counter() - t0
    result.attn_implementation = built.attn_implementation
    return result


def _count_params(model: Any) -> tuple[int, int]:
    """``PeftModel.get_nb_trainable_parameters``: a 4-bit parameter holds two values per byte."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":
            n *= 2 * p.element_size()
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def _recompute_context(model: Any, kernels: CudaKernels, autocast: EmulatedAutocast | None) -> None:
    """The autograd engine runs backward with torch-function modes switched off, so a checkpointed layer's
    recompute would lose the emulated kernels and autocast. torch.utils.checkpoint re-enters the forward's
    autocast state for the recompute (``_checkpoint_without_reentrant_generator``); do the same for the
    emulation through ``context_fn``."""
    class Recompute:
        def __init__(self, enabled: bool) -> None:
            self.enabled = enabled
            self.stack = contextlib.ExitStack()

        def __enter__(self) -> None:
            self.stack.enter_context(kernels)
            if autocast is not None:
                self.stack.enter_context(autocast)
                self.stack.enter_context(autocast.region(self.enabled))

        def __exit__(self, *exc: object) -> None:
            self.stack.close()

    def context_fn():
        return contextlib.nullcontext(), Recompute(autocast.enabled if autocast is not None else False)

    for m in model.modules():
        fn = getattr(m, "_gradient_checkpointing_func", None)
        if fn is not None and getattr(m, "gradient_checkpointing", False):
            m._gradient_checkpointing_func = functools.partial(fn, context_fn=context_fn)


def _static_breakdown(tracker: Tracker) -> dict[str, int]:
    return breakdown(list(tracker.live_records()))


def _segments(tracker: Tracker) -> dict[tuple[str, str], SegmentPeak]:
    out = {}
    for (phase, seg), p in tracker.peaks.items():
        snap = tracker.snapshot(p.event)
        out[(phase, seg)] = SegmentPeak(snap.total, breakdown(snap.records), p.module)
    return out


def _train_step(spec: ModelSpec, setup: Setup, built: Built, tracker: Tracker,
                autocast: EmulatedAutocast | None) -> RunResult:
    model = built.model
    ids = _inputs(setup, setup.seq)
    labels = torch.empty_like(ids)          # the collator's labels: a copy of input_ids
    for x in (ids, labels):
        rec = tracker.see(x, "inputs")
        if rec is not None:
            rec.tag, rec.component = "buffer", "buffers/inputs"
    tracker.counting = True
    tracker.enter("load")                   # weights as loaded (and the batch)
    tracker.counting = False
    # ---- optimizer states exist from the first step on: a warm-up step creates them (not counted)
    opt = _optimizer(setup, built.trainable)
    if opt is not None:
        for p in built.trainable:
            p.grad = torch.empty_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for st in opt.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor):
                    rec = tracker.record_of(v)
                    if rec is not None:
                        rec.tag = "optimizer_state"
    hooks = [p.register_post_accumulate_grad_hook(_grad_hook(tracker)) for p in built.trainable]
    static = _static_breakdown(tracker)
    tracker.counting = True

    # ---- forward + loss
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    orig_loss = inner.loss_function

    def loss_function(*a: Any, **k: Any) -> Any:
        tracker.segment = "loss"
        tracker.module_stack.append("loss")
        try:
            return orig_loss(*a, **k)
        finally:
            tracker.module_stack.pop()

    inner.loss_function = loss_function
    saved_hooks = torch.autograd.graph.saved_tensors_hooks(_pack(tracker), _unpack)
    tracker.enter("forward", "embedding")
    region = autocast.region(True) if autocast is not None else contextlib.nullcontext()
    with saved_hooks, region:
        out = model(input_ids=ids, labels=labels)
        loss = out.loss
    del out
    _retag_parameters(built, tracker)
    loss_rec = tracker.record_of(loss)
    # what else is still alive is held for backward too: masks, rotary tables and position ids kept by the
    # checkpointed layers' closures (the layer inputs themselves were saved through _NoopSaveInputs)
    for r in tracker.live_records():
        if r.tag == "temporary" and r is not loss_rec:
            r.tag = "activation"
            r.category = "other"
    tracker.mark("forward end")
    saved_records = [r for r in tracker.live_records() if r.tag == "activation"]
    saved = breakdown(saved_records)
    per_layer: dict[int, int] = defaultdict(int)
    per_layer_raw: dict[int, int] = defaultdict(int)
    raw_total = sum(r.raw_nbytes for r in saved_records if r.category != "weight_cast")
    for r in saved_records:
        if r.layer is not None and r.category != "weight_cast":
            per_layer[r.layer] += r.nbytes
            per_layer_raw[r.layer] += r.raw_nbytes

    # ---- backward
    tracker.enter("backward", "head")
    loss.backward()
    del loss
    grads = sum(r.nbytes for r in tracker.live_records() if r.tag == "gradient")

    # ---- optimizer step + zero_grad
    tracker.enter("optimizer")
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    for h in hooks:
        h.remove()
    inner.loss_function = orig_loss
    _retag_parameters(built, tracker)
    return RunResult(built.num_layers, {k: v.bytes for k, v in tracker.phase_peaks().items()}, _segments(tracker),
                     static, grads, saved, dict(per_layer), dict(per_layer_raw), raw_total)


def _grad_hook(tracker: Tracker):
    def hook(p: torch.Tensor) -> None:
        if p.grad is not None:
            rec = tracker.record_of(p.grad)
            if rec is not None:
                rec.tag = "gradient"
    return hook


def _pack(tracker: Tracker):
    """saved_tensors_hooks pack hook: what autograd saves is an activation of the module running now."""
    def pack(t: torch.Tensor) -> torch.Tensor:
        rec = tracker.record_of(t)
        if rec is not None and rec.tag == "temporary":
            rec.tag = "activation"
            if rec.category == "weight_cast":
                return t
            if rec.category == "rotary":        # cos/sin: made once per forward, shared by every layer
                rec.category = "other"
                return t
            top = tracker.module_stack[-1] if tracker.module_stack else ""
            if top in tracker.layer_names and tracker.checkpointing:
                # torch.utils.checkpoint._NoopSaveInputs: the layer's inputs, kept for the recompute
                rec.category = "checkpoint_inputs"
            else:
                rec.category = category_of(top, tracker.segment)
            rec.layer = tracker.layer_stack[-1] if tracker.layer_stack else None
        return t
    return pack


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


def _retag_parameters(built: Built, tracker: Tracker) -> None:
    """Tag the current storages of parameters, quantization state and buffers (a parameter's storage can
    change during the step: bitsandbytes casts a fp32 bias to the compute dtype at the first forward)."""
    from .build import nf4_inner_tensors, param_component, quant_state_tensors

    roles = built.roles
    for name, p in built.model.named_parameters():
        rec = tracker.record_of(p)
        if rec is not None:
            rec.tag, rec.component = "parameter", param_component(name, p, roles)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            for q in quant_state_tensors(qs):
                rec = tracker.record_of(q)
                if rec is not None:
                    rec.tag, rec.component = "parameter", "weights/quant_constants"
    for t, comp in nf4_inner_tensors(built.model):
        rec = tracker.record_of(t)
        if rec is not None:
            rec.tag, rec.component = "parameter", comp
    for _name, b in built.model.named_buffers():
        rec = tracker.record_of(b)
        if rec is not None and rec.tag != "parameter":
            rec.tag, rec.component = "buffer", "buffers/model"


def _new_cache(model: Any, setup: Setup) -> dict[str, Any]:
    """The cache ``generate`` builds for ``setup.cache`` (generation/utils.py ``_prepare_cache_for_generation``):
    none given for ``dynamic`` (the model builds ``DynamicCache(config)``), a ``StaticCache`` of ``--cache-len``
    (0 = ``--seq``) positions for ``static`` and ``sliding``. The quantized caches need optimum-quanto and the
    offloaded one CUDA streams: neither runs on the meta device."""
    if setup.cache == "dynamic":
        return {}
    if setup.cache in ("static", "sliding"):
        from transformers import StaticCache

        return {"cache": StaticCache(config=model.config, max_cache_len=setup.cache_len or setup.seq)}
    raise SimulationError(f"cannot simulate --cache {setup.cache}: "
                          + ("QuantizedCache needs optimum-quanto's kernels on real tensors"
                             if setup.cache.startswith("quantized") else
                             "DynamicCache(offloading=True) copies through CUDA streams")
                          + "; use --mode analytic")


def _inference(spec: ModelSpec, setup: Setup, built: Built, tracker: Tracker) -> RunResult:
    model = built.model
    prompt = setup.seq - setup.new_tokens
    static = _static_breakdown(tracker)
    tracker.counting = True
    tracker.enter("load")
    with torch.no_grad():
        tracker.enter("prefill", "embedding")
        out = model(input_ids=_inputs(setup, prompt), use_cache=True, logits_to_keep=1, **_new_cache(model, setup))
        cache = out.past_key_values
        last = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)   # generate(): fp32 next-token logits
        probs = last.softmax(-1)                                          # _sample: the sampler's fp32 probabilities
        del probs
        del out
        kv = _tag_cache(cache, tracker)
        if setup.new_tokens:
            # the decode step that peaks is the last one: the cache holds seq - 1 tokens
            tracker.counting = False
            del cache, last
            tracker.phase = "prefill (cache fill)"
            out = model(input_ids=_inputs(setup, setup.seq - 1), use_cache=True, logits_to_keep=1,
                        **_new_cache(model, setup))
            cache = out.past_key_values
            last = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
            del out
            _tag_cache(cache, tracker)
            tracker.counting = True
            tracker.enter("decode", "embedding")
            out = model(input_ids=_inputs(setup, 1), past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
            probs = nxt.softmax(-1)
            del out, nxt, probs
            kv = _tag_cache(cache, tracker)
        del last
    return RunResult(built.num_layers, {k: v.bytes for k, v in tracker.phase_peaks().items()}, _segments(tracker),
                     static, 0, {}, {}, {}, kv_cache=kv)


def _tag_cache(cache: Any, tracker: Tracker) -> int:
    total = 0
    seen: set[int] = set()
    for layer in getattr(cache, "layers", []) or []:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                rec = tracker.record_of(t)
                if rec is not None and rec.rid not in seen:
                    seen.add(rec.rid)
                    rec.tag = "kv_cache"
                    total += rec.nbytes
    return total
