"""``--fp32-norms-embeddings`` (axolotl's full fine-tuning, issue 14) on a real-size model, from first principles;
the byte-exact comparison with axolotl's real step is tests/estimate/test_stack_axolotl_cpu.py."""

from __future__ import annotations

import pytest
from cli_entry import vp

from vramplan.dtypes import BYTES
from vramplan.estimate.estimator import estimate
from vramplan.estimate.states import model_states
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.profiles import resolve_model
from vramplan.setup import Setup, ignored_options

SPEC = resolve_model("llama-3-8b").spec


def _setup(**kw) -> Setup:
    return Setup.create(method="full", precision="bf16-true", batch=1, seq=2048, **kw)


def test_only_embeddings_head_and_norms_become_fp32():
    """Llama-3-8B: embed_tokens and lm_head are 128,256 x 4,096 each, the norms 65 x 4,096 (2 per layer + the
    final one, config.json); every other weight stays bf16. The weights grow by 2 B for each of those parameters."""
    base = static_structure(SPEC, structural_setup(_setup()))
    up = static_structure(SPEC, structural_setup(_setup(fp32_norms_embeddings=True)))
    fp32 = sum(p.numel for p in up.placements if p.dtype == "fp32")
    assert fp32 == 2 * 128256 * 4096 + (2 * 32 + 1) * 4096
    assert {p.dtype for p in base.placements} == {"bf16"}
    assert sum(p.numel * BYTES[p.dtype] for p in up.placements) - \
        sum(p.numel * BYTES[p.dtype] for p in base.placements) == 2 * fp32
    assert all(p.trainable for p in up.placements) and up.resid_dtype == "fp32" and base.resid_dtype == "bf16"


def test_runs_under_autocast_and_casts_only_the_fp32_head():
    """Autocast is on (bf16 Linears fed an fp32 stream would not run without it); only the fp32 head is a
    trainable fp32 matmul weight, so autocast's cache holds its bf16 copy alone: V x H x 2 B."""
    s = _setup(fp32_norms_embeddings=True)
    assert s.autocast and not _setup().autocast
    ms = model_states(SPEC, structural_setup(s))
    assert ms.casts == ms.casts_head == 128256 * 4096 * 2
    assert model_states(SPEC, structural_setup(_setup())).casts == 0


def test_the_fp32_part_costs_16_bytes_a_parameter_in_weights_gradients_and_adam():
    """fp32 weight + fp32 gradient + two fp32 AdamW moments (16 B) instead of 2 + 2 + 2 + 2 (8 B)."""
    up, base = (model_states(SPEC, structural_setup(_setup(fp32_norms_embeddings=f))) for f in (True, False))
    n = 2 * 128256 * 4096 + 65 * 4096
    assert up.grads - base.grads == 2 * n
    assert up.opt_gpu - base.opt_gpu == 4 * n
    assert estimate(SPEC, _setup(fp32_norms_embeddings=True)).peak_allocated_bytes > \
        estimate(SPEC, _setup()).peak_allocated_bytes + 8 * n


def test_said_and_ignored():
    e = estimate(SPEC, _setup(fp32_norms_embeddings=True))
    assert any(a.startswith("--fp32-norms-embeddings") for a in e.assumptions)
    mixed = Setup.create(method="full", precision="bf16-mixed", fp32_norms_embeddings=True)
    assert any("--fp32-norms-embeddings ignored" in w for w in
               ignored_options({"fp32_norms_embeddings": True}, mixed))
    inf = Setup.create(method="inference", fp32_norms_embeddings=True)
    assert any("--fp32-norms-embeddings" in w and "does not train" in w for w in
               ignored_options({"fp32_norms_embeddings": True}, inf))


@pytest.mark.parametrize("flag", ["--fp32-norms-embeddings", "--no-fp32-norms-embeddings"])
def test_cli_flag(flag):
    r = vp("plan", "llama-3-8b", "--method", "full", "--stack", "axolotl", flag, "--json")
    assert r.exit_code == 0, r.output
    import json
    assert json.loads(r.output)["setup"]["fp32_norms_embeddings"] is (flag == "--fp32-norms-embeddings")


def test_simulation_refuses_it():
    from vramplan.errors import SimulationError
    from vramplan.simulate.components import check_supported
    with pytest.raises(SimulationError, match="--fp32-norms-embeddings"):
        check_supported(_setup(fp32_norms_embeddings=True))
