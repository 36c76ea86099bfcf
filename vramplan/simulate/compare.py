"""Analytic estimate vs simulation, quantity by quantity (the agreement tests and ``bench_simulate`` use it).

Both sides are evaluated at the same model depth, batch and sequence length. Exact quantities (weights,
adapters, quantization constants, gradients, optimizer states) must match to the byte; activations are
compared per decoder layer (what autograd saves in layer *i*, autocast copies of LoRA weights included), for
the head (final norm, ``lm_head``), the loss's saved log-probabilities, checkpointed layer inputs, and in
total. A full fine-tune's cached bf16 copies of the fp32 weights are compared apart
(``buffers/autocast_weight_casts``), as the estimator reports them.

:func:`compare_components` puts an analytic and a simulated Estimate side by side, component by component:
``vramplan plan --mode both`` prints those rows (:mod:`vramplan.cli.simulate_cmd`) and
``vramplan.plan(..., mode="both")`` returns them in ``extra["comparison"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..dtypes import BYTES, alloc
from ..estimate.result import Estimate
from ..setup import Setup
from ..shapes.spec import ModelSpec
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
    """The analytic side, read from the estimator (never restated here): weights/adapters by component,
    gradients, optimizer states, activations by part, the autocast weight copies held for backward."""
    from ..estimate import estimate
    from ..estimate.logits import final_logit_softcapping, loss_bytes
    from ..estimate.states import model_states

    est = estimate(spec, setup)
    out: dict[str, int] = {}
    for c in est.components:
        if c.group in EXACT_GROUPS:
            out[c.name] = c.bytes
    if not setup.training:
        # the cache the run ends with: after the last decode step, or after the prefill (the simulation's
        # result.kv_cache), not the estimate's component (the cache at its peak, mid-prefill)
        from ..estimate.inference import kv_cache_bytes, prefill_cache_bytes

        out["kv_cache"] = (kv_cache_bytes(spec, setup.batch, setup.seq, setup.compute_dtype, setup.cache,
                                          setup.cache_len) if setup.new_tokens
                           else prefill_cache_bytes(spec, setup))
        return out
    states = model_states(spec, setup)
    st = states.compute
    T, bss = setup.tokens, setup.batch * setup.seq * setup.seq
    out["gradients"] = states.grads
    out["optimizer/states"] = states.opt_gpu
    if setup.grad_ckpt:
        out["activations/checkpoint_inputs"] = spec.num_layers * alloc(T * spec.hidden_size * BYTES[st.resid_dtype])
    else:
        for i, tr in enumerate(st.layer_traces):
            out[f"activations/layer {i}"] = tr.saved_at(T, bss)
    out["activations/head"] = st.head.saved_at(T, bss)
    if setup.loss == "standard":
        # fp32 log-probs (+ Gemma-2 softcap's tanh output), whether or not live at the estimator's peak phase
        out["logits/log_softmax"] = loss_bytes(T, spec.vocab_size, spec.hidden_size, BYTES[st.logits_dtype],
                                               BYTES[setup.compute_dtype], False, final_logit_softcapping(spec)).saved
    if setup.autocast and setup.method == "full":
        # what autograd saved at the end of forward: the copies held at the start of backward
        out["buffers/autocast_weight_casts"] = states.casts_backward
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


def failures(rows: list[Row], tolerance: float = 0.03) -> list[str]:
    """Rows that disagree: exact rows by any byte, others beyond ``tolerance`` of the analytic value."""
    bad = []
    for r in rows:
        if r.exact:
            if r.diff:
                bad.append(f"{r.name}: analytic {r.analytic:,} B, simulated {r.simulated:,} B (must be equal)")
            continue
        if abs(r.diff) <= tolerance * max(r.analytic, 1):
            continue
        bad.append(f"{r.name}: analytic {r.analytic:,} B, simulated {r.simulated:,} B ({100 * r.rel:+.2f} %)")
    return bad


def compare_components(analytic: Estimate, simulated: Estimate) -> list[dict[str, Any]]:
    """Per component: analytic bytes, simulated bytes, difference (simulated - analytic), then the counters.

    A component only one side reports has 0 on the other (e.g. ``activations/recomputed_layer`` vs the
    analytic ``backward (layers)`` split); group subtotals follow the components.
    """
    a, s = analytic.breakdown_bytes, simulated.breakdown_bytes
    rows: list[dict[str, Any]] = []
    for name in sorted(dict.fromkeys([*a, *s]), key=lambda n: (n.split("/", 1)[0], n)):
        rows.append({"component": name, "analytic_bytes": a.get(name, 0), "simulated_bytes": s.get(name, 0),
                     "diff_bytes": s.get(name, 0) - a.get(name, 0)})
    groups: dict[str, list[int]] = {}
    for r in rows:
        g = groups.setdefault(r["component"].split("/", 1)[0] + "/*", [0, 0])
        g[0] += r["analytic_bytes"]
        g[1] += r["simulated_bytes"]
    for g, (x, y) in groups.items():
        rows.append({"component": g, "analytic_bytes": x, "simulated_bytes": y, "diff_bytes": y - x})
    for key, label in (("peak_allocated_bytes", "peak allocated"), ("peak_reserved_bytes", "peak reserved"),
                       ("device_used_bytes", "device used")):
        x, y = getattr(analytic, key), getattr(simulated, key)
        rows.append({"component": label, "analytic_bytes": x, "simulated_bytes": y, "diff_bytes": y - x})
    return rows
