"""Simulate a few decoder layers and extrapolate to the full depth.

Decoder layers repeat: everything a step holds is ``a + b * layers`` at every comparable instant — weights,
gradients, states, saved activations; the peak of a phase is the largest of a few such lines (the loss at the
end of forward; the first layer of the backward, where all activations are still held; the last one, where
all gradients exist). So the step is simulated at two depths, ``2p`` and ``3p`` layers where ``p`` is the
period of the layer pattern (1 for most models; 2 for alternating sliding/full attention, ...), each
segment's peak — and its breakdown by component — is recorded for the first period, the last period, the
head and the embedding, and each is extended along its line to the model's depth. A model whose layers do not
repeat with a period dividing the depth is simulated in full.

The layer pattern is read from the spec and the LoRA plan without torch: the tensors of each layer (names
without the index, shapes, roles), the adapters placed in it, and per-layer config lists (``layer_types``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import SetupError
from ..setup import Setup
from ..shapes.spec import ModelSpec
from .step import RunResult, SegmentPeak

_LAYER_NUM = re.compile(r"\.\d+\.")


def layer_signatures(spec: ModelSpec, setup: Setup) -> list[tuple]:
    """One hashable description per decoder layer; equal descriptions simulate identically."""
    from ..lora import plan_lora

    L = spec.num_layers
    sigs: list[list] = [[] for _ in range(L)]
    for t in spec.tensors:
        if t.layer is not None and 0 <= t.layer < L:
            sigs[t.layer].append((_LAYER_NUM.sub(".#.", t.name, count=1), t.shape, t.role))
    if setup.method in ("lora", "qlora") and setup.lora is not None:
        plan = plan_lora(spec, setup.lora)
        for a in plan.adapters:
            if a.layer is not None and 0 <= a.layer < L:
                sigs[a.layer].append(("lora", _LAYER_NUM.sub(".#.", a.name + ".", count=1), a.rank,
                                      a.in_features, a.out_features, a.frozen))
        for sm in plan.saved:
            m = re.search(r"\.(\d+)(\.|$)", sm.module)
            if m and int(m.group(1)) < L:
                sigs[int(m.group(1))].append(("saved", _LAYER_NUM.sub(".#.", sm.module + ".", count=1), sm.params))
    for key, value in _per_layer_config(spec).items():
        for i in range(L):
            sigs[i].append((key, repr(value[i])))
    return [tuple(sorted(s, key=repr)) for s in sigs]


def _per_layer_config(spec: ModelSpec) -> dict[str, list]:
    """Per-layer lists of the model's config as transformers builds it (``layer_types`` is often derived in
    the config class from ``sliding_window_pattern`` and absent from config.json)."""
    L = spec.num_layers
    out = {k: v for k, v in spec.config.items() if isinstance(v, list) and len(v) == L and k != "architectures"}
    try:
        from .build import hf_config_for

        cfg = hf_config_for(spec, None)
    except Exception:  # noqa: BLE001 - the signature falls back to the raw config
        return out
    for k, v in vars(cfg).items():
        if isinstance(v, list) and len(v) == L and k != "architectures":
            out[k] = v
    return out


def period(sigs: list[tuple]) -> int | None:
    """Smallest ``p`` dividing the depth with ``sigs[i] == sigs[i % p]`` (at least two repeats); ``None``
    when there is none."""
    L = len(sigs)
    for p in range(1, L // 2 + 1):
        if L % p == 0 and all(sigs[i] == sigs[i % p] for i in range(L)):
            return p
    return None


@dataclass(frozen=True)
class Plan:
    """Which depths to simulate."""

    num_layers: int
    depths: tuple[int, ...]          # one depth (= num_layers: a full run) or two
    period: int
    reason: str

    @property
    def extrapolated(self) -> bool:
        return len(self.depths) == 2


def plan_depths(spec: ModelSpec, setup: Setup, sim_layers: str | int = "auto") -> Plan:
    """Depths to simulate for ``--sim-layers`` (``auto``, ``all`` or a layer count ``N``: ``N`` and ``N + p``).

    Raises:
        SetupError: ``N`` is not a positive multiple of the layer period, or is below two periods.
    """
    L = spec.num_layers
    if str(sim_layers).lower() == "all":
        return Plan(L, (L,), 1, "all layers (--sim-layers all)")
    p = period(layer_signatures(spec, setup))
    if p is None:
        return Plan(L, (L,), 1, "all layers: they do not repeat with a period dividing the depth")
    if str(sim_layers).lower() == "auto":
        n1 = 2 * p
    else:
        try:
            n1 = int(sim_layers)
        except ValueError:
            raise SetupError(f"--sim-layers {sim_layers!r} must be auto, all or a layer count") from None
        if n1 < 2 * p or n1 % p:
            raise SetupError(f"--sim-layers {n1} must be a multiple of the layer period {p} and at least {2 * p} "
                             "(two periods, so that the first and last layers differ); or use auto / all")
    n2 = n1 + p
    if n2 >= L:
        return Plan(L, (L,), p, f"all layers: the model has only {L}")
    return Plan(L, (n1, n2), p, f"{n1} and {n2} layers (period {p}), extrapolated to {L}")


# -------------------------------------------------------------------------------------------- combining
@dataclass
class Combined:
    """A full-depth step: measured (one run) or extrapolated (two runs)."""

    plan: Plan
    phases: dict[str, int]
    segments: dict[tuple[str, str], SegmentPeak]
    static: dict[str, int]
    gradients: int
    saved: dict[str, int]
    saved_per_layer: list[int]
    kv_cache: int
    runs: list[RunResult] = field(default_factory=list)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda k: self.phases[k])

    @property
    def peak_bytes(self) -> int:
        return self.phases[self.peak_phase]

    def peak_segment(self) -> SegmentPeak:
        phase = self.peak_phase
        return max((s for (p, _), s in self.segments.items() if p == phase), key=lambda s: s.bytes)


def _seg_class(seg: str, n: int, p: int) -> str | None:
    if not seg.startswith("layer "):
        return seg
    i = int(seg.split()[1])
    if i < p:
        return f"first period, layer +{i}"
    if i >= n - p:
        return f"last period, layer +{i - (n - p)}"
    return None


def _line(v1: int, v2: int, x1: int, x2: int, x: int) -> int:
    return v1 + (v2 - v1) * (x - x1) // (x2 - x1)


def _dict_line(d1: dict[str, int], d2: dict[str, int], x1: int, x2: int, x: int) -> dict[str, int]:
    out = {}
    for k in dict.fromkeys([*d1, *d2]):
        v = _line(d1.get(k, 0), d2.get(k, 0), x1, x2, x)
        if v:
            out[k] = max(v, 0)
    return out


def single(plan: Plan, r: RunResult) -> Combined:
    return Combined(plan, dict(r.phases), dict(r.segments), dict(r.static), r.gradients, dict(r.saved),
                    [r.saved_per_layer.get(i, 0) for i in range(r.num_layers)], r.kv_cache, [r])


def combine(plan: Plan, r1: RunResult, r2: RunResult) -> Combined:
    """Extend every quantity of the two runs along its line to ``plan.num_layers``."""
    x1, x2, x, p = r1.num_layers, r2.num_layers, plan.num_layers, plan.period
    segs1 = {(ph, _seg_class(s, x1, p)): v for (ph, s), v in r1.segments.items()}
    segs2 = {(ph, _seg_class(s, x2, p)): v for (ph, s), v in r2.segments.items()}
    segments: dict[tuple[str, str], SegmentPeak] = {}
    for key in segs1.keys() & segs2.keys():
        if key[1] is None:
            continue
        a, b = segs1[key], segs2[key]
        segments[key] = SegmentPeak(_line(a.bytes, b.bytes, x1, x2, x),
                                    _dict_line(a.breakdown, b.breakdown, x1, x2, x), b.where)
    phases: dict[str, int] = {}
    for (ph, _), sp in segments.items():
        phases[ph] = max(phases.get(ph, 0), sp.bytes)
    per_layer = []
    for j in range(x):
        o = j % p
        if j < p:
            src = o
        elif j >= x - p:
            src = x2 - p + o
        else:
            src = p + o
        per_layer.append(r2.saved_per_layer.get(src, 0))
    return Combined(plan, phases, segments, _dict_line(r1.static, r2.static, x1, x2, x),
                    _line(r1.gradients, r2.gradients, x1, x2, x), _dict_line(r1.saved, r2.saved, x1, x2, x),
                    per_layer, _line(r1.kv_cache, r2.kv_cache, x1, x2, x), [r1, r2])


def simulate_combined(spec: ModelSpec, setup: Setup, sim_layers: str | int = "auto",
                      progress: Callable[[str], None] | None = None) -> Combined:
    """Run the simulation the plan asks for and combine the runs (``progress`` hears of each run first)."""
    from .step import run

    plan = plan_depths(spec, setup, sim_layers)
    runs = []
    for i, n in enumerate(plan.depths, 1):
        if progress is not None:
            progress(f"simulating {n} of {spec.num_layers} layers on meta tensors (run {i} of {len(plan.depths)})")
        runs.append(run(spec, setup, n))
    return single(plan, runs[0]) if len(runs) == 1 else combine(plan, runs[0], runs[1])
