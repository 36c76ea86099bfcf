"""What the frameworks' CPU cross-checks (test_stack_*_cpu.py) compare alike: the parameters a framework built,
as ``benchmarks/frameworks/_step.py params`` records them, against vramplan's placements and adapters."""

from __future__ import annotations

from vramplan.dtypes import BYTES


def assert_params_as_built(measured: dict[str, dict], st) -> int:
    """Every parameter by name: dtype (``nf4`` for a bitsandbytes ``Params4bit``), whether it trains, its storage
    bytes, equal to the structure ``st``'s; returns the measured trainable count."""
    expected = {}
    for p in st.placements:
        quantized = dict(p.parts).get("weights/quantized") if p.quant != "none" else None
        expected[p.tensor.name] = {"dtype": p.dtype, "trainable": p.trainable,
                                   "bytes": quantized if quantized is not None else p.numel * BYTES[p.dtype]}
    for a in st.adapters:
        expected[a.name] = {"dtype": a.dtype, "trainable": not a.frozen, "bytes": a.numel * BYTES[a.dtype]}
    got = {n: {k: v for k, v in e.items() if k in ("dtype", "trainable", "bytes")} for n, e in measured.items()}
    assert got == expected, [(n, got.get(n), expected.get(n)) for n in sorted(got.keys() | expected.keys())
                             if got.get(n) != expected.get(n)]
    return sum(e["numel"] for e in measured.values() if e["trainable"])
