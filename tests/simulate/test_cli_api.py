"""``vramplan plan --mode simulate|both`` and ``vramplan.plan(..., mode=...)``: output, exit codes, errors."""

from __future__ import annotations

import json

import pytest
from sim_helpers import tiny_config, vp, vp_json

import vramplan
from vramplan.errors import SimulationError
from vramplan.setup import Setup


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(tiny_config(layers=6)))
    return str(path)


@pytest.fixture(scope="module")
def jetmoe(tmp_path_factory) -> str:
    """A transformers architecture whose MoE gate calls ``expert_size.tolist()`` (data-dependent)."""
    cfg = dict(model_type="jetmoe", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, kv_channels=16, intermediate_size=128, vocab_size=128,
               max_position_embeddings=512, num_local_experts=4, num_experts_per_tok=2)
    path = tmp_path_factory.mktemp("jetmoe") / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_simulate_mode_says_which_layers_it_ran(tiny):
    d = vp_json("plan", tiny, "--mode", "simulate", "--seq", "64")
    sim = d["simulation"]
    assert sim["layers"] == [2, 3] and sim["num_layers"] == 6 and sim["extrapolated"] is True
    assert d["breakdown_bytes"]["weights/linear"] > 0 and d["peak_phase"] == "backward"
    text = vp("plan", tiny, "--mode", "simulate", "--seq", "64", "--sim-layers", "all")
    assert text.exit_code == 0
    assert "layers: all layers (--sim-layers all)" in text.stdout


def test_both_mode_shows_the_difference_per_component(tiny):
    r = vp("plan", tiny, "--mode", "both", "--seq", "64", "--method", "full")
    assert r.exit_code == 0, r.stderr
    assert "analytic GiB" in r.stdout and "simulated GiB" in r.stdout and "diff GiB" in r.stdout
    assert "weights/linear" in r.stdout and "peak allocated" in r.stdout
    d = vp_json("plan", tiny, "--mode", "both", "--seq", "64", "--method", "full")
    rows = {x["component"]: x for x in d["comparison"]}
    assert rows["weights/linear"]["diff_bytes"] == 0
    assert rows["optimizer/states"]["diff_bytes"] == 0


def test_does_not_fit_exits_1(tiny):
    r = vp("plan", tiny, "--mode", "simulate", "--seq", "64", "--gpu", "1MB")
    assert r.exit_code == 1 and "DOES NOT FIT" in r.stdout


def test_data_dependent_architecture_exits_2_naming_the_op(jetmoe):
    r = vp("plan", jetmoe, "--mode", "simulate", "--method", "full", "--seq", "32")
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert err.count("\n") == 0, "one line"
    assert "aten::_to_copy" in err and "tolist" in err and "modeling_jetmoe.py" in err
    assert "--mode analytic" in err


def test_both_mode_falls_back_to_analytic_with_a_warning(tiny):
    """LLM.int8: bitsandbytes picks outlier columns by value, which meta tensors cannot do."""
    r = vp("plan", tiny, "--mode", "both", "--method", "qlora", "--quant", "int8", "--seq", "32")
    assert r.exit_code == 0
    assert "warning" in r.stderr and "bitsandbytes::int8_vectorwise_quant" in r.stderr
    assert "analytic estimate only" in r.stderr
    assert "peak allocated" in r.stdout and "simulated GiB" not in r.stdout


def test_api_modes(tiny, jetmoe):
    est = vramplan.plan(tiny, mode="simulate", seq=64, method="full")
    assert est.extra["mode"] == "simulate" and est.extra["simulation"]["layers"] == [2, 3]
    both = vramplan.plan(tiny, mode="both", seq=64, method="full")
    assert both.extra["analytic"]["peak_allocated_bytes"] > 0 and both.extra["comparison"]
    fallback = vramplan.plan(tiny, mode="both", seq=32, method="qlora", quant="int8")
    assert "mode" not in fallback.extra and any("outlier" in w for w in fallback.warnings)
    with pytest.raises(SimulationError, match="tolist"):
        vramplan.plan(jetmoe, mode="simulate", seq=32, method="full")


def test_setups_the_simulation_does_not_cover_raise(tiny):
    from vramplan.profiles import resolve_model
    from vramplan.simulate import simulate

    spec = resolve_model(tiny).spec
    with pytest.raises(SimulationError, match="one GPU"):
        simulate(spec, Setup.create(method="full", gpus=2))
    with pytest.raises(SimulationError, match="unified memory"):
        simulate(spec, Setup.create(method="lora", optim="paged-adamw"))


def test_simulation_reports_each_run_before_it_starts(tiny):
    """``--mode both`` takes seconds: the command line shows one line per simulated run (issue 18)."""
    from vramplan.profiles import resolve_model
    from vramplan.setup import Setup
    from vramplan.simulate import simulate

    heard: list[str] = []
    simulate(resolve_model(tiny).spec, Setup.create(method="full", seq=32), progress=heard.append)
    assert heard == ["simulating 2 of 6 layers on meta tensors (run 1 of 2)",
                     "simulating 3 of 6 layers on meta tensors (run 2 of 2)"]


@pytest.mark.parametrize("flags", [("--loss", "litgpt-chunked"), ("--kv-expand",), ("--optim-in-bwd", "--method", "full"),
                                   ("--stack", "litgpt", "--method", "qlora")])
def test_another_stacks_step_is_refused_not_simulated_as_hf(tiny, flags):
    """The simulation runs transformers + peft's step: a stack switch it would silently drop is one error line."""
    r = vp("plan", tiny, "--mode", "simulate", "--seq", "32", *flags)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--mode analytic" in r.stderr


def test_a_pre_quantized_checkpoint_is_not_simulated_as_bf16():
    """Qwen2.5-7B-Instruct-GPTQ-Int4 is stored as GPTQ (profiles/quantized.yaml): simulate refuses, both falls back."""
    r = vp("plan", "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "--mode", "simulate")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--quant gptq" in r.stderr
    r = vp("plan", "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "--mode", "both", "--method", "inference", "--seq", "64")
    assert r.exit_code == 0 and "analytic estimate only" in r.stderr
