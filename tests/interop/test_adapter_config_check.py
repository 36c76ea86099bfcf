"""``vramplan check adapter_config.json``: a PEFT adapter's config, as ``LoraConfig.save_pretrained`` writes it."""

from __future__ import annotations

import json

import pytest
from cli_entry import vp

peft = pytest.importorskip("peft")


@pytest.fixture
def adapter(tmp_path):
    cfg = peft.LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.05,
                          task_type="CAUSAL_LM", base_model_name_or_path="Qwen/Qwen2.5-0.5B")
    cfg.save_pretrained(str(tmp_path))           # PEFT writes adapter_config.json itself
    return tmp_path / "adapter_config.json"


def test_adapter_config_is_read_as_peft_saved_it(adapter):
    r = vp("check", str(adapter), "--gpu", "24GB", "--seq", "1024", "--batch", "2", "--json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)["results"][0] if isinstance(json.loads(r.stdout), dict) else json.loads(r.stdout)[0]
    assert rec["format"] == "peft-adapter" and rec["model"] == "qwen2.5-0.5b"
    lora = rec["setup"]["lora"]
    assert (lora["r"], lora["alpha"], sorted(lora["targets"]), lora["dropout"]) == (16, 32, ["q_proj", "v_proj"], 0.05)
    assert (rec["setup"]["batch"], rec["setup"]["seq"]) == (2, 1024)


def test_an_adapter_names_no_data_so_batch_and_seq_are_asked_for(adapter):
    r = vp("check", str(adapter), "--gpu", "24GB")
    assert r.exit_code == 2
    assert "pass --batch" in r.stdout + r.stderr and "pass --seq" in r.stdout + r.stderr
