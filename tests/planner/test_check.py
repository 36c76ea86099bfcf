"""``vramplan check``: plan files and real training configs, one line per plan, exit 0/1/2, errors that name
file, plan and key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from planner_helpers import vp, vp_json

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


PLANS = """\
gpu: rtx-4090
margin: 10%
plans:
  - model: llama-3.1-8b
    method: qlora
    rank: 16
    targets: [q_proj, k_proj, v_proj, o_proj]
  - name: too big
    model: llama-3.1-8b
    method: lora
    batch: 4
"""


def test_plans_list_one_line_each_exit_1_when_one_does_not_fit(tmp_path):
    f = write(tmp_path, "team.vramplan.yaml", PLANS)
    r = vp("check", f)
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and lines[2] == "summary: 1 fits, 1 does not fit, 0 cannot check, 0 bad file (2 plans in 1 files)"
    assert lines[0].startswith("ok   llama-3.1-8b · qlora · nf4+DQ · r=16 q_proj,k_proj,v_proj,o_proj")
    assert lines[1].startswith("FAIL llama-3.1-8b · lora") and "(too big)" in lines[1]
    assert re.search(r"\d+\.\d\d / 23\.99 GiB on rtx-4090 \(headroom -?\d+\.\d\d GiB, 10% margin\)", lines[0])
    d = vp_json("check", f)
    p = vp_json("plan", "llama-3.1-8b", "--method", "qlora", "--rank", "16", "--targets",
                "q_proj,k_proj,v_proj,o_proj", "--gpu", "rtx-4090", "--margin", "10%")
    assert d[0]["device_used_bytes"] == p["device_used_bytes"] and d[0]["headroom_bytes"] == p["fits"]["headroom_bytes"]
    assert [x["fits"] for x in d] == [True, False] and d[1]["name"] == "too big"


def test_single_mapping_dash_keys_json_and_overrides(tmp_path):
    f = write(tmp_path, "one.json", json.dumps({"model": "qwen3-0.6b", "grad-ckpt": True, "lora-dropout": 0.1,
                                                "gpu": "t4"}))
    assert vp("check", f).exit_code == 0
    # --gpu overrides the file's card, --margin its margin
    assert vp("check", f, "--gpu", "rtx-4060-ti-8gb").stdout.count("on rtx-4060-ti-8gb") == 1
    d = vp_json("check", f, "--margin", "50%")
    assert d[0]["margin"] == 0.5
    # several files: every plan of every file
    g = write(tmp_path, "two.yaml", PLANS)
    assert len(vp("check", f, g).stdout.splitlines()) == 3 + 1      # three plans and the summary


LLAMA_FACTORY = """\
### model
model_name_or_path: meta-llama/Llama-3.1-8B
### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 16
lora_target: all
quantization_bit: 4
### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 4096
### train
per_device_train_batch_size: 2
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
bf16: true
flash_attn: fa2
"""

AXOLOTL = """\
base_model: Qwen/Qwen2.5-7B
load_in_4bit: true
adapter: qlora
lora_r: 32
lora_alpha: 16
lora_target_linear: true
sequence_len: 2048
micro_batch_size: 2
gradient_accumulation_steps: 4
gradient_checkpointing: true
optimizer: paged_adamw_8bit
bf16: auto
flash_attention: true
datasets:
  - path: mhenrichsen/alpaca_2k_test
    type: alpaca
"""

TRAINING_ARGS = {"output_dir": "out", "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                 "bf16": True, "fp16": False, "gradient_checkpointing": True, "optim": "adamw_bnb_8bit",
                 "learning_rate": 2e-5, "num_train_epochs": 3, "max_seq_length": 1024, "model": "qwen3-0.6b",
                 "method": "full"}


@pytest.mark.parametrize("name,text,gpu,equivalent", [
    ("llamafactory.yaml", LLAMA_FACTORY, "rtx-4090",
     # lora_alpha unset = 2 * lora_rank (LLaMA-Factory finetuning_args.py:587); no prepare_model_for_kbit_training
     ["llama-3.1-8b", "--method", "qlora", "--rank", "16", "--alpha", "32", "--targets", "all-linear", "--seq", "4096",
      "--batch", "2", "--grad-ckpt", "--attn", "flash", "--precision", "bf16-mixed", "--no-kbit-prep", "--stack", "llama-factory"]),
    ("axolotl.yml", AXOLOTL, "a100-40gb",
     # flash attention casts the kbit-prepared norms/embeddings back to bf16 (axolotl loaders/model.py:456-476)
     ["qwen2.5-7b", "--method", "qlora", "--rank", "32", "--alpha", "16", "--targets", "all-linear", "--seq", "2048",
      "--batch", "2", "--grad-ckpt", "--attn", "flash", "--optim", "paged-adamw-8bit", "--no-kbit-prep", "--stack", "axolotl"]),
    ("args.json", json.dumps(TRAINING_ARGS), "rtx-4090",
     ["qwen3-0.6b", "--method", "full", "--batch", "4", "--seq", "1024", "--grad-ckpt", "--optim", "adamw-8bit"]),
])
def test_training_configs_read_as_the_setup_they_train(tmp_path, name, text, gpu, equivalent):
    f = write(tmp_path, name, text)
    d = vp_json("check", f, "--gpu", gpu)
    p = vp_json("plan", *equivalent, "--gpu", gpu)
    assert d[0]["setup"] == p["setup"]
    assert d[0]["device_used_bytes"] == p["device_used_bytes"]
    assert d[0]["format"] == {"llamafactory.yaml": "llamafactory", "axolotl.yml": "axolotl",
                              "args.json": "training-args"}[name]


def test_training_args_model_from_the_command_line(tmp_path):
    args = {k: v for k, v in TRAINING_ARGS.items() if k != "model"}
    f = write(tmp_path, "args.json", json.dumps(args))
    r = vp("check", f, "--gpu", "a100-80gb")
    assert r.exit_code == 2 and "key 'model'" in r.stderr and "--model" in r.stderr
    assert vp("check", f, "--gpu", "a100-80gb", "--model", "qwen3-0.6b").exit_code == 0


@pytest.mark.parametrize("text,needle", [
    ("gpu: t4\nplans:\n  - model: qwen3-0.6b\n  - model: qwen3-0.6b\n    rnak: 8\n",
     "plan 2 of 2: key 'rnak': unknown key (did you mean: rank?)"),
    ("gpu: t4\nmodel: qwen3-0.6b\nbatch: four\n", "plan 1 of 1: key 'batch': must be an integer, got 'four'"),
    ("gpu: t4\nmodel: qwen3-0.6b\ngrad_ckpt: sometimes\n", "plan 1 of 1: key 'grad_ckpt': must be true or false"),
    ("gpu: t4\nmodel: qwen3-0.6b\nrank: 0\n", "plan 1 of 1: key 'rank': --rank must be an integer >= 1, got 0"),
    ("gpu: t4\nmodel: qwen3-0.6b\nmethod: lorra\n", "key 'method': 'lorra' is not one of"),
    ("gpu: t4\nmodel: qwen3-0.6b\ntargets: [nope]\n", "key 'targets': --targets 'nope' matches no module"),
    ("gpu: t4\nmodel: qwen3-0.6b\nmethod: qlora\nquant: none\n", "key 'method': --method qlora needs"),
    ("gpu: t44\nmodel: qwen3-0.6b\n", "key 'gpu': unknown GPU 't44' (did you mean: t4?)"),
    ("gpu: t4\nmodel: not-a-model-anywhere\n", "plan 1 of 1: cannot check: unknown model"),
    ("model: qwen3-0.6b\n", "key 'gpu': missing"),
    ("gpu: t4\nmodel: qwen3-0.6b\nmargin: 120%\n", "key 'margin': must be between 0% and 100%"),
    ("gpu: t4\nplans:\n  - model: qwen3-0.6b\n  - 7\n", "plan 2 of 2: expected a mapping"),
    ("plans: []\n", "key 'plans' must be a non-empty list"),
    ("[1, 2]\n", "expected a mapping"),
    ("model: [unclosed\n", "not YAML"),
    ("", "an empty file"),
])
def test_bad_plan_files_exit_2_naming_file_plan_and_key(tmp_path, text, needle):
    f = write(tmp_path, "bad.vramplan.yaml", text)
    r = vp("check", f)
    assert r.exit_code == 2, r.stdout
    assert ("bad file: " in r.stdout) != ("cannot check: " in r.stdout) and r.stdout.count("\n") == 2   # + summary
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"vramplan: error: {f}: ") and needle in line, line


def test_a_bad_file_never_hides_the_others(tmp_path):
    good = write(tmp_path, "a.yaml", "gpu: t4\nmodel: qwen3-0.6b\n")
    bad = write(tmp_path, "b.yaml", "gpu: t4\nmodel: qwen3-0.6b\nbatch: -1\n")
    big = write(tmp_path, "c.yaml", "gpu: t4\nmodel: qwen3-0.6b\nbatch: 64\nseq: 8192\n")
    r = vp("check", good, bad, big)
    lines = r.stdout.splitlines()
    assert r.exit_code == 2 and "b.yaml: plan 1 of 1: key 'batch'" in r.stderr
    assert lines[0].startswith("ok   qwen3-0.6b") and lines[0].endswith("a.yaml plan 1")
    assert lines[1].startswith(f"bad file: {bad}: plan 1 of 1: key 'batch'")
    assert lines[2].startswith("FAIL qwen3-0.6b") and lines[2].endswith("c.yaml plan 1")
    assert lines[3] == "summary: 1 fits, 1 does not fit, 0 cannot check, 1 bad file (3 plans in 3 files)"


def test_not_json_and_missing_file(tmp_path):
    f = write(tmp_path, "x.json", "{not json")
    r = vp("check", f, "--gpu", "t4")
    assert r.exit_code == 2 and f"{f}: not JSON" in r.stderr
    r = vp("check", str(tmp_path / "gone.yaml"))
    assert r.exit_code == 2 and "cannot read" in r.stderr


@pytest.mark.parametrize("text,needle", [
    (LLAMA_FACTORY.replace("finetuning_type: lora", "finetuning_type: freeze"), "cannot check: finetuning_type"),
    (LLAMA_FACTORY.replace("stage: sft", "stage: dpo"), "cannot check: stage dpo"),
])
def test_unmodelled_training_config_values_cannot_be_checked_exit_2(tmp_path, text, needle):
    r = vp("check", write(tmp_path, "c.yaml", text), "--gpu", "a100-80gb")
    assert r.exit_code == 2 and needle in r.stderr and r.stdout.startswith(needle), (r.stdout, r.stderr)
    assert r.stdout.splitlines()[-1] == "summary: 0 fits, 0 does not fit, 1 cannot check, 0 bad file (1 plans in 1 files)"


def test_unmodelled_optimizer_is_named_not_refused(tmp_path):
    r = vp("check", write(tmp_path, "c.yaml", AXOLOTL.replace("optimizer: paged_adamw_8bit",
                                                                "optimizer: adamw_sparkly")), "--gpu", "a100-80gb")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[1] == "     ignored: optimizer adamw_sparkly (not in vramplan's --optim list: " \
                                       "optimizer not modelled)"


def test_pre_commit_hook_definition():
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "vramplan-check")
    assert hook["entry"] == "vramplan check"
    rx = re.compile(hook["files"])
    assert rx.search("plans/team.vramplan.yaml") and rx.search("x.vramplan.yml")
    assert not rx.search("config.yaml") and not rx.search("x.vramplan.yaml.bak")
    doc = (REPO / "docs" / "ci.md").read_text()
    assert "vramplan check" in doc and "id: vramplan-check" in doc and "uses: actions/" in doc
