"""Fuzzing with hypothesis (derandomized: the same examples on every run and in CI): config.json, command-line
flags, plan files and other tools' configs. Every answer must obey the contract
(:func:`hostile_helpers.check_contract`); the parsers must return bounded values or raise ValueError."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import yaml
from hostile_helpers import QWEN3_06B, vp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vramplan.options import read_margin, read_value
from vramplan.setup import MAX_LAYER_INDEX, SETUP_OPTIONS, parse_layers

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: JSON scalars a hostile file holds: extremes of every type
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=70), st.sampled_from([0, -1, 2**31, 2**63, 10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1e308, -0.0]),
    st.text(max_size=12), st.sampled_from(["", "false", "true", "two", "1024", "nan", "inf", "\x00", "é" * 3]),
)
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                           st.dictionaries(st.text(max_size=6), kids, max_size=3)),
                           max_leaves=8)


def _dump(value: object) -> str:
    return json.dumps(value, allow_nan=True)         # a hostile file may hold NaN/Infinity literals


# ------------------------------------------------------------------------------------------------ config.json
CONFIG_KEYS = sorted({*QWEN3_06B, "num_experts", "num_experts_per_tok", "text_config", "sliding_window",
                      "use_sliding_window", "rope_scaling", "multi_query", "mlp_only_layers", "moe_intermediate_size"})


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values, min_size=1, max_size=3),
       model_type=st.sampled_from(["qwen3", "llama", "mistral", "qwen2", "gpt2", "opt", "mixtral", "qwen3_moe",
                                   "falcon", "gemma"]))
def test_fuzz_config_json(changes, model_type):
    cfg = {**QWEN3_06B, "model_type": model_type, **changes}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "config.json"
        p.write_text(_dump(cfg))
        vp("params", str(p), "--json")
        vp("plan", str(p), "--json", "--gpu", "t4")


# ------------------------------------------------------------------------------------------------ CLI flags
flag_texts = st.one_of(
    st.text(alphabet="0123456789-.,%eE+ abinfGBKMiT", max_size=14),
    st.sampled_from(["0", "-1", "1e400", str(10**400), "nan", "inf", "-inf", "", " ", "0x10", "1_000", "٣", "²"]),
)
FLAGS = ["--batch", "--seq", "--gpus", "--rank", "--alpha", "--lora-dropout", "--new-tokens", "--quant-blocksize",
         "--margin", "--gpu", "--layers-to-transform", "--targets", "--target-regex", "--method", "--quant"]


@FUZZ
@given(values=st.dictionaries(st.sampled_from(FLAGS), flag_texts, min_size=1, max_size=3))
def test_fuzz_plan_flags(values):
    args = []
    for flag, value in values.items():
        args += [flag, value]
    vp("plan", "qwen3-0.6b", "--json", *args)
    if "--gpu" not in values:
        vp("gpus", "--fits", "qwen3-0.6b", "--json", *args)
    lora_only = [a for f, v in values.items() if f in ("--rank", "--alpha", "--lora-dropout",
                                                       "--layers-to-transform", "--targets", "--target-regex")
                 for a in (f, v)]
    if lora_only:
        vp("params", "qwen3-0.6b", "--json", *lora_only)


@FUZZ
@given(values=st.dictionaries(st.sampled_from(["--batch", "--rank", "--seq", "--layers-to-transform", "--margin",
                                               "--gpu"]), flag_texts, min_size=1, max_size=2))
def test_fuzz_sweep_and_fit_flags(values):
    args = []
    for flag, value in values.items():
        args += [flag, value]
    vp("sweep", "--model", "qwen3-0.6b", "--format", "jsonl", *args)
    if "--gpu" not in values:
        vp("fit", "qwen3-0.6b", "--gpu", "t4", "--json", *args)


# ------------------------------------------------------------------------------------------------ plan files
PLAN_KEYS = ["model", "gpu", "margin", "method", "rank", "alpha", "batch", "seq", "targets", "layers_to_transform",
             "grad_ckpt", "optim", "quant", "precision", "gpus", "strategy", "new_tokens", "lora_dropout", "dora",
             "plans", "name", "unknown-key"]


@FUZZ
@given(extra=st.dictionaries(st.sampled_from(PLAN_KEYS), json_values, max_size=4), as_json=st.booleans())
def test_fuzz_plan_files(extra, as_json):
    plan = {"model": "qwen3-0.6b", "gpu": "t4", **extra}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("plan.json" if as_json else "plan.yaml")
        p.write_text(_dump(plan) if as_json else yaml.safe_dump(json.loads(_dump(plan))) if _finite_json(plan)
                     else _dump(plan))
        vp("check", str(p), "--json")


def _finite_json(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ foreign configs
FOREIGN = {
    "llama-factory": ({"model_name_or_path": "qwen3-0.6b", "stage": "sft", "finetuning_type": "lora"},
                      ["finetuning_type", "lora_rank", "lora_alpha", "lora_target", "quantization_bit",
                       "quantization_type", "per_device_train_batch_size", "cutoff_len", "bf16", "pure_bf16",
                       "flash_attn", "optim", "use_dora", "additional_target", "stage", "double_quantization"]),
    "axolotl": ({"base_model": "qwen3-0.6b", "adapter": "lora"},
                ["adapter", "lora_r", "lora_alpha", "lora_target_modules", "lora_target_linear", "load_in_4bit",
                 "load_in_8bit", "micro_batch_size", "sequence_len", "bf16", "gradient_checkpointing", "optimizer",
                 "flash_attention", "peft_use_dora", "lora_modules_to_save"]),
    "training-args": ({"output_dir": "o", "per_device_train_batch_size": 1},
                      ["per_device_train_batch_size", "bf16", "fp16", "gradient_checkpointing", "optim",
                       "max_seq_length", "max_length", "learning_rate"]),
}


@FUZZ
@given(data=st.data(), kind=st.sampled_from(sorted(FOREIGN)))
def test_fuzz_foreign_configs(data, kind):
    base, keys = FOREIGN[kind]
    changes = data.draw(st.dictionaries(st.sampled_from(keys), json_values, max_size=3))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("args.json" if kind == "training-args" else "train.yaml")
        p.write_text(_dump({**base, **changes}))         # JSON is YAML too
        vp("check", str(p), "--model", "qwen3-0.6b", "--gpu", "a100-80gb", "--json")


# ------------------------------------------------------------------------------------------------ parsers
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.text(max_size=20), st.text(alphabet="0123456789-, ", max_size=30)))
def test_parse_layers_is_bounded_or_raises(text):
    try:
        out = parse_layers(text)
    except ValueError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 300
        return
    assert out is not None and len(out) <= 30 * (MAX_LAYER_INDEX + 1)
    assert all(isinstance(i, int) and 0 <= i <= MAX_LAYER_INDEX for i in out)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(json_values)
def test_option_readers_return_their_kind_or_raise(value):
    for o in SETUP_OPTIONS:
        try:
            v = read_value(o, value)
        except ValueError as exc:
            assert "\n" not in str(exc)
            continue
        if o.kind == "number":
            assert isinstance(v, float)
        elif o.kind == "int":
            assert isinstance(v, int) and not isinstance(v, bool)
        elif o.kind in ("bool", "flag"):
            assert isinstance(v, bool)
        elif o.kind == "choice":
            assert v in o.choices
    try:
        m = read_margin(value)
    except ValueError:
        return
    assert math.isfinite(m) and 0 <= m < 1
