"""Checks on the bundled data files: ``profiles/models/*.yaml`` and ``profiles/gpus.yaml``.

The model check rebuilds every profile's model with the installed transformers on the meta device (no
memory, ~0.1-1 s each) and requires its unique-parameter count to equal the stored ``params_total``
exactly; a few totals are also pinned to figures published outside this repository. The YAML files are the
only copy of the profiles: ``profiles/tools/recount_params.py --check`` must pass on them and must fail,
naming the file, on a copy with one ``params_total`` altered.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
MODELS_DIR = PROFILES_DIR / "models"
GPUS_FILE = PROFILES_DIR / "gpus.yaml"

MODEL_KEYS = ["name", "hf_id", "aliases", "source", "params_total", "config"]
GPU_KEYS = {"name", "aliases", "vendor", "memory_mib", "marketing_gb", "architecture", "compute_capability",
            "sm_count", "sm_source", "bf16", "source"}
ARCHITECTURES = {"volta", "turing", "ampere", "ada", "hopper", "blackwell", "cdna3"}
REQUIRED_GPUS = {"rtx-3060-12gb", "rtx-3080-10gb", "rtx-3090", "rtx-4060-ti-16gb", "rtx-4070", "rtx-4080",
                 "rtx-4090", "rtx-5090", "t4", "v100-16gb", "v100-32gb", "a10g", "l4", "l40s", "a100-40gb",
                 "a100-80gb", "h100-80gb", "h100-pcie", "h200", "b200", "mi300x"}
REQUIRED_MODELS = {
    "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "llama-3.1-8b", "llama-3.1-70b",
    "llama-3.1-405b", "llama-3.2-1b", "llama-3.2-3b", "llama-3.3-70b", "mistral-7b-v0.1", "mistral-7b-v0.3",
    "mixtral-8x7b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b",
    "qwen2.5-72b", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b",
    "qwen3-30b-a3b", "gemma-2-2b", "gemma-2-9b", "gemma-2-27b", "gemma-3-1b", "gemma-3-4b", "gemma-3-12b",
    "gemma-3-27b", "phi-3-mini-4k", "phi-4", "baichuan-7b", "bloom-389m-zh", "bloom-560m", "gpt2", "opt-125m",
    "opt-1.3b", "falcon-7b", "deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-llama-8b",
}

# Totals published outside this repository (measured or printed by others), pinned exactly.
PUBLISHED_TOTALS = {
    "llama-3-8b": 8_030_261_248,  # transformers meta build, /work/shared/FINDINGS.md; model card "8.03B"
    "qwen2.5-14b": 14_770_033_664,  # transformers meta build, /work/shared/FINDINGS.md
    "qwen2.5-0.5b": 494_032_768,  # PARAMETER_COUNT in a public Qwen2.5-0.5B GGUF-export contract
    "bloom-560m": 559_214_592,  # bigscience/bloom-560m model card
    "gpt2": 124_439_808,  # the classic GPT-2 small count (tied head)
    "pythia-1.4b": 1_414_647_808,  # Pythia paper, table of total parameters
    "baichuan-7b": 7_000_559_616,  # Baichuan-7B checkpoint total
    "gemma-7b": 786_432_000 + 7_751_248_896,  # Gemma report (arXiv:2403.08295) Table 2: embedding + non-embedding
    # print_trainable_parameters: "all params: 389,584,896" with 43,815,936 trainable (LoRA + a
    # modules_to_save copy of word_embeddings), so the base model is the difference.
    "bloom-389m-zh": 389_584_896 - 43_815_936,
}

# Remote-code architectures: transformers cannot build them, their count is derived by hand.
REMOTE_CODE = {"baichuan"}


def _load(path: Path):
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


MODEL_FILES = sorted(MODELS_DIR.glob("*.yaml"))
PROFILES = {p.stem: _load(p) for p in MODEL_FILES}


def test_required_models_present():
    missing = REQUIRED_MODELS - PROFILES.keys()
    assert not missing, f"profiles/models lacks {sorted(missing)}"


@pytest.mark.parametrize("stem", sorted(PROFILES))
def test_model_profile_schema(stem):
    doc = PROFILES[stem]
    assert isinstance(doc, dict), f"{stem}.yaml is not a mapping"
    assert list(doc) == MODEL_KEYS, f"{stem}.yaml keys must be exactly {MODEL_KEYS} in this order, got {list(doc)}"
    assert doc["name"] == stem, f"name {doc['name']!r} must equal the file stem {stem!r}"
    assert stem == stem.lower() and " " not in stem, f"{stem!r} must be lowercase kebab"
    assert isinstance(doc["hf_id"], str) and doc["hf_id"].count("/") == 1, f"hf_id {doc['hf_id']!r} is not org/name"
    assert isinstance(doc["aliases"], list) and all(isinstance(a, str) and a for a in doc["aliases"])
    assert isinstance(doc["source"], str) and doc["source"].startswith("https://huggingface.co/")
    total = doc["params_total"]
    assert type(total) is int and total > 0, f"params_total must be a positive int, got {total!r}"
    config = doc["config"]
    assert isinstance(config, dict) and isinstance(config.get("model_type"), str)
    # config.json is kept verbatim; GPT-2 names its width n_embd (transformers maps it to hidden_size).
    width = config.get("hidden_size", config.get("n_embd"))
    assert type(width) is int and width > 0, f"{stem}: config has no integer hidden_size (or n_embd)"


def test_aliases_unique_and_not_shadowing_names():
    owner: dict[str, str] = {}
    for stem, doc in PROFILES.items():
        for key in [doc["name"], doc["hf_id"], *doc["aliases"]]:
            k = key.lower()
            assert owner.get(k, stem) == stem, f"{key!r} is claimed by both {owner[k]} and {stem}"
            owner[k] = stem
        assert len({a.lower() for a in doc["aliases"]}) == len(doc["aliases"]), f"{stem}: duplicate alias"


def _count_params(config: dict) -> int:
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**copy.deepcopy(config))  # it edits rope_scaling in place
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once


@pytest.mark.parametrize("stem", sorted(PROFILES))
def test_params_total_matches_transformers(stem):
    transformers = pytest.importorskip("transformers")
    config = PROFILES[stem]["config"]
    model_type = config["model_type"]
    if model_type in REMOTE_CODE or model_type not in transformers.CONFIG_MAPPING:
        pytest.skip(f"model_type {model_type!r} is remote code, unknown to transformers "
                    f"{transformers.__version__}; its params_total is checked by hand")
    assert _count_params(config) == PROFILES[stem]["params_total"]


def test_baichuan_7b_hand_count():
    """Baichuan-7B: W_pack Linear(h, 3h) + o_proj + gate/up/down + 2 RMSNorm per layer; untied head."""
    c = PROFILES["baichuan-7b"]["config"]
    h, i, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    per_layer = 3 * h * h + h * h + 3 * h * i + 2 * h
    assert c["tie_word_embeddings"] is False
    assert n * per_layer + 2 * v * h + h == PROFILES["baichuan-7b"]["params_total"]


@pytest.mark.parametrize("stem,total", sorted(PUBLISHED_TOTALS.items()))
def test_published_totals_pinned(stem, total):
    assert PROFILES[stem]["params_total"] == total


# ------------------------------------------------------------------------- profiles/tools/recount_params.py
# The YAML files are the only copy of the profiles; the tool recounts params_total from each file's config.
# (That the pure-Python count equals the meta-device count is tested per profile in
# tests/shapes/test_profiles_agree.py, so these tests run the tool with --no-meta.)
RECOUNT = PROFILES_DIR / "tools" / "recount_params.py"


def _recount_module():
    spec = importlib.util.spec_from_file_location("recount_params", RECOUNT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up while being built
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def _copy_profiles(tmp_path: Path) -> Path:
    dest = tmp_path / "models"
    shutil.copytree(MODELS_DIR, dest)
    return dest


def test_recount_check_passes_on_shipped_profiles():
    proc = subprocess.run([sys.executable, str(RECOUNT), "--check", "--no-meta"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"shipped params_total out of date:\n{proc.stderr}"
    assert "differs" not in proc.stderr


def test_recount_check_fails_and_names_the_altered_file(tmp_path):
    models = _copy_profiles(tmp_path)
    target = models / "qwen2.5-0.5b.yaml"
    before = target.read_bytes()
    assert b"\nparams_total: 494032768\n" in before
    target.write_bytes(before.replace(b"\nparams_total: 494032768\n", b"\nparams_total: 494032769\n"))
    altered = target.read_bytes()
    proc = subprocess.run([sys.executable, str(RECOUNT), "--check", "--no-meta", "--models-dir", str(models)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    differing = [line for line in proc.stderr.splitlines() if "differs" in line]
    assert differing == ["qwen2.5-0.5b.yaml: params_total differs: 494,032,769 in the file, 494,032,768 counted"]
    assert target.read_bytes() == altered, "--check must write nothing"


def test_recount_rewrites_only_the_total_byte_for_byte(tmp_path):
    models = _copy_profiles(tmp_path)
    target = models / "llama-2-7b.yaml"
    shipped = target.read_bytes()
    # A comment and CRLF line endings must survive the rewrite; only the digits change.
    edited = (b"# kept: a maintainer's comment\n" + shipped).replace(b"params_total: 6738415616",
                                                                     b"params_total: 1  # kept too")
    edited = edited.replace(b"\n", b"\r\n")
    target.write_bytes(edited)
    others = {p.name: p.read_bytes() for p in models.glob("*.yaml") if p != target}
    tool = _recount_module()
    assert tool.main(["--no-meta", "--models-dir", str(models)]) == 0
    assert target.read_bytes() == edited.replace(b"params_total: 1  #", b"params_total: 6738415616  #")
    assert {p.name: p.read_bytes() for p in models.glob("*.yaml") if p != target} == others
    assert not list(models.glob(".*.tmp")), "the atomic write must leave no temporary file"
    assert tool.main(["--check", "--no-meta", "--models-dir", str(models)]) == 0


def test_recount_refuses_a_total_it_cannot_rewrite_in_place(tmp_path):
    models = _copy_profiles(tmp_path)
    target = models / "gpt2.yaml"
    edited = target.read_bytes().replace(b"params_total: 124439808", b"params_total: 124_439_808")
    target.write_bytes(edited)
    tool = _recount_module()
    assert tool.main(["--no-meta", "--models-dir", str(models), "gpt2"]) == 2
    assert target.read_bytes() == edited


# ------------------------------------------------------------------------------------------------ GPUs
GPUS = _load(GPUS_FILE)["gpus"]


def test_gpu_schema():
    for gpu in GPUS:
        assert set(gpu) == GPU_KEYS, f"{gpu.get('name')}: keys {sorted(gpu)} != {sorted(GPU_KEYS)}"
        assert gpu["name"] == gpu["name"].lower() and " " not in gpu["name"]
        assert all(isinstance(a, str) and a for a in gpu["aliases"]), f"{gpu['name']}: aliases must be strings"
        assert gpu["vendor"] in {"nvidia", "amd"}
        assert gpu["architecture"] in ARCHITECTURES, f"{gpu['name']}: unknown architecture {gpu['architecture']!r}"
        assert isinstance(gpu["compute_capability"], str) and gpu["compute_capability"].count(".") == 1
        assert type(gpu["bf16"]) is bool and isinstance(gpu["source"], str) and gpu["source"]
        assert type(gpu["marketing_gb"]) is int
        assert type(gpu["sm_count"]) is int and gpu["sm_count"] > 0 and gpu["sm_source"], f"{gpu['name']}: sm_count"


def test_gpu_memory_plausible():
    for gpu in GPUS:
        mib, gb = gpu["memory_mib"], gpu["marketing_gb"]
        assert type(mib) is int and 4 * 1024 <= mib <= 256 * 1024, f"{gpu['name']}: memory_mib {mib!r}"
        # The driver's total sits within a few percent of the marketed size read as GiB (ECC, reserved
        # regions) or as GB (B200: 183359 MiB = 192.3 GB, sold as 180 GB).
        gib = mib / 1024
        assert 0.9 * gb <= gib <= 1.03 * gb or abs(mib * 2**20 / 1e9 - gb) / gb < 0.08, (
            f"{gpu['name']}: {mib} MiB is implausible for a {gb} GB card")


def test_gpu_names_and_aliases_unique():
    owner: dict[str, str] = {}
    for gpu in GPUS:
        for key in [gpu["name"], *gpu["aliases"]]:
            k = key.lower()
            assert k not in owner, f"{key!r} is claimed by both {owner[k]} and {gpu['name']}"
            owner[k] = gpu["name"]


def test_required_gpus_present():
    names = {g["name"] for g in GPUS}
    assert not REQUIRED_GPUS - names, f"gpus.yaml lacks {sorted(REQUIRED_GPUS - names)}"
    h100 = {a.lower() for a in next(g for g in GPUS if g["name"] == "h100-80gb")["aliases"]}
    assert "h100-sxm" in h100, "h100-80gb must be the SXM part and answer to 'h100-sxm'"


def test_bf16_follows_architecture():
    for gpu in GPUS:
        assert gpu["bf16"] == (gpu["architecture"] not in {"volta", "turing"}), gpu["name"]
