"""``--optim adamw-foreach``: torch.optim.AdamW as it runs by default on CUDA (``foreach=True``), the HF Trainer's
``adamw_torch`` (its default before transformers 4.54.0) and LitGPT's optimizer (issue 14). Expected values are
measured here on a real ``torch.optim.AdamW(foreach=True).step()`` under the simulation's allocation tracker
(512-B blocks): ``torch/optim/adam.py _multi_tensor_adam`` builds ``exp_avg_sq_sqrt = torch._foreach_sqrt(...)``
per (device, dtype) group and keeps it until the next group's list replaces it."""

from __future__ import annotations

import pytest

from vramplan.dtypes import alloc
from vramplan.estimate.optimizer import optimizer_states, optimizer_step_transient
from vramplan.estimate.weights import TrainableTensor
from vramplan.setup import Setup

torch = pytest.importorskip("torch")
from vramplan.simulate.tracker import Tracker  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _measured_step(shapes: list[tuple[tuple[int, ...], str]]) -> int:
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(*s, dtype=DTYPES[d])) for s, d in shapes]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(ps, lr=1e-3, foreach=True)
    opt.step()                                                   # the states exist from here on
    with Tracker() as tr:
        for p in ps:
            tr.see(p)
            tr.see(p.grad)
        for st in opt.state.values():
            for v in st.values():
                tr.see(v)
        base = tr.total
        tr.enter("step")
        opt.step()
    return tr.phase_peaks()["step"].bytes - base


def _trainables(shapes):
    out = []
    for i, (s, d) in enumerate(shapes):
        n = 1
        for k in s:
            n *= k
        out.append(TrainableTensor(f"p{i}", n, d, "adapters/lora", s))
    return tuple(out)


CASES = [
    [((1000, 300), "fp32")],
    [((1000, 300), "fp32"), ((5000,), "fp32"), ((300, 300), "fp32")],
    # two dtype groups: the bf16 group's sqrt list is made while the fp32 one is still bound
    [((1000, 300), "fp32"), ((5000,), "fp32"), ((700, 64), "bf16"), ((300, 300), "fp32")],
    [((700, 64), "bf16"), ((1000, 300), "fp32")],
]


@pytest.mark.parametrize("shapes", CASES)
def test_foreach_step_temporaries_match_torch(shapes):
    setup = Setup.create(method="full", optim="adamw-foreach")
    assert optimizer_step_transient(_trainables(shapes), setup) == _measured_step(shapes)


def test_foreach_states_are_the_moments_only_and_fused_adds_a_device_step():
    # foreach without capturable keeps state["step"] on the CPU (torch/optim/adam.py "special device hosting for
    # step"); fused puts a 0-dim fp32 step on the device: one 512-B block per parameter
    t = _trainables([((1000, 300), "fp32"), ((64,), "fp32")])
    foreach = optimizer_states(t, Setup.create(method="full", optim="adamw-foreach"))[0]
    fused = optimizer_states(t, Setup.create(method="full", optim="adamw"))[0]
    assert foreach == 2 * (alloc(1_200_000) + alloc(256))
    assert fused - foreach == 2 * 512
    assert optimizer_step_transient(t, Setup.create(method="full", optim="adamw")) == 0

