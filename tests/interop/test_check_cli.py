"""``vramplan check`` on published configs: each file on its own, ok / FAIL / cannot check / bad file per plan,
the ignored keys, the summary line, the exit code and the ``--json`` records (docs/ci.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from cli_entry import vp

CORPUS = Path(__file__).resolve().parents[1] / "data" / "configs"
EXPECTED = yaml.safe_load((CORPUS / "expected.yaml").read_text())["files"]

AXOLOTL_QLORA = CORPUS / "axolotl" / "examples__llama-3__qlora.yml"            # NousResearch/Meta-Llama-3-8B
LF_DPO = CORPUS / "llamafactory" / "examples__train_lora__qwen3_lora_dpo.yaml"
TT_LORA_1B = CORPUS / "torchtune" / "recipes__configs__llama3_2__1B_lora_single_device.yaml"
LF_GALORE = CORPUS / "llamafactory" / "examples__extras__galore__llama3_full_sft.yaml"
SWIFT_DS_YAML = CORPUS / "msswift" / "examples__yaml__deepspeed__sft.yaml"

#: every key of a ``check --json`` record (docs/ci.md)
RECORD_KEYS = {"file", "format", "plan", "plans_in_file", "name", "status", "model_id", "model", "fits", "gpu",
               "capacity_bytes", "peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes",
               "headroom_bytes", "margin", "setup", "ignored", "warnings", "cannot_check", "bad_file", "references"}




def latin1(tmp_path: Path) -> str:
    p = tmp_path / "latin1.yaml"
    p.write_bytes("# entra\xeenement (Latin-1)\nmodel: qwen3-0.6b\n".encode("latin-1"))
    return str(p)


def test_each_file_on_its_own_summary_and_exit_2(tmp_path):
    bad = latin1(tmp_path)
    r = vp("check", str(AXOLOTL_QLORA), str(LF_DPO), bad, str(TT_LORA_1B), "--gpu", "h100-80gb")
    assert r.exit_code == 2
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ok   llama-3-8b · qlora · nf4+DQ · r=32 all-linear · batch 2 × seq 4,096")
    assert lines[1].startswith("cannot check: stage dpo: DPO") and lines[1].endswith(LF_DPO.name)
    assert lines[2].startswith(f"bad file: {bad}: ") and "UTF-8" in lines[2]
    assert lines[3].startswith("cannot check: tokenizer.max_seq_len: null") and "pass --seq" in lines[3]
    assert lines[4] == "summary: 1 fits, 0 does not fit, 2 cannot check, 1 bad file (4 plans in 4 files)"
    errors = [x for x in r.stderr.splitlines() if x.startswith("vramplan: error:")]
    assert len(errors) == 1 and "3 plans cannot be checked or are in bad files" in errors[0]


def test_exit_0_when_all_fit_and_1_when_one_does_not():
    assert vp("check", str(AXOLOTL_QLORA), "--gpu", "h100-80gb").exit_code == 0
    r = vp("check", str(AXOLOTL_QLORA), "--gpu", "8GB")
    assert r.exit_code == 1 and r.stdout.startswith("FAIL llama-3-8b")
    assert r.stdout.splitlines()[-1] == "summary: 0 fits, 1 does not fit, 0 cannot check, 0 bad file (1 plans in 1 files)"
    assert "vramplan: error" not in r.stderr


def test_non_utf8_file_is_one_bad_file_line(tmp_path):
    bad = latin1(tmp_path)
    r = vp("check", bad, "--gpu", "t4")
    assert r.exit_code == 2 and "Traceback" not in r.stderr + r.stdout
    errors = [x for x in r.stderr.splitlines() if x.startswith("vramplan: error:")]
    assert len(errors) == 1 and "UTF-8" in errors[0] and bad in errors[0]
    assert r.stdout.splitlines()[-1].endswith("0 cannot check, 1 bad file (1 plans in 1 files)")


def test_ignored_keys_are_printed_under_the_plan():
    r = vp("check", str(LF_GALORE), "--gpu", "h100-80gb")
    lines = r.stdout.splitlines()
    assert lines[1].startswith("     ignored: use_galore (GaLore")


def test_values_left_to_the_launcher_are_asked_for_then_used():
    r = vp("check", str(SWIFT_DS_YAML), "--gpu", "h100-80gb")
    assert r.exit_code == 2 and "leaves the GPU count to the launcher; pass --gpus N" in r.stdout
    d = json.loads(vp("check", str(SWIFT_DS_YAML), "--gpu", "h100-80gb", "--gpus", "2", "--json").stdout)
    assert d[0]["status"] == "ok" and d[0]["setup"]["gpus"] == 2 and d[0]["setup"]["strategy"] == "zero2"


def _plan_args(setup: dict, model: str) -> list[str]:
    """``vramplan plan`` options for an expected.yaml setup (the colleague's reading, not the reader's)."""
    args = [model, "--method", setup["method"], "--batch", str(setup["batch"]), "--precision", setup["precision"],
            "--attn", setup["attn"], "--optim", setup["optim"], "--loss", setup["loss"],
            "--grad-ckpt" if setup["grad_ckpt"] else "--no-grad-ckpt"]
    if setup["method"] != "full":
        args += ["--rank", str(setup["rank"]), "--alpha", str(setup["alpha"]), "--lora-dropout",
                 str(setup["lora_dropout"]), "--targets",
                 setup["targets"] if isinstance(setup["targets"], str) else ",".join(setup["targets"])]
    return args


def test_json_records_the_full_setup_as_plan_json_does():
    """torchtune llama3.2-1B LoRA at --seq 2048: the same numbers as `vramplan plan` with expected.yaml's
    setup (bf16 adapters, no kbit prep: torchtune builds everything in bf16)."""
    r = vp("check", str(TT_LORA_1B), "--gpu", "h100-80gb", "--seq", "2048", "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert len(d) == 1 and set(d[0]) == RECORD_KEYS
    rec = d[0]
    e = EXPECTED[f"torchtune/{TT_LORA_1B.name}"]
    p = json.loads(vp("plan", *_plan_args(e["setup"], "llama-3.2-1b"), "--seq", "2048", "--stack", "torchtune",
                      "--gpu", "h100-80gb", "--json").stdout)
    assert set(rec["setup"]) == set(p["setup"])
    assert rec["setup"] == p["setup"]
    for k in ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes"):
        assert rec[k] == p[k]
    assert rec["status"] == "ok" and rec["fits"] is True and rec["format"] == "torchtune"
    assert rec["model_id"] == "meta-llama/Llama-3.2-1B-Instruct" and rec["model"] == "llama-3.2-1b"
    assert rec["cannot_check"] is None and rec["bad_file"] is None and rec["ignored"] == []


def test_json_records_cannot_check_and_bad_file(tmp_path):
    bad = latin1(tmp_path)
    r = vp("check", str(LF_DPO), bad, "--gpu", "t4", "--json")
    assert r.exit_code == 2
    d = json.loads(r.stdout)
    assert [x["status"] for x in d] == ["cannot-check", "bad-file"]
    assert all(set(x) == RECORD_KEYS for x in d)
    assert d[0]["format"] == "llamafactory" and d[0]["cannot_check"].startswith("stage dpo")
    assert d[0]["setup"] is None and d[0]["fits"] is None
    assert "UTF-8" in d[1]["bad_file"] and d[1]["format"] is None


def test_launch_script_reads_the_files_it_names(tmp_path):
    """An accelerate launch of ms-swift names its FSDP2 config by a repository path: found in the repository
    layout (copied here as examples/train/multi-gpu/fsdp2_lora/fsdp2.json), its 2 processes and FSDP used."""
    root = tmp_path / "ms-swift"
    (root / "examples/train/multi-gpu/fsdp2_lora").mkdir(parents=True)
    shutil.copy(CORPUS / "msswift/examples__train__multi-gpu__fsdp2_lora__fsdp2.json",
                root / "examples/train/multi-gpu/fsdp2_lora/fsdp2.json")
    script = root / "examples/train/multi-gpu/fsdp2_lora/train.sh"
    shutil.copy(CORPUS / "msswift/examples__train__multi-gpu__fsdp2_lora__train.sh", script)
    d = json.loads(vp("check", str(script), "--gpu", "h100-80gb", "--json").stdout)
    assert d[0]["status"] == "ok", d[0]
    s = d[0]["setup"]
    assert (s["gpus"], s["strategy"], s["offload"], s["grad_ckpt"]) == (2, "fsdp", "none", True)
    assert d[0]["references"][0].endswith("fsdp2_lora/fsdp2.json")


def test_docs_ci_md_documents_every_json_key():
    """docs/ci.md's --json table names every key of a record, and no other."""
    import re

    doc = (CORPUS.parents[2] / "docs" / "ci.md").read_text()
    section = doc.split("### `--json`", 1)[1].split("\n### ", 1)[0]
    keys = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            keys |= set(re.findall(r"`([a-z_]+)`", row.split("|")[1]))
    assert keys == RECORD_KEYS


def test_training_arguments_optimizer_not_modelled_is_named(tmp_path):
    f = tmp_path / "args.json"
    f.write_text(json.dumps({"output_dir": "o", "per_device_train_batch_size": 2, "optim": "galore_adamw",
                             "bf16": True, "model": "qwen3-0.6b", "gpu": "a100-80gb"}))
    d = json.loads(vp("check", str(f), "--json").stdout)
    assert d[0]["status"] == "ok" and d[0]["format"] == "training-args" and d[0]["gpu"] == "a100-80gb"
    assert d[0]["ignored"] == ["optim galore_adamw (optimizer not modelled: checked as adamw)"]
    assert d[0]["setup"]["batch"] == 2 and d[0]["setup"]["optim"] == "adamw"
