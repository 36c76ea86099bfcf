"""The readers' rules on small synthetic configs, each expected value from the framework's own source (the rule
and its file:line are in tests/data/configs/SOURCES.md), and the launch-script parser."""

from __future__ import annotations

import pytest

from vramplan.errors import CannotCheckError, ForeignConfigError
from vramplan.interop.axolotl import read_axolotl
from vramplan.interop.detect import detect_mapping, is_script
from vramplan.interop.launch import parse_args, parse_script, read_script
from vramplan.interop.llama_factory import prequantized, read_llama_factory, read_llama_factory_v1
from vramplan.interop.msswift import read_msswift
from vramplan.interop.reading import from_accelerate, from_deepspeed
from vramplan.interop.torchtune import read_torchtune
from vramplan.interop.trl import read_trl


# ------------------------------------------------------------------------------------------ LLaMA-Factory
def test_llama_factory_alpha_is_twice_the_rank_and_no_kbit_prep():
    # finetuning_args.py:587 (lora_alpha = lora_alpha or lora_rank * 2); checkpointing.py never calls kbit prep
    r = read_llama_factory({"model_name_or_path": "m", "lora_rank": 16, "quantization_bit": 4})
    assert (r.options["rank"], r.options["alpha"], r.options["kbit_prep"]) == (16, 32, False)
    assert (r.options["quant"], r.options["double_quant"], r.options["lora_dropout"]) == ("nf4", True, 0.0)
    assert r.options["grad_ckpt"] is True and r.options["seq"] == 2048 and r.options["batch"] == 8


def test_llama_factory_precision_flags():
    base = {"model_name_or_path": "m", "finetuning_type": "full"}
    assert read_llama_factory({**base, "bf16": True}).options["precision"] == "bf16-mixed"
    assert read_llama_factory({**base, "pure_bf16": True}).options["precision"] == "bf16-true"
    assert read_llama_factory({**base, "fp16": True}).options["precision"] == "fp16-mixed"
    r = read_llama_factory(base)                       # unknown model, no flag: the model's dtype decides
    assert r.options["precision"] is None and "precision" in r.undecided


@pytest.mark.parametrize("d,words", [
    ({"stage": "ppo"}, "stage ppo"), ({"finetuning_type": "freeze"}, "finetuning_type 'freeze'"),
    ({"quantization_bit": 4, "quantization_method": "hqq"}, "quantization_method 'hqq'"),
    ({"use_llama_pro": True}, "use_llama_pro"),
])
def test_llama_factory_cannot_check(d, words):
    with pytest.raises(CannotCheckError, match=words):
        read_llama_factory({"model_name_or_path": "m", **d})


def test_prequantized_model_ids():
    assert prequantized("TechxGenus/Meta-Llama-3-8B-Instruct-AWQ") == "awq"
    assert prequantized("ISTA-DASLab/Meta-Llama-3-8B-Instruct-AQLM-2Bit-1x16") == "aqlm"
    assert prequantized("Qwen/Qwen3-4B-Instruct-2507") is None and prequantized("meta-llama/Llama-3.1-8B") is None


def test_v1_is_detected_before_training_arguments():
    d = {"model": "Qwen/Qwen3-4B", "peft_config": {"name": "lora", "r": 16}, "output_dir": "o",
         "learning_rate": 1e-4, "micro_batch_size": 2}
    assert detect_mapping(d) == "llamafactory-v1"
    r = read_llama_factory_v1(d)
    # v1/plugins/model_plugins/peft.py: lora_alpha 16, dropout 0.05 by default; activation checkpointing on
    assert (r.options["rank"], r.options["alpha"], r.options["lora_dropout"]) == (16, 16, 0.05)
    assert (r.options["batch"], r.options["grad_ckpt"], r.options["strategy"]) == (2, True, None)


# ------------------------------------------------------------------------------------------ axolotl
@pytest.mark.parametrize("bf16", ["auto", True, "full"])
def test_axolotl_bf16_auto_true_full_load_bf16(bf16):
    # resolve_dtype: auto -> bf16 on a bf16 GPU; `full` only adds bf16_full_eval (core/builders/base.py:273-274)
    full = read_axolotl({"base_model": "m", "bf16": bf16})
    lora = read_axolotl({"base_model": "m", "bf16": bf16, "adapter": "lora"})
    assert full.options["precision"] == "bf16-true" and lora.options["precision"] == "bf16-mixed"


def test_axolotl_defaults_and_kbit_prep():
    r = read_axolotl({"base_model": "m", "adapter": "qlora", "load_in_4bit": True})
    # schemas/config.py:665 sequence_len 512, training.py:77 micro_batch_size 1, peft.py:80 dropout 0
    assert (r.options["seq"], r.options["batch"], r.options["lora_dropout"]) == (512, 1, 0.0)
    # an adapter makes should_convert_embedding_dtypes true whatever the attention kernel (axolotl 0.21.0
    # loaders/model.py:174-188): prepare_model_for_kbit_training's fp32 copies are cast back to bf16, as axolotl's
    # real sdpa step measured (benchmarks/frameworks/results/axolotl.json: every frozen non-nf4 weight bf16)
    assert r.options["kbit_prep"] is False and r.options["attn"] == "sdpa"
    assert r.options.get("fp32_norms_embeddings") is None
    flash = read_axolotl({"base_model": "m", "adapter": "qlora", "load_in_4bit": True,
                          "attn_implementation": "flash_attention_2"})
    assert flash.options["kbit_prep"] is False
    fsdp = read_axolotl({"base_model": "m", "adapter": "qlora", "load_in_4bit": True, "fsdp": ["full_shard"],
                         "fsdp_config": {"fsdp_offload_params": True}})
    assert (fsdp.options["strategy"], fsdp.options["offload"], fsdp.options["kbit_prep"]) == ("fsdp", "params", False)
    # qlora + FSDP: nothing casts the load-time fp32 upcast back (qlora_and_fsdp_enabled, model.py:176-183)
    assert fsdp.options["fp32_norms_embeddings"] is True


@pytest.mark.parametrize("extra,fp32", [
    ({}, True),                                              # sdpa by default: the upcast stays
    ({"attn_implementation": "sdpa"}, True), ({"attn_implementation": "eager"}, True),
    ({"flash_attention": True}, False),                      # legacy flag -> flash_attention_2 (enums.py:128-135)
    ({"attn_implementation": "flex_attention"}, False), ({"xformers_attention": True}, False),
    ({"fsdp": ["full_shard"], "fsdp_config": {}}, False),    # fsdp_enabled (model.py:176)
    ({"plugins": ["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"]}, False),
])
def test_axolotl_full_fine_tuning_fp32_norms_and_embeddings(extra, fp32):
    """Without an adapter axolotl keeps embed_tokens, lm_head and the norms fp32 unless FSDP, an attention kernel
    other than eager/sdpa or Cut Cross-Entropy casts them back (axolotl 0.21.0 loaders/model.py:174-188,
    :607-650; utils/schemas/enums.py:171 ATTN_IMPLS_WITHOUT_DTYPE_CAST)."""
    r = read_axolotl({"base_model": "m", "bf16": True, **extra})
    assert r.options["method"] == "full" and r.options["precision"] == "bf16-true"
    assert r.options["fp32_norms_embeddings"] is fp32


@pytest.mark.parametrize("d,words", [({"rl": "dpo"}, "rl: dpo"), ({"reward_model": True}, "reward_model"),
                                     ({"context_parallel_size": 4}, "context_parallel_size"),
                                     ({"unfrozen_parameters": ["^lm_head"]}, "unfrozen_parameters")])
def test_axolotl_cannot_check(d, words):
    with pytest.raises(CannotCheckError, match=words):
        read_axolotl({"base_model": "m", **d})


def test_axolotl_deepspeed_path_not_found_cannot_check(tmp_path):
    cfg = tmp_path / "x.yml"
    with pytest.raises(CannotCheckError, match="not found"):
        read_axolotl({"base_model": "m", "deepspeed": "deepspeed_configs/none.json"}, cfg)


# ------------------------------------------------------------------------------------------ DeepSpeed, accelerate
@pytest.mark.parametrize("zo,strategy,offload,ignored", [
    ({"stage": 0}, "ddp", "none", 0),
    ({"stage": 2, "offload_optimizer": {"device": "cpu"}}, "zero2", "optimizer", 0),
    ({"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "nvme"}}, "zero3", "params", 0),
    ({"stage": 3, "offload_param": {"device": "cpu"}}, "zero3", None, 1),
    ({"stage": 3, "offload_optimizer": {"device": "none"}}, "zero3", "none", 0),
])
def test_deepspeed_stage_and_offload(zo, strategy, offload, ignored):
    r = from_deepspeed({"zero_optimization": zo})
    assert (r["strategy"], r["offload"], len(r["ignored"])) == (strategy, offload, ignored)


def test_accelerate_config():
    r = from_accelerate({"distributed_type": "FSDP", "num_processes": 4, "fsdp_config": {
        "fsdp_sharding_strategy": "SHARD_GRAD_OP", "fsdp_offload_params": False}})
    assert (r["gpus"], r["strategy"], r["offload"]) == (4, "fsdp-grad-op", "none")
    r = from_accelerate({"distributed_type": "DEEPSPEED", "num_processes": 8, "deepspeed_config": {
        "zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu"}})
    assert (r["gpus"], r["strategy"], r["offload"]) == (8, "zero3", "params")


# ------------------------------------------------------------------------------------------ ms-swift
def test_msswift_quant_bits_without_quant_method_quantizes_nothing():
    # quant_args.py:45-47: no quant_method, no quantization_config
    r = read_msswift({"model": "m", "quant_bits": "4", "torch_dtype": "bfloat16"}, env={})
    assert r.options["method"] == "lora" and r.options["quant"] == "none"
    assert r.ignored and r.ignored[0].startswith("quant_bits (no effect without --quant_method")
    q = read_msswift({"model": "m", "quant_bits": "4", "quant_method": "bnb", "torch_dtype": "bfloat16"}, env={})
    assert (q.options["method"], q.options["quant"], q.options["double_quant"]) == ("qlora", "nf4", True)


def test_msswift_defaults_and_gpus():
    r = read_msswift({"model": "m", "torch_dtype": "bfloat16", "max_length": "1024"}, env={"NPROC_PER_NODE": "4"})
    # tuner_args.py:126-135: rank 8, alpha 32, dropout 0.05, all-linear; arguments.py:129, 134: batch 1, ckpt on
    assert (r.options["rank"], r.options["alpha"], r.options["lora_dropout"], r.options["targets"]) == \
        (8, 32, 0.05, "all-linear")
    assert (r.options["batch"], r.options["grad_ckpt"], r.options["seq"], r.options["gpus"]) == (1, True, 1024, 4)
    assert read_msswift({"model": "m", "torch_dtype": "bfloat16"}, env={}).options["gpus"] == 1
    assert read_msswift({"model": "m", "torch_dtype": "bfloat16"}).options["gpus"] is None   # a config on its own
    with pytest.raises(CannotCheckError, match="rlhf"):
        read_msswift({"model": "m"}, command="rlhf", env={})


# ------------------------------------------------------------------------------------------ torchtune, TRL
def test_torchtune_targets_in_hf_names_and_bf16_true():
    d = {"model": {"_component_": "torchtune.models.llama3_2.lora_llama3_2_1b", "lora_attn_modules":
                   ["q_proj", "output_proj"], "apply_lora_to_mlp": True, "lora_rank": 4, "lora_alpha": 8},
         "tokenizer": {"max_seq_len": 512}, "dtype": "bf16", "batch_size": 3,
         "loss": {"_component_": "torchtune.modules.loss.LinearCrossEntropyLoss"},
         "optimizer": {"_component_": "torch.optim.AdamW"}}
    r = read_torchtune(d, text="#   tune download meta-llama/Llama-3.2-1B\n", recipe="lora_finetune_single_device")
    assert sorted(r.options["targets"]) == sorted(["q_proj", "o_proj", "gate_proj", "down_proj", "up_proj"])
    assert (r.options["precision"], r.options["loss"], r.options["seq"], r.options["gpus"]) == \
        ("bf16-true", "chunked", 512, 1)
    with pytest.raises(CannotCheckError, match="DPO"):
        read_torchtune(d, text="", recipe="lora_dpo_single_device")


def test_trl_head_defaults_and_handbook_version():
    r = read_trl({"model_name_or_path": "m", "dataset_name": "d"})
    # model_config.py:89 dtype float32, base_config.py:61/105 ckpt on and bf16, sft_config.py:205 max_length 1024
    assert (r.options["method"], r.options["precision"], r.options["batch"], r.options["seq"]) == \
        ("full", "bf16-mixed", 8, 1024)
    assert r.options["loss"] == "chunked" and r.options["grad_ckpt"] is True
    old = read_trl({"model_name_or_path": "m", "max_seq_length": 2048, "torch_dtype": "bfloat16",
                    "use_peft": True, "load_in_4bit": True})
    assert (old.format, old.options["loss"], old.options["double_quant"], old.options["kbit_prep"]) == \
        ("trl-config", "standard", False, True)
    head = read_trl({"model_name_or_path": "m", "use_peft": True, "load_in_4bit": True})
    assert head.options["kbit_prep"] is False      # not called since trl 0.26.0
    with pytest.raises(CannotCheckError, match="DPO"):
        read_trl({"model_name_or_path": "m", "beta": 0.1})


# ------------------------------------------------------------------------------------------ launch scripts
def test_parse_script_variables_continuations_and_substitutions():
    cmds = parse_script("#!/bin/bash\n# comment\nn=2\nMODEL=org/m\n\nCUDA_VISIBLE_DEVICES=0,1 NPROC_PER_NODE=$n \\\n"
                        "  swift sft --model ${MODEL} --gradient_accumulation_steps $(expr 16 / $n) \\\n"
                        "  --dataset 'a#1' b --bf16\n")
    assert len(cmds) == 1
    c = cmds[0]
    assert c.env == {"CUDA_VISIBLE_DEVICES": "0,1", "NPROC_PER_NODE": "2"}
    pos, opts = parse_args(c.words[2:])
    assert opts == {"model": "org/m", "gradient_accumulation_steps": "__subst__", "dataset": ["a#1", "b"],
                    "bf16": True} and pos == []


def test_read_script_one_plan_per_command_and_cannot_check_kept():
    text = ("swift sft --model m --torch_dtype bfloat16 --max_length 512\n"
            "swift rlhf --rlhf_type dpo --model m\n"
            "tune download org/m --output-dir /tmp/m\n")
    rs = read_script(text)
    assert len(rs) == 2 and rs[0].options["seq"] == 512 and rs[0].cannot_check is None
    assert rs[1].cannot_check and "rlhf" in rs[1].cannot_check
    with pytest.raises(CannotCheckError, match="no training command"):
        read_script("echo hello\n")


def test_is_script():
    assert is_script("x", "train.sh") and is_script("#!/bin/bash\n", "x")
    assert is_script("# c\nCUDA_VISIBLE_DEVICES=0 llamafactory-cli train x.yaml\n", "run")
    assert not is_script("model: qwen3-0.6b\ngpu: t4\n", "p.yaml")
    assert not is_script("python: 3\n", "p.yaml")


def test_foreign_values_that_cannot_be_read_name_their_key():
    with pytest.raises(ForeignConfigError) as exc:
        read_llama_factory({"model_name_or_path": "m", "lora_rank": "many"})
    assert exc.value.key == "lora_rank"
    with pytest.raises(ForeignConfigError) as exc:
        read_axolotl({"base_model": "m", "micro_batch_size": "two"})
    assert exc.value.key == "micro_batch_size"


def test_torchrun_and_tune_run_launchers(tmp_path):
    import shutil
    from pathlib import Path

    corpus = Path(__file__).resolve().parents[1] / "data" / "configs"
    (tmp_path / "examples" / "deepspeed").mkdir(parents=True)
    shutil.copy(corpus / "llamafactory/examples__deepspeed__ds_z3_config.json",
                tmp_path / "examples/deepspeed/ds_z3_config.json")
    cfg = tmp_path / "examples" / "sft.yaml"
    cfg.write_text("model_name_or_path: meta-llama/Llama-3.1-8B\nfinetuning_type: full\nbf16: true\n"
                   "per_device_train_batch_size: 2\ndeepspeed: examples/deepspeed/ds_z3_config.json\n")
    script = tmp_path / "run.sh"
    script.write_text("torchrun --nproc_per_node 4 --master_port 29500 src/train.py examples/sft.yaml\n")
    (r,) = read_script(script.read_text(), script)
    assert (r.options["gpus"], r.options["strategy"], r.options["offload"], r.options["batch"]) == \
        (4, "zero3", "none", 2)
    assert r.format == "llamafactory" and [Path(x).name for x in r.references] == ["sft.yaml", "ds_z3_config.json"]
    # a torchtune built-in config name resolves through the repository layout (recipes/configs/NAME.yaml);
    # here the corpus's flattened copy beside the script
    shutil.copy(corpus / "torchtune/recipes__configs__llama3_1__8B_lora.yaml",
                tmp_path / "recipes__configs__llama3_1__8B_lora.yaml")
    tune = tmp_path / "tune.sh"
    tune.write_text("tune run --nproc_per_node 2 lora_finetune_distributed --config llama3_1/8B_lora "
                    "tokenizer.max_seq_len=4096 batch_size=1\n")
    (t,) = read_script(tune.read_text(), tune)
    assert (t.options["gpus"], t.options["strategy"], t.options["seq"], t.options["batch"]) == (2, "fsdp", 4096, 1)
    assert t.model == "meta-llama/Meta-Llama-3.1-8B-Instruct" and not t.undecided
