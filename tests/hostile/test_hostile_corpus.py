"""Hostile and extreme inputs, one class of issue 18 per section: every answer obeys the contract
(:func:`hostile_helpers.check_contract`: exit 0/1/2, one short error line, no traceback, strict JSON)."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from hostile_helpers import (
    QWEN3_06B,
    billion_laughs,
    digest,
    vp,
    vp_subprocess,
    write_config,
)

from vramplan.io import CONFIG_MAX_BYTES

HUGE = str(10**400)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FIFOs, /dev/zero and O_TMPFILE")


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path / "cfg")


# ============================================================================== 1. data loss
@pytest.mark.parametrize("how", ["same", "dotdot", "symlink", "hardlink", "folder-arg"])
def test_plan_html_onto_its_config_is_refused(tmp_path, cfg, how):
    before = digest(cfg)
    model, out = str(cfg), str(cfg)
    if how == "dotdot":
        out = str(cfg.parent / ".." / cfg.parent.name / "config.json")
    elif how == "symlink":
        (tmp_path / "link.html").symlink_to(cfg)
        out = str(tmp_path / "link.html")
    elif how == "hardlink":
        os.link(cfg, tmp_path / "hard.html")
        out = str(tmp_path / "hard.html")
    elif how == "folder-arg":
        model = str(cfg.parent)
    r = vp("plan", model, "--html", out, codes=(2,))
    assert "is an input of this command" in r.stderr
    assert digest(cfg) == before


def test_sweep_out_onto_a_model_config_is_refused(tmp_path, cfg):
    before = digest(cfg)
    (tmp_path / "l.csv").symlink_to(cfg)
    for out in (str(cfg), str(tmp_path / "l.csv")):
        r = vp("sweep", "--model", f"qwen3-0.6b,{cfg}", "--rank", "8,16", "--out", out, codes=(2,))
        assert "--out" in r.stderr and "is an input" in r.stderr
    assert digest(cfg) == before


def test_plan_html_onto_a_bundled_profile_is_refused():
    from vramplan.profiles import model_profiles

    path = model_profiles()["qwen3-0.6b"].path
    before = digest(path)
    vp("plan", "qwen3-0.6b", "--html", str(path), codes=(2,))
    assert digest(path) == before


# ============================================================================== 2./3. hangs, unbounded memory
@linux_only
@pytest.mark.parametrize("command", [
    ["plan", "{fifo}"], ["params", "{fifo}"], ["check", "{fifo}"], ["check", "{fifo}.yaml"],
    ["gpus", "--fits", "qwen3-0.6b", "--prices", "{fifo}"],
])
def test_fifo_inputs_are_refused_without_blocking(tmp_path, command):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    os.mkfifo(str(fifo) + ".yaml")
    args = [a.replace("{fifo}", str(fifo)) for a in command]
    t = time.monotonic()
    r = vp(*args, codes=(2,))
    assert "FIFO" in r.stderr and time.monotonic() - t < 5


@linux_only
@pytest.mark.parametrize("command", [
    ["plan", "/dev/zero"], ["params", "/dev/zero"], ["check", "/dev/zero"],
    ["gpus", "--fits", "qwen3-0.6b", "--prices", "/dev/zero"], ["plan", "/dev/urandom"],
])
def test_devices_are_refused_before_reading(command):
    r = vp(*command, codes=(2,))
    assert "a device" in r.stderr


def test_oversized_files_are_refused_by_size(tmp_path):
    big = tmp_path / "config.json"
    with open(big, "wb") as fh:        # sparse: no disk used, but st_size says 16 MiB + 1
        fh.truncate(CONFIG_MAX_BYTES + 1)
    for args in (["plan", str(big)], ["check", str(big)]):
        r = vp(*args, codes=(2,))
        assert "more than the 16 MiB vramplan reads" in r.stderr


def test_folders_as_files(tmp_path):
    r = vp("check", str(tmp_path), codes=(2,))
    assert "folder" in r.stderr or "directory" in r.stderr
    vp("gpus", "--fits", "qwen3-0.6b", "--prices", str(tmp_path), codes=(2,))


@pytest.mark.parametrize("command", [
    ["check", "{f}"], ["gpus", "--fits", "qwen3-0.6b", "--prices", "{f}"],
])
def test_yaml_billion_laughs_is_refused_quickly_and_briefly(tmp_path, command):
    f = tmp_path / "lol.yaml"
    f.write_text(billion_laughs(9))
    t = time.monotonic()
    r = vp(*[a.replace("{f}", str(f)) for a in command], codes=(2,))
    assert time.monotonic() - t < 5 and "alias" in r.stderr and "lol, lol" not in r.stderr


def test_yaml_alias_bomb_in_a_plan_value(tmp_path):
    f = tmp_path / "plan.yaml"
    f.write_text("model: qwen3-0.6b\ngpu: t4\n" + billion_laughs(8).replace("i: &i", "targets: &i"))
    vp("check", str(f), codes=(2,))


def test_sweep_product_counted_before_building():
    values = ",".join(str(i) for i in range(1, 10_001))
    t = time.monotonic()
    r = vp("sweep", "--model", "qwen3-0.6b", "--batch", values, "--seq", values, codes=(2,))
    assert time.monotonic() - t < 5
    assert "100,000,000 rows" in r.stderr and "--max-rows" in r.stderr


def test_sweep_max_rows_allows_more(tmp_path):
    out = tmp_path / "s.csv"
    vp("sweep", "--model", "qwen3-0.6b", "--rank", "8,16,32", "--max-rows", "2", codes=(2,))
    vp("sweep", "--model", "qwen3-0.6b", "--rank", "8,16,32", "--max-rows", "3", "--out", str(out), codes=(0,))
    assert len(out.read_text().splitlines()) == 4          # header + 3 rows


@pytest.mark.parametrize("value", ["0-999999999", "0-4096", "99999999999999999999", f"0-{HUGE}"])
def test_layer_ranges_are_bounded(value):
    t = time.monotonic()
    r = vp("plan", "qwen3-0.6b", "--layers-to-transform", value, codes=(2,))
    assert time.monotonic() - t < 2 and "4,095" in r.stderr and len(r.stderr) < 400


@pytest.mark.parametrize("key", ["num_hidden_layers", "hidden_size", "vocab_size", "intermediate_size"])
def test_huge_config_dimensions_are_refused_quickly(tmp_path, key):
    for value in (10**9, 10**400):
        write_config(tmp_path / "c", **{key: value})
        t = time.monotonic()
        for command in ("plan", "params"):
            r = vp(command, str(tmp_path / "c"), codes=(2,))
            assert key in r.stderr
        assert time.monotonic() - t < 3


# ============================================================================== 4. permissions, temp files
@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_outputs_keep_the_mode_of_the_file_they_replace(tmp_path, mode):
    pytest.importorskip("plotly")
    out_csv, out_html = tmp_path / "s.csv", tmp_path / "p.html"
    for p in (out_csv, out_html):
        p.write_text("old")
        os.chmod(p, mode)
    vp("sweep", "--model", "qwen3-0.6b", "--rank", "8,16", "--out", str(out_csv), codes=(0,))
    vp("plan", "qwen3-0.6b", "--html", str(out_html), codes=(0,))
    for p in (out_csv, out_html):
        assert stat.S_IMODE(os.stat(p).st_mode) == mode and p.read_text() != "old"


def test_new_outputs_get_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        vp("sweep", "--model", "qwen3-0.6b", "--out", str(tmp_path / "new.csv"), codes=(0,))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.csv").st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.csv"]


@pytest.mark.parametrize("where", ["under-a-file", "folder"])
def test_unwritable_output_locations_fail_before_estimating(tmp_path, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" / "out.csv" if where == "under-a-file" else tmp_path
    vp("sweep", "--model", "qwen3-0.6b", "--out", str(out), codes=(2,))
    vp("plan", "qwen3-0.6b", "--html", str(out), codes=(2,))


# ============================================================================== 5. tracebacks
@pytest.mark.parametrize(("data", "words"), [
    (json.dumps(QWEN3_06B).encode("utf-16"), "UTF-16"),
    (json.dumps(QWEN3_06B).encode("utf-16-le"), "zero byte"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not text"),
    (json.dumps(QWEN3_06B).encode("latin-1").replace(b'"silu"', b'"s\xeflu"'), "byte 0xef at offset"),
    (b"[" * 100_000 + b"]" * 100_000, "deeper"),
    (b'{"a": ' + b"1" * 5000 + b"}", "not valid JSON"),
])
def test_bad_bytes_everywhere_a_file_is_read(tmp_path, data, words):
    for name in ("config.json", "plan.yaml", "prices.yaml", "plan.json"):
        f = tmp_path / name
        f.write_bytes(data)
    r = vp("plan", str(tmp_path / "config.json"), codes=(2,))
    assert words in r.stderr
    vp("check", str(tmp_path / "plan.yaml"), codes=(2,))
    vp("check", str(tmp_path / "plan.json"), codes=(2,))
    vp("gpus", "--fits", "qwen3-0.6b", "--prices", str(tmp_path / "prices.yaml"), codes=(2,))


def test_deep_yaml(tmp_path):
    f = tmp_path / "plan.yaml"
    for text in ("[" * 100_000 + "]" * 100_000, "a:\n" + "".join(" " * i + "- \n" for i in range(1, 300))):
        f.write_text(text)
        vp("check", str(f), codes=(2,))


@pytest.mark.parametrize(("change", "words"), [
    ({"architectures": 5}, "'architectures' must be a list"),
    ({"architectures": {"a": 1}}, "'architectures' must be a list"),
    ({"num_experts_per_tok": "two"}, "'num_experts_per_tok' must be an integer"),
    ({"text_config": "abc"}, "'text_config' must be an object"),
    ({"tie_word_embeddings": "false"}, "'tie_word_embeddings' must be true or false"),
    ({"attention_bias": "no"}, "'attention_bias' must be true or false"),
    ({"model_type": 5}, "'model_type' must be a string"),
    ({"model_type": {"x": 1}}, "'model_type' must be a string"),
    ({"hidden_size": "1024"}, "'hidden_size' must be a positive integer"),
    ({"num_hidden_layers": 1.5}, "'num_hidden_layers' must be a positive integer"),
    ({"head_dim": -1}, "'head_dim' must be a positive integer"),
    ({"hidden_act": ["silu"]}, "'hidden_act' must be a string"),
    ({"num_key_value_heads": 3}, "not a multiple"),
])
def test_wrong_types_in_config_json(tmp_path, change, words):
    write_config(tmp_path / "c", **change)
    for command in ("plan", "params"):
        r = vp(command, str(tmp_path / "c"), codes=(2,))
        assert words in r.stderr


def test_tie_word_embeddings_false_is_not_read_as_tied(tmp_path):
    tied = json.loads(vp("params", str(write_config(tmp_path / "t")), "--json", codes=(0,)).stdout)
    untied = json.loads(vp("params", str(write_config(tmp_path / "u", tie_word_embeddings=False)), "--json",
                           codes=(0,)).stdout)
    # an untied head adds vocab x hidden = 151,936 x 1,024 parameters (Qwen3-0.6B's shapes)
    assert untied["params"]["total"] - tied["params"]["total"] == 151_936 * 1_024


@pytest.mark.parametrize("name", ["a" * 5000, "a" * 5000 + ".json", "org/" + "a" * 5000, "x\x00y", "~" * 300,
                                  "../" * 2000 + "config.json", ""])
def test_odd_model_names(name):
    r = vp("plan", name, codes=(2,))
    assert len(r.stderr) < 700


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--batch", HUGE, "--batch must be at most 1,048,576"),
    ("--seq", HUGE, "--seq must be at most"),
    ("--gpus", HUGE, "--gpus must be at most"),
    ("--rank", HUGE, "--rank must be at most"),
    ("--new-tokens", HUGE, "--new-tokens"),
    ("--quant-blocksize", HUGE, "--quant-blocksize"),
    ("--gpu", "9" * 30 + "GB", "1 PiB"),
    ("--gpu", "9" * 400 + "GB", "too long for a size"),
    ("--gpu", "9" * 400, "too long for a size"),
    ("--gpu", "1e400GB", "cannot read size"),
    ("--gpu", "0.4B", "at least one byte"),
    ("--alpha", "nan", "--alpha must be a finite number"),
    ("--alpha", "inf", "--alpha must be a finite number"),
    ("--alpha", "-inf", "--alpha must be a finite number"),
    ("--lora-dropout", "nan", "--lora-dropout"),
    ("--margin", "nan", "--margin"),
    ("--margin", "10", "write 10%"),
    ("--margin", "50", "write 50%"),
    ("--margin", "120%", "between 0% and 100%"),
    ("--layers-to-transform", "5-1", "'5-1' runs high to low: write low-high"),
    ("--layers-to-transform", "1-a", "'1-a'"),
])
def test_extreme_flag_values_are_one_line(flag, value, words):
    args = ["plan", "qwen3-0.6b", flag, value, "--json"]
    if flag == "--margin":
        args += ["--gpu", "t4"]
    r = vp(*args, codes=(2,))
    assert words in r.stderr


@pytest.mark.parametrize(("flag", "value"), [("--batch", HUGE), ("--rank", HUGE), ("--alpha", "nan"),
                                             ("--layers-to-transform", "0-999999999"), ("--gpus", "0"),
                                             ("--margin", "10")])
def test_extreme_flags_on_the_other_commands(flag, value):
    vp("fit", "qwen3-0.6b", "--gpu", "t4", flag, value, "--json", codes=(2,))
    vp("gpus", "--fits", "qwen3-0.6b", flag, value, "--json", codes=(2,))
    vp("sweep", "--model", "qwen3-0.6b", flag, value, codes=(2,))
    if flag in ("--rank", "--alpha", "--layers-to-transform"):
        vp("params", "qwen3-0.6b", flag, value, "--json", codes=(2,))


def test_alpha_inf_never_prints_infinity():
    for value in ("inf", "1e999", "nan"):
        r = vp("plan", "qwen3-0.6b", "--alpha", value, "--json", codes=(2,))
        assert "Infinity" not in r.stdout and "NaN" not in r.stdout


@pytest.mark.parametrize(("content", "key"), [
    ({"per_device_train_batch_size": "abc", "output_dir": "o"}, "per_device_train_batch_size"),
    ({"per_device_train_batch_size": 2, "bf16": "maybe", "output_dir": "o"}, "bf16"),
    ({"per_device_train_batch_size": 2, "gradient_checkpointing": [1], "output_dir": "o"}, "gradient_checkpointing"),
    ({"per_device_train_batch_size": 2, "optim": {"a": 1}, "output_dir": "o"}, "optim"),
    ({"per_device_train_batch_size": 2, "max_seq_length": "long", "output_dir": "o"}, "max_seq_length"),
])
def test_training_arguments_json_wrong_types(tmp_path, content, key):
    f = tmp_path / "args.json"
    f.write_text(json.dumps(content))
    r = vp("check", str(f), "--model", "qwen3-0.6b", "--gpu", "t4", codes=(2,))
    assert f"key {key!r}" in r.stderr


def test_training_arguments_bf16_false_string_is_false(tmp_path):
    f = tmp_path / "args.json"
    f.write_text(json.dumps({"per_device_train_batch_size": 1, "bf16": "false", "fp16": "true", "output_dir": "o"}))
    r = vp("check", str(f), "--model", "qwen3-0.6b", "--gpu", "a100-80gb", "--json", codes=(0,))
    assert json.loads(r.stdout)[0]["setup"]["precision"] == "fp16-mixed"


def test_foreign_config_errors_name_the_users_key(tmp_path):
    f = tmp_path / "axolotl.yaml"
    f.write_text("base_model: qwen3-0.6b\nadapter: lora\nlora_target_modules: {a: 1}\n")
    r = vp("check", str(f), "--gpu", "t4", codes=(2,))
    assert "key 'lora_target_modules'" in r.stderr
    f = tmp_path / "lf.yaml"
    f.write_text("model_name_or_path: qwen3-0.6b\nlora_rank: many\n")
    r = vp("check", str(f), "--gpu", "t4", codes=(2,))
    assert "key 'lora_rank'" in r.stderr


@pytest.mark.parametrize("text", [
    "1: 2\n", "model: {a: 1}\ngpu: t4\n", "plans: 5\n", "plans: []\n", "plans: [1, 2]\n",
    "model: qwen3-0.6b\ngpu: t4\nbatch: abc\n", "model: qwen3-0.6b\ngpu: t4\nbatch: .nan\n",
    "model: qwen3-0.6b\ngpu: t4\nalpha: .inf\n", "model: qwen3-0.6b\ngpu: t4\nmargin: .nan\n",
    "model: qwen3-0.6b\ngpu: t4\nrank: " + HUGE + "\n", "model: qwen3-0.6b\ngpu: t4\nlayers_to_transform: 0-99999999\n",
    "model: qwen3-0.6b\ngpu: t4\ngrad_ckpt: maybe\n", "? [a, b]\n: 1\n", "!!python/object:os.system {}\n",
    "a: &a [1, *a]\n", "model: qwen3-0.6b\ngpu: " + "9" * 400 + "GB\n",
])
def test_plan_file_values(tmp_path, text):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    vp("check", str(f), codes=(2,))


@pytest.mark.parametrize("text", ["rtx-4090: .inf\n", "rtx-4090: .nan\n", "rtx-4090: -1\n", f"rtx-4090: {HUGE}\n",
                                  "- {gpu: 5, usd_per_hour: 1}\n", "[1, 2]\n", "'" + "a" * 10000 + "': 1\n"])
def test_price_file_values(tmp_path, text):
    f = tmp_path / "prices.yaml"
    f.write_text(text)
    vp("gpus", "--fits", "qwen3-0.6b", "--prices", str(f), codes=(2,))


# ============================================================================== 7./8. silent and unclear
@pytest.mark.parametrize(("args", "words"), [
    (["--method", "inference", "--rank", "64"], "--rank ignored: --method inference"),
    (["--method", "full", "--rank", "16", "--dora"], "--rank, --dora ignored: --method full"),
    (["--method", "lora", "--new-tokens", "100"], "--new-tokens 100 ignored"),
    (["--method", "inference", "--optim", "sgd"], "--optim ignored"),
    (["--method", "qlora", "--quant", "int8", "--quant-blocksize", "128"], "--quant-blocksize ignored"),
])
def test_ignored_options_warn(args, words):
    r = vp("plan", "qwen3-0.6b", *args, "--json", codes=(0,))
    assert f"vramplan: warning: {words}" in r.stderr
    assert any(words in w for w in json.loads(r.stdout)["warnings"])


def test_used_options_do_not_warn():
    r = vp("plan", "qwen3-0.6b", "--method", "lora", "--rank", "16", "--optim", "sgd", codes=(0,))
    assert "ignored" not in r.stderr


def test_ignored_options_in_a_plan_file_warn(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("model: qwen3-0.6b\ngpu: a100-80gb\nmethod: full\nrank: 64\n")
    r = vp("check", str(f), codes=(0,))
    assert "plan 1 of 1: --rank ignored: --method full" in r.stderr


def test_sweep_without_a_model_names_the_option():
    r = vp("sweep", "--model", "", codes=(2,))
    assert "--model" in r.stderr and "warning above" not in r.stderr


# ============================================================================== in a child process
@linux_only
def test_child_process_fifo_and_alias_bomb_do_not_hang(tmp_path):
    """The same inputs through ``python -m vramplan`` with a deadline, as a user's shell runs them."""
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    (tmp_path / "lol.yaml").write_text(billion_laughs(9))
    vp_subprocess("plan", str(fifo), codes=(2,), timeout=30)
    vp_subprocess("check", str(tmp_path / "lol.yaml"), codes=(2,), timeout=30)
