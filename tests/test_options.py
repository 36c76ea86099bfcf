"""Every option is declared once (on the Setup and LoraConfig fields); the command-line options of every command,
the sweep axes, the plan-file keys and the sweep columns are derived from the declarations (issue 13)."""

from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner
from option_names import SETUP_OPTION_NAMES

from vramplan import planner
from vramplan.cli.main import cli
from vramplan.cli.sweep import columns
from vramplan.lora import LoraConfig
from vramplan.options import Option, option, options_of, read_value
from vramplan.setup import LORA_OPTIONS, RUN_OPTIONS, SETUP_OPTIONS, Setup, option_columns, setup_from_options

#: command -> its options that are not setup options (each command's own)
OWN = {
    "plan": {"gpu", "trust_remote_code", "margin", "as_json", "explain", "html_path", "mode", "sim_layers"},
    "fit": {"gpu", "trust_remote_code", "margin", "as_json"},
    "gpus": {"fits_model", "trust_remote_code", "as_json", "gpu_filter", "arch", "min_memory"},
}


def _long_options(command: str) -> dict[str, click.Option]:
    cmd = cli.get_command(click.Context(cli), command)
    assert cmd is not None, command
    return {p.name: p for p in cmd.params if isinstance(p, click.Option)}


def test_declared_names_are_the_contract() -> None:
    assert tuple(o.name for o in SETUP_OPTIONS) == SETUP_OPTION_NAMES


@pytest.mark.parametrize("command", ["plan", "fit"])
def test_plan_and_fit_take_every_setup_option(command: str) -> None:
    opts = _long_options(command)
    assert set(opts) - OWN[command] == set(SETUP_OPTION_NAMES)
    # the declaration's help and default reach the command line unchanged
    for o in SETUP_OPTIONS:
        assert opts[o.name].help == o.help
        assert opts[o.name].default == o.default
        if o.choices:
            assert tuple(opts[o.name].type.choices) == o.choices


def test_gpus_fits_takes_every_setup_option() -> None:
    opts = _long_options("gpus")
    assert set(SETUP_OPTION_NAMES) <= set(opts)


def test_sweep_axes_are_the_setup_options() -> None:
    opts = _long_options("sweep")
    multiple = {name for name, p in opts.items() if p.multiple} - {"models", "gpus_"}
    assert multiple == set(SETUP_OPTION_NAMES)


def test_plan_file_keys_are_the_options() -> None:
    assert set(planner.PLAN_KEYS) == {"name", "model", *(o.name for o in RUN_OPTIONS), *SETUP_OPTION_NAMES}
    assert planner.PLAN_KEYS["quant_blocksize"] == "int"
    assert planner.PLAN_KEYS["layers_to_transform"] == "layers"


def test_sweep_columns_are_the_options_in_order() -> None:
    cols = columns(["rtx-4090"])
    assert cols[: 1 + len(SETUP_OPTION_NAMES)] == ["model", *SETUP_OPTION_NAMES]


def test_option_columns_fill_defaults_and_join_lists() -> None:
    s = setup_from_options({"method": "qlora", "rank": 16, "targets": "q_proj,v_proj", "layers_to_transform": "0-2"})
    row = option_columns(s)
    assert list(row) == list(SETUP_OPTION_NAMES)
    assert row["quant"] == "nf4" and row["grad_ckpt"] is True     # QLoRA's defaults filled in
    assert row["rank"] == 16 and row["targets"] == "q_proj,v_proj" and row["layers_to_transform"] == "0,1,2"
    assert row["modules_to_save"] is None and row["lora_dropout"] == 0.0
    full = option_columns(setup_from_options({"method": "full"}))
    assert all(full[o.name] is None for o in LORA_OPTIONS)


def test_every_option_field_is_declared() -> None:
    """A new Setup or LoraConfig field is an option (declared) or listed here as internal."""
    internal = {"lora"}
    declared = {o.field for o in (*options_of(Setup), *options_of(LoraConfig))}
    fields = {f.name for f in dataclasses.fields(Setup)} | {f.name for f in dataclasses.fields(LoraConfig)}
    assert fields - declared == internal


def test_help_of_plan_lists_each_option_once() -> None:
    out = CliRunner().invoke(cli, ["plan", "--help"], catch_exceptions=False).output
    for name in SETUP_OPTION_NAMES:
        flag = "--" + name.replace("_", "-")
        assert out.count(f"{flag} ") + out.count(f"{flag}/") + out.count(f"{flag},") >= 1, flag


def test_declaration_rejects_inconsistent_kinds() -> None:
    with pytest.raises(ValueError, match="kind 'integer'"):
        Option("x", "integer", "X.")
    with pytest.raises(ValueError, match="choices go with kind 'choice'"):
        Option("x", "int", "X.", choices=("a",))

    @dataclasses.dataclass(frozen=True)
    class Toy:
        plain: int = 1
        n: int = option(3, kind="int", name="count", help="How many.")
        mode: str = option("a", kind="choice", choices=("a", "b"), unset=True, help="Mode.")

    count, mode = options_of(Toy)
    assert (count.name, count.field, count.default, count.flag) == ("count", "n", 3, "--count")
    assert mode.default is None and Toy().mode == "a"


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("batch", "4", 4), ("batch", 4.0, 4), ("alpha", "16", 16.0), ("dora", "yes", True),
    ("targets", ["q_proj", "v_proj"], "q_proj,v_proj"), ("layers_to_transform", [0, 3], "0,3"),
    ("method", "QLoRA", "qlora"), ("margin", "10%", 0.1), ("margin", 0.25, 0.25),
])
def test_plan_file_values_are_read_by_kind(name: str, value: object, expected: object) -> None:
    assert read_value(planner.PLAN_OPTIONS[name], value) == expected


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("batch", True, "must be an integer"), ("batch", "4.5", "must be an integer"),
    ("method", "qlorra", "did you mean: qlora"), ("margin", "120%", "between 0% and 100%"),
    ("layers_to_transform", [0, True], "layer indices"), ("targets", [1, 2], "list of names"),
])
def test_plan_file_values_of_the_wrong_kind_are_refused(name: str, value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        read_value(planner.PLAN_OPTIONS[name], value)


def test_profile_takes_every_setup_option_it_can_run() -> None:
    from vramplan.cli.profile import NOT_PROFILED

    opts = _long_options("profile")
    # the profiler runs transformers + peft itself: another stack's code and the inference split are not run
    assert set(SETUP_OPTION_NAMES) - set(opts) == set(NOT_PROFILED) == {
        "loss", "stack", "quant_head", "quant_state_dtype", "kv_expand", "act_offload", "optim_in_bwd",
        "frozen_dtype", "fp32_norms_embeddings", "device_map", "max_memory", "prompt_tokens", "logits_to_keep"}
    assert opts["new_tokens"].default == 0     # inference profiles decode --new-tokens tokens


def test_kbit_prep_is_an_option_everywhere() -> None:
    """Issue 14: whether the stack calls prepare_model_for_kbit_training could only be said in Python."""
    import json

    out = CliRunner().invoke(cli, ["plan", "qwen3-0.6b", "--method", "qlora", "--no-kbit-prep", "--json"],
                             catch_exceptions=False).output
    assert json.loads(out)["setup"]["kbit_prep"] is False
    assert planner.PLAN_KEYS["kbit_prep"] == "bool"
    assert setup_from_options({"method": "qlora"}).kbit_prep is True      # PEFT's QLoRA recipe calls it


def test_inference_only_options_in_training_are_named_as_ignored() -> None:
    """--logits, --cache and --cache-len are inference options: a training plan says it does not use them."""
    from vramplan.setup import Setup, ignored_options

    s = Setup.create(method="lora")
    (w,) = ignored_options({"logits": "all", "cache": "static"}, s)
    assert w.startswith("--cache, --logits ignored") and "--method lora trains" in w
