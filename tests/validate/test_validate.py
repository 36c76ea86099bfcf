"""`vramplan validate` on CPU with tiny models: records, summary, README, resume, budget stop, bad matrices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vramplan.errors import PlanFileError
from vramplan.profiler.campaign import load_matrix, profile_argv, summarize, validate

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256,
        "max_position_embeddings": 512, "tie_word_embeddings": False}


@pytest.fixture
def matrix(tmp_path: Path) -> Path:
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY))
    doc = {"budget_minutes": 10,
           "defaults": {"steps": 1, "warmup": 0, "loop": "plain", "device": "cpu", "sample_hz": 50},
           "runs": [{"model": str(model), "method": "lora", "batch": 1, "seq": 32, "targets": "all-linear"},
                    {"model": str(model), "method": "qlora", "batch": 2, "seq": 32}]}
    p = tmp_path / "matrix.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.slow
def test_campaign_writes_records_summary_readme_and_resumes(matrix, tmp_path):
    out = tmp_path / "val"
    log: list[str] = []
    s = validate(str(matrix), str(out), min_run_s=1, echo=log.append)
    assert [r["status"] for r in s["rows"]] == ["ok", "ok"], log
    assert len(s["runs"]) == 2 and all((out / p).is_file() for p in s["runs"])
    assert s["stats"]["peak_allocated_bytes"] is None          # CPU: no allocator counters
    text = (out / "README.md").read_text()
    assert "measured against estimated" in text and "lora" in text
    assert json.loads((out / "summary.json").read_text())["schema"] == "vramplan.validation/1"
    log.clear()
    validate(str(matrix), str(out), min_run_s=1, echo=log.append)
    assert sum(line.startswith("skip") for line in log) == 2 and not any(line.startswith("run ") for line in log)


def test_budget_stops_cleanly_before_starting_a_run(matrix, tmp_path):
    log: list[str] = []
    validate(str(matrix), str(tmp_path / "v"), budget_s=5, min_run_s=60, echo=log.append)
    assert log and log[0].startswith("stop") and "resume" in log[0]


def test_profile_argv_maps_options(matrix, tmp_path):
    runs, _ = load_matrix(matrix)
    argv = profile_argv(runs[0], tmp_path)
    assert argv[1:4] == ["-m", "vramplan", "profile"]
    assert "--targets" in argv and "all-linear" in argv and "--loop" in argv and "plain" in argv


def test_committed_matrix_is_valid_and_ordered_small_first():
    root = Path(__file__).resolve().parents[2]
    runs, budget = load_matrix(root / "reports" / "validation" / "matrix.yaml")
    assert budget <= 25 * 60 and len(runs) >= 30
    assert runs[0].model == "qwen2.5-0.5b"
    assert any(r.options.get("until_oom") for r in runs)
    from vramplan.profiles import resolve_model

    for r in runs:            # every model resolves offline
        resolve_model(r.model)


@pytest.mark.parametrize("doc, fragment", [
    ("runs: [{model: gpt2, ranq: 8}]", "run 0: unknown key 'ranq' (did you mean: rank?)"),
    ("runs: [{batch: 1}]", "run 0: expected a mapping with a 'model' key"),
    ("budget: 3\nruns: []", "unknown key 'budget'"),
    ("runs: [{model: gpt2}, {model: gpt2}]", "duplicates"),
    ("runs: [", "not valid YAML"),
])
def test_bad_matrix(tmp_path, doc, fragment):
    p = tmp_path / "m.yaml"
    p.write_text(doc)
    with pytest.raises(PlanFileError) as e:
        load_matrix(p)
    assert fragment in str(e.value) and str(p) in str(e.value)


def test_cli_dry_run(matrix, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vramplan", "validate", str(matrix), "--out", str(tmp_path / "o"),
                           "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("would run:") == 2


def test_summary_statistics(tmp_path):
    from vramplan.profiler.campaign import Run

    runs = [Run(i, f"r{i}", {"model": "m"}) for i in range(3)]
    for i, err in enumerate([1.0, -2.0, 10.0]):
        d = tmp_path / "runs" / f"r{i}"
        d.mkdir(parents=True)
        rec = {"schema": "vramplan.run/1", "status": "ok", "environment": {"gpu_name": "H100"},
               "measured": {"peak_allocated_bytes": 100}, "estimate": {"peak_allocated_bytes": 100},
               "error": {"peak_allocated_bytes": {"error_pct": err}}}
        (d / "rec.json").write_text(json.dumps(rec))
    s = summarize(tmp_path, runs)["stats"]["peak_allocated_bytes"]
    assert s == {"n": 3, "median_abs_error_pct": 2.0, "p90_abs_error_pct": 8.4, "max_abs_error_pct": 10.0}
