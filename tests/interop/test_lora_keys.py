"""The PEFT ``LoraConfig`` fields as each reader receives them (issue 15): PEFT objects and ``adapter_config.json``,
``BitsAndBytesConfig.llm_int8_skip_modules``, and the axolotl / ms-swift / TRL / LLaMA-Factory v1 keys that reach
PEFT, each expected value from the framework's own code (file:line at the commit the reader cites).

Where a count is checked, PEFT 0.21.2 computes it in the test on a meta model built from the same config.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
from cli_entry import vp

from vramplan.errors import ForeignConfigError, SetupError
from vramplan.interop.axolotl import read_axolotl
from vramplan.interop.hf import (
    UnmodelledFieldWarning,
    lora_from_peft,
    options_from_bnb,
    peft_lora_options,
    read_adapter_config,
)
from vramplan.interop.llama_factory import read_llama_factory_v1
from vramplan.interop.msswift import read_msswift
from vramplan.interop.trl import read_trl
from vramplan.lora import LoraConfig, plan_lora
from vramplan.planner.planfile import normalize_plan_keys
from vramplan.profiles import model_profiles
from vramplan.setup import setup_from_options
from vramplan.shapes.from_config import spec_from_config

peft = pytest.importorskip("peft")


def _tiny_qwen() -> dict[str, Any]:
    c = dict(model_profiles()["qwen2.5-0.5b"].config)
    c["num_hidden_layers"] = 2
    return c


def _peft_count(config: dict[str, Any], lora_config) -> tuple[int, int]:
    from vramplan.shapes.from_meta import meta_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(meta_model(config), lora_config, low_cpu_mem_usage=True) \
            .get_nb_trainable_parameters()


def _setup(options: dict[str, Any]):
    """The options as ``check`` reads them: through the plan-file readers, then into a Setup."""
    return setup_from_options(normalize_plan_keys({k: v for k, v in options.items() if v is not None}, "f", 1, 1))


# ------------------------------------------------------------------------------------------ peft objects
def _full_peft_config():
    return peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"],
                           rank_pattern={"o_proj": 4}, alpha_pattern={"q_proj": 64},
                           exclude_modules=["model.layers.0.self_attn.v_proj"], bias="lora_only", lora_bias=True,
                           trainable_token_indices={"embed_tokens": [1, 2, 3]}, use_rslora=True,
                           task_type="CAUSAL_LM")


def test_peft_object_every_memory_field_matches_peft() -> None:
    """The issue's complaint: rank_pattern, exclude_modules, bias, lora_bias, trainable_token_indices and
    alpha_pattern were dropped. Now the count is PEFT's own, and nothing modelled warns."""
    cfg = _full_peft_config()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnmodelledFieldWarning)
        lc = lora_from_peft(cfg)
    assert lc.rank_pattern == (("o_proj", 4),) and lc.alpha_pattern == (("q_proj", 64),)
    assert lc.exclude_modules == ("model.layers.0.self_attn.v_proj",) and lc.bias == "lora_only" and lc.lora_bias
    config = _tiny_qwen()
    plan = plan_lora(spec_from_config(config, name="qwen-2"), lc)
    assert (plan.trainable, plan.total) == _peft_count(config, _full_peft_config())


def test_adapter_config_json_as_peft_saves_it(tmp_path) -> None:
    """``save_pretrained`` writes adapter_config.json (sets as lists): read back, the same count as PEFT."""
    cfg = _full_peft_config()
    cfg.base_model_name_or_path = "Qwen/Qwen2.5-0.5B"
    cfg.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "adapter_config.json").read_text())
    r = read_adapter_config(d)
    assert r.format == "peft-adapter" and r.model == "Qwen/Qwen2.5-0.5B" and r.ignored == []
    s = _setup(r.options)
    assert s.method == "lora" and s.lora.trainable_tokens == (("embed_tokens", (1, 2, 3)),)
    config = _tiny_qwen()
    plan = plan_lora(spec_from_config(config, name="qwen-2"), s.lora)
    assert (plan.trainable, plan.total) == _peft_count(config, _full_peft_config())


def test_unmodelled_fields_warn_never_silence() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # PEFT's own note that eva_config takes its default
        cfg = peft.LoraConfig(r=8, target_modules=["q_proj"], layer_replication=[[0, 2]], init_lora_weights="eva",
                              ensure_weight_tying=True)
    with pytest.warns(UnmodelledFieldWarning) as record:
        lora_from_peft(cfg)
    text = " | ".join(str(w.message) for w in record)
    assert "layer_replication" in text and "init_lora_weights='eva'" in text and "ensure_weight_tying" in text
    _, notes = peft_lora_options({"r": 8, "target_modules": ["q_proj"], "brand_new_field": 1})
    assert notes == ["LoraConfig.brand_new_field: not a peft 0.21.2 LoraConfig field -- not modelled"]
    # memory-neutral fields say nothing: use_rslora, fan_in_fan_out, PiSSA (same shapes), task_type
    _, quiet = peft_lora_options(peft.LoraConfig(r=8, use_rslora=True, init_lora_weights="pissa_niter_4",
                                                 task_type="CAUSAL_LM"))
    assert quiet == []


def test_adapter_config_of_another_peft_type_cannot_be_checked() -> None:
    from vramplan.errors import CannotCheckError

    with pytest.raises(CannotCheckError, match="peft_type 'IA3'"):
        read_adapter_config({"peft_type": "IA3", "target_modules": ["k_proj"]})


def test_bnb_skip_modules_become_quant_skip() -> None:
    from transformers import BitsAndBytesConfig

    q = options_from_bnb(BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            llm_int8_skip_modules=["lm_head", "mlp.gate"],
                                            bnb_4bit_quant_storage="bfloat16"))
    assert q["quant_skip"] == ("lm_head", "mlp.gate") and q["quant"] == "nf4"
    with pytest.warns(UnmodelledFieldWarning, match="llm_int8_has_fp16_weight"):
        options_from_bnb(BitsAndBytesConfig(load_in_8bit=True, llm_int8_has_fp16_weight=True))
    with pytest.raises(SetupError, match="llm_int8_skip_modules"):
        options_from_bnb({"load_in_4bit": True, "llm_int8_skip_modules": [3]})


# ------------------------------------------------------------------------------------------------ axolotl
def test_axolotl_peft_keys() -> None:
    """axolotl 067b021c ``loaders/adapter.py:140-200``: lora_rank_pattern, lora_alpha_pattern,
    peft_layers_to_transform, peft_layers_pattern, lora_target_parameters, peft_trainable_token_indices and
    lora_exclude_modules go to LoraConfig; peft_layer_replication is not modelled; autocast off = base-dtype
    adapters."""
    d = {"base_model": "Qwen/Qwen2.5-0.5B", "adapter": "lora", "lora_r": 16, "lora_alpha": 32,
         "lora_target_modules": ["q_proj", "v_proj"], "lora_rank_pattern": {"q_proj": 64},
         "lora_alpha_pattern": {"q_proj": 128}, "peft_layers_to_transform": [1],
         "peft_layers_pattern": ["layers"], "peft_trainable_token_indices": [5, 6],
         "lora_exclude_modules": ["model.layers.1.self_attn.v_proj"], "peft_layer_replication": [[0, 1]],
         "peft_autocast_adapter_dtype": False, "micro_batch_size": 1, "sequence_len": 512}
    r = read_axolotl(d)
    o = r.options
    assert o["rank_pattern"] == {"q_proj": 64} and o["layers_to_transform"] == [1] and o["layers_pattern"] == ["layers"]
    assert o["trainable_tokens"] == [5, 6] and o["exclude_modules"] == ["model.layers.1.self_attn.v_proj"]
    assert o["adapter_dtype"] == "compute"
    assert any(i.startswith("peft_layer_replication") for i in r.ignored)
    s = _setup(o)
    config = _tiny_qwen()
    ours = plan_lora(spec_from_config(config, name="qwen-2"), s.lora)
    # what axolotl hands to PEFT for these keys (adapter.py:187-200)
    theirs = _peft_count(config, peft.LoraConfig(
        r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], rank_pattern={"q_proj": 64},
        alpha_pattern={"q_proj": 128}, layers_to_transform=[1], layers_pattern=["layers"],
        trainable_token_indices=[5, 6], exclude_modules=["model.layers.1.self_attn.v_proj"], bias="none",
        task_type="CAUSAL_LM"))
    assert (ours.trainable, ours.total) == theirs


def test_axolotl_exclude_regex_and_target_parameters_string() -> None:
    r = read_axolotl({"base_model": "m", "adapter": "lora", "lora_target_modules": ["q_proj"],
                      "lora_exclude_modules": r".*layers\.0\..*", "lora_target_parameters": "mlp.down_proj.weight"})
    assert r.options["exclude_regex"] == r".*layers\.0\..*"
    assert r.options["target_parameters"] == ["mlp.down_proj.weight"]


def test_axolotl_bad_rank_pattern_names_the_key() -> None:
    r = read_axolotl({"base_model": "m", "adapter": "lora", "lora_rank_pattern": {"q_proj": "big"}})
    from vramplan.errors import PlanFileError
    from vramplan.interop.axolotl import KEY_SOURCES

    with pytest.raises(PlanFileError, match="lora_rank_pattern") as info:
        normalize_plan_keys({k: v for k, v in r.options.items() if v is not None}, "f.yaml", 1, 1, KEY_SOURCES)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ ms-swift
def test_msswift_lora_bias_is_peft_bias_and_target_regex_wins() -> None:
    """ms-swift 3602360a: ``--lora_bias none|all`` is LoraConfig(bias=...) (arguments/tuner_args.py:136,
    pipelines/train/tuner.py:185); ``--target_regex`` replaces target_modules (tuner_args.py:201-202);
    ``--target_parameters`` is forwarded (tuner.py:204-205)."""
    r = read_msswift({"model": "Qwen/Qwen2.5-0.5B", "tuner_type": "lora", "lora_bias": "all",
                      "target_regex": r".*\.(q_proj|v_proj)", "target_parameters": ["mlp.down_proj.weight"],
                      "max_length": 512})
    o = r.options
    assert o["bias"] == "all" and o["target_regex"] == r".*\.(q_proj|v_proj)" and o["targets"] is None
    assert _setup(o).lora.target_parameters == ("mlp.down_proj.weight",)
    assert read_msswift({"model": "m", "max_length": 512}).options["bias"] == "none"     # tuner_args.py:136
    ga = read_msswift({"model": "m", "max_length": 512, "init_weights": "lora-ga"})
    assert any(i.startswith("init_weights lora-ga") for i in ga.ignored)


# -------------------------------------------------------------------------------------------------- TRL
def test_trl_target_parameters_and_dora() -> None:
    """trl f2cd5771 ``trainer/utils.py:254-275``: lora_target_parameters and use_dora reach LoraConfig."""
    r = read_trl({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "use_peft": True, "dataset_name": "x",
                  "lora_target_modules": ["q_proj"], "lora_target_parameters": ["mlp.down_proj.weight"],
                  "use_dora": True})
    assert r.options["target_parameters"] == ["mlp.down_proj.weight"] and r.options["dora"] is True


# ---------------------------------------------------------------------------------------- LLaMA-Factory v1
def _v1(peft_config: dict[str, Any]) -> dict[str, Any]:
    return {"model": "Qwen/Qwen3-4B", "peft_config": peft_config, "output_dir": "o", "train_dataset": "d.yaml"}


def test_llama_factory_v1_dora_and_modules_to_save() -> None:
    """LLaMA-Factory ff6d4d12 ``v1/plugins/model_plugins/peft.py:186-196`` passes use_dora and modules_to_save."""
    r = read_llama_factory_v1(_v1({"name": "lora", "r": 16, "use_dora": True, "modules_to_save": ["lm_head"]}))
    assert r.options["dora"] is True and r.options["modules_to_save"] == ["lm_head"]


def test_llama_factory_v1_unknown_peft_key_is_refused() -> None:
    """``v1/utils/plugin.py:87-93``: LLaMA-Factory itself refuses an unknown LoraParams key."""
    with pytest.raises(ForeignConfigError, match="LoraParams") as info:
        read_llama_factory_v1(_v1({"name": "lora", "r": 16, "rank_pattern": {"q_proj": 64}}))
    assert info.value.key == "peft_config.rank_pattern"


# ------------------------------------------------------------------------------------- CLI and plan files


def test_cli_options_and_bad_input() -> None:
    out = vp("params", "qwen2.5-0.5b", "--rank-pattern", "q_proj=64", "--json")
    assert out.exit_code == 0 and json.loads(out.stdout)["params"]["trainable"] == 2_949_120   # issue 15, PEFT
    out = vp("params", "qwen2.5-0.5b", "--targets", "all-linear", "--exclude-regex", ".*mlp.*", "--json")
    assert json.loads(out.stdout)["params"]["trainable"] == 1_081_344                          # issue 15, PEFT
    for bad, words in ((["--rank-pattern", "q_proj"], "NAME=NUMBER"), (["--rank-pattern", "q_proj=0"], "from 1"),
                       (["--bias", "some"], "some"), (["--trainable-tokens", "3-1"], "high to low"),
                       (["--exclude-regex", "("], "does not compile")):
        out = vp("params", "qwen2.5-0.5b", *bad)
        assert out.exit_code == 2, (bad, out.output)
        assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_plan_file_keys(tmp_path) -> None:
    f = tmp_path / "plans.yaml"
    f.write_text("plans:\n  - model: qwen2.5-0.5b\n    method: lora\n    rank_pattern: {q_proj: 64}\n"
                 "    trainable_tokens: {embed_tokens: [1, 2]}\n    bias: lora_only\n    gpu: 80GB\n")
    out = vp("check", str(f), "--json")
    lora = json.loads(out.stdout)[0]["setup"]["lora"]
    assert lora["rank_pattern"] == {"q_proj": 64} and lora["trainable_tokens"] == {"embed_tokens": [1, 2]}
    assert lora["bias"] == "lora_only" and "lora_bias" not in lora
    f.write_text("plans:\n  - model: qwen2.5-0.5b\n    rank_pattern: [1, 2]\n    gpu: 80GB\n")
    out = vp("check", str(f))
    assert out.exit_code == 2 and "rank_pattern" in out.stdout + out.stderr


def test_sweep_repeats_a_pattern() -> None:
    out = vp("sweep", "--model", "qwen2.5-0.5b", "--rank-pattern", "q_proj=64,v_proj=32", "--rank-pattern",
             "q_proj=8", "--format", "csv")
    assert out.exit_code == 0, out.output
    rows = out.stdout.strip().splitlines()
    assert len(rows) == 3, rows


def test_lora_config_python_api_accepts_peft_shapes() -> None:
    lc = LoraConfig(rank_pattern={"q_proj": 64}, exclude_modules=["k_proj"], layers_pattern="layers",
                    layers_to_transform=[0], targets=["q_proj"])
    assert lc.layers_pattern == ("layers",) and lc.exclude_modules == ("k_proj",) and lc.targets == ("q_proj",)


@pytest.mark.parametrize("lc", [
    LoraConfig(), LoraConfig(r=16, targets=("all-linear",), exclude_regex=r".*mlp.*"),
    LoraConfig(targets=("q_proj", "v_proj"), layers_to_transform=(0, 1), layers_pattern=("layers",),
               rank_pattern={"q_proj": 64}, alpha_pattern={"v_proj": 2.5}, bias="all", lora_bias=True,
               trainable_tokens={"embed_tokens": [1], "lm_head": [2]}, modules_to_save=("norm",),
               exclude_modules=("model.layers.0.self_attn.v_proj",), target_parameters=("mlp.down_proj.weight",)),
    LoraConfig(target_regex=r".*\.q_proj", trainable_tokens=[3, 4], dora=True, dropout=0.1),
])
def test_peft_kwargs_build_the_same_config_in_peft(lc: LoraConfig) -> None:
    """``LoraConfig.peft_kwargs`` (what the simulator hands to PEFT) survives peft's own LoraConfig and reads
    back equal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnmodelledFieldWarning)
        assert lora_from_peft(peft.LoraConfig(task_type="CAUSAL_LM", **lc.peft_kwargs())) == lc
