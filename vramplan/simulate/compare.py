"""Analytic estimate vs simulation, quantity by quantity (the agreement tests and ``bench_simulate`` use it).

Both sides are evaluated at the same model depth, batch and sequence length. Exact quantities (weights,
adapters, quantization constants, gradients, optimizer states) must match to the byte; activations are
compared per decoder layer (what autograd saves in layer *i*, autocast copies of LoRA weights included), for
the head (final norm, ``lm_head``), the loss's saved log-probabilities, checkpointed layer inputs, and in
total. A full fine-tune's cached bf16 copies of the fp32 weights are compared apart
(``buffers/autocast_weight_casts``), as the estimator reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import BYTES, alloc
from ..setup import Setup
from ..spec.model import ModelSpec
from .step import RunResult

EXACT_GROUPS = ("weights", "adapters")


@dataclass(frozen=True)
class Row:
    """One compared quantity. ``exact`` rows must be equal; the others are held to ``tolerance``."""

    name: str
    analytic: int
    simulated: int
    exact: bool

    @property
    def diff(self) -> int:
        return self.simulated - self.analytic

    @property
    def rel(self) -> float:
        return self.diff / self.analytic if self.analytic else (0.0 if self.simulated == 0 else float("inf"))


def analytic_quantities(spec: ModelSpec, setup: Setup) -> dict[str, int]:
    """The analytic side: weights/adapters by component, gradients, optimizer states, activations by part."""
    from ..estimate import estimate
    from ..estimate.model import _static, optimizer_states

    est = estimate(spec, setup)
    st = _static(spec, setup.with_(batch=1, seq=1, new_tokens=0))
    T, bss = setup.tokens, setup.batch * setup.seq * setup.seq
    out: dict[str, int] = {}
    for c in est.components:
        if c.group in EXACT_GROUPS:
            out[c.name] = c.bytes
    if not setup.training:
        out["kv_cache"] = est.component("kv_cache")
        return out
    out["gradients"] = sum(alloc(t.numel * BYTES[t.dtype]) for t in st.trainables)
    out["optimizer/states"] = optimizer_states(st.trainables, setup)[0]
    resid = alloc(T * spec.hidden_size * BYTES[st.resid_dtype])
    if setup.grad_ckpt:
        out["activations/checkpoint_inputs"] = spec.num_layers * resid
    else:
        for i, tr in enumerate(st.layer_traces):
            out[f"activations/layer {i}"] = tr.saved_at(T, bss)
    out["activations/head"] = st.head.saved_at(T, bss)
    if setup.loss == "standard":
        # the estimator's logits_saved: fp32 log-probs (+ Gemma-2 softcap's tanh output), listed at its peak
        lsm = est.component("logits/log_softmax")
        if not lsm:        # not live at the estimator's peak phase: its formula (model.py::estimate)
            lsm = alloc(T * spec.vocab_size * 4)
            if spec.model_type.startswith("gemma") and spec.config.get("final_logit_softcapping"):
                lsm += alloc(T * spec.vocab_size * BYTES[getattr(st, "logits_dtype", setup.compute_dtype)])
        out["logits/log_softmax"] = lsm
    if setup.autocast and setup.method == "full":
        # model.py::estimate's ``casts`` (the component at the peak may hold only part of them)
        casts = sum(alloc(p.numel * 2) for p in st.placements
                    if p.trainable and p.tensor.module_type in ("linear", "conv1d", "experts")
                    and p.tensor.param_name != "bias")
        casts += sum(alloc(t.numel * 2) for t in spec.tensors if t.tied_to is not None and t.role == "lm_head")
        out["buffers/autocast_weight_casts"] = casts
    acts = sum(v for k, v in out.items() if k.startswith(("activations/", "logits/")))
    out["activations (total)"] = acts
    return out


def simulated_quantities(result: RunResult, setup: Setup) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in result.static.items():
        if k.split("/", 1)[0] in EXACT_GROUPS or k == "optimizer/states":
            out[k] = v
    if not setup.training:
        out["kv_cache"] = result.kv_cache
        return out
    out["gradients"] = result.gradients
    out.setdefault("optimizer/states", 0)
    if setup.grad_ckpt:
        out["activations/checkpoint_inputs"] = result.saved.get("activations/checkpoint_inputs", 0)
    else:
        for i in range(result.num_layers):
            out[f"activations/layer {i}"] = result.saved_per_layer.get(i, 0)
    out["activations/head"] = result.saved.get("activations/head", 0)
    if setup.loss == "standard":
        out["logits/log_softmax"] = result.saved.get("logits/log_softmax", 0)
    if setup.autocast and setup.method == "full":
        out["buffers/autocast_weight_casts"] = result.saved.get("buffers/autocast_weight_casts", 0)
    out["activations (total)"] = sum(v for k, v in result.saved.items()
                                     if k.startswith(("activations/", "logits/")))
    return out


def agreement(spec: ModelSpec, setup: Setup, result: RunResult) -> list[Row]:
    """Rows for every quantity either side reports (``spec`` must have ``result.num_layers`` layers)."""
    a = analytic_quantities(spec, setup)
    s = simulated_quantities(result, setup)
    rows = []
    for name in list(dict.fromkeys([*a, *s])):
        exact = name.split("/", 1)[0] in EXACT_GROUPS or name in ("gradients", "optimizer/states")
        rows.append(Row(name, a.get(name, 0), s.get(name, 0), exact))
    return rows


def spec_with_layers(spec: ModelSpec, num_layers: int) -> ModelSpec:
    """The same model with ``num_layers`` decoder layers (built by the same builder as ``spec``)."""
    from ..profiles import build_spec

    cfg = dict(spec.config)
    full = spec.num_layers
    for key, value in list(cfg.items()):
        if isinstance(value, list) and len(value) == full and key != "architectures":
            cfg[key] = value[:num_layers]
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if key in cfg:
            cfg[key] = num_layers
    return build_spec(cfg, spec.name, "config")


# ------------------------------------------------------------------------------------ known analytic gaps
@dataclass(frozen=True)
class Gap:
    """A difference the simulation explains: ``simulated ≈ analytic + bytes``, and why."""

    bytes: int
    reason: str


def known_gaps(spec: ModelSpec, setup: Setup) -> dict[str, Gap]:
    """Differences traced to the analytic estimator, by row (reported to its owner; delete when fixed).

    * A mixed-precision full fine-tune with gradient checkpointing: autocast's cached 16-bit weight copies
      are freed when the forward's autocast region exits; the checkpointed layers saved none, so only the
      head's copy is held at the start of backward — ``model.py::estimate``'s ``backward`` candidate adds
      every cast (15 GiB too much for Llama-3-8B; the overall peak, later in backward, is unaffected).
    * A transformers-5 MoE (fused experts, ``experts_implementation="grouped_mm"`` by default) under a
      mixed-precision full fine-tune: ``grouped_mm`` is not autocast-enabled and runs the fp32 experts as
      they are (``integrations/moe.py::_grouped_mm``, ``input.to(weight.dtype)``), so there are no cached
      16-bit copies of expert weights — ``model.py::estimate``'s ``casts`` counts ``module_type ==
      "experts"`` parameters.
    """
    out: dict[str, Gap] = {}
    if not setup.training:
        return out
    if setup.method == "full" and setup.autocast:
        experts = sum(alloc(t.numel * 2) for t in spec.tensors
                      if t.module_type == "experts" and t.tied_to is None)
        layered = 0
        if setup.grad_ckpt:
            layered = sum(alloc(t.numel * 2) for t in spec.tensors
                          if t.layer is not None and t.tied_to is None and t.param_name != "bias"
                          and t.module_type in ("linear", "conv1d"))
        reasons = []
        if experts:
            reasons.append("grouped_mm experts are not autocast-enabled: no 16-bit copies of fp32 expert weights")
        if layered:
            reasons.append("with checkpointing the decoder layers' copies die with autocast's cache when the "
                           "forward ends (the checkpoint saved none); only the head's copy is held for backward")
        if experts or layered:
            out["buffers/autocast_weight_casts"] = Gap(
                -(experts + layered), "; ".join(reasons) + " — analytic model.py::estimate counts all `casts` "
                                      "at the start of backward")
    return out


def failures(rows: list[Row], gaps: dict[str, Gap], tolerance: float = 0.03) -> list[str]:
    """Rows that disagree: exact rows by any byte, others beyond ``tolerance`` of the analytic value unless a
    known gap explains the difference (to within 0.5 %)."""
    bad = []
    for r in rows:
        if r.exact:
            if r.diff:
                bad.append(f"{r.name}: analytic {r.analytic:,} B, simulated {r.simulated:,} B (must be equal)")
            continue
        if abs(r.diff) <= tolerance * max(r.analytic, 1):
            continue
        g = gaps.get(r.name)
        if g is not None and abs(r.diff - g.bytes) <= 0.005 * max(r.analytic + g.bytes, 1):
            continue
        bad.append(f"{r.name}: analytic {r.analytic:,} B, simulated {r.simulated:,} B ({100 * r.rel:+.2f} %)"
                   + (f"; known gap {g.bytes:,} B ({g.reason})" if g else ""))
    return bad
