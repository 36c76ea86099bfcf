"""The foundation commands (models, gpus, params) and name resolution, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vramplan.cli.main import cli, main

LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
             "tie_word_embeddings": False, "hidden_act": "silu"}


def run(*args: str) -> tuple[int, str, str]:
    """Run the console entry point (main) and capture exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "vramplan", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    return proc.returncode, proc.stdout, proc.stderr


def test_models_lists_every_bundled_profile():
    res = CliRunner().invoke(cli, ["models", "--json"], catch_exceptions=False)
    assert res.exit_code == 0
    rows = json.loads(res.output)
    names = {r["name"] for r in rows}
    assert len(rows) >= 40
    assert {"llama-3-8b", "qwen3-14b", "baichuan-7b", "gpt2", "mixtral-8x7b"} <= names
    llama = next(r for r in rows if r["name"] == "llama-3-8b")
    assert llama["params_total"] == 8_030_261_248


def test_gpus_lists_catalogue_with_driver_memory():
    res = CliRunner().invoke(cli, ["gpus", "--json"], catch_exceptions=False)
    cards = {g["name"]: g for g in json.loads(res.output)}
    assert cards["rtx-4090"]["memory_mib"] == 24564
    assert cards["rtx-4090"]["memory_bytes"] == 24564 * 2**20
    res = CliRunner().invoke(cli, ["gpus"], catch_exceptions=False)
    assert "memory MiB" in res.output and "a100-80gb" in res.output


@pytest.mark.parametrize("name", ["meta-llama/Meta-Llama-3-8B", "META-LLAMA/meta-llama-3-8b", "llama-3-8b"])
def test_params_resolves_aliases_case_insensitively(name):
    res = CliRunner().invoke(cli, ["params", name, "--json"], catch_exceptions=False)
    assert res.exit_code == 0
    assert json.loads(res.output)["params"] == {"total": 8_030_261_248, "trainable": 8_030_261_248}


def test_params_prints_peft_line_exactly():
    res = CliRunner().invoke(cli, ["params", "llama-3-8b", "-r", "16", "--targets", "all-linear"],
                             catch_exceptions=False)
    assert res.output.strip() == ("trainable params: 41,943,040 || all params: 8,072,204,288 || "
                                  "trainable%: 0.5196")


def test_params_seed_claims():
    """The numbers our users' articles print, reproduced from the same setups."""
    r = CliRunner()
    out = r.invoke(cli, ["params", "Langboat/bloom-389m-zh", "-r", "8", "--target-regex",
                         r".*\.1.*query_key_value", "--modules-to-save", "word_embeddings"],
                   catch_exceptions=False).output
    assert out.strip() == "trainable params: 43,815,936 || all params: 389,584,896 || trainable%: 11.2468"
    out = r.invoke(cli, ["params", "Qwen/Qwen3-14B", "-r", "8", "--targets", "all-linear", "--json"],
                   catch_exceptions=False).output
    assert json.loads(out)["params"]["trainable"] == 32_112_640


def test_params_every_profile_answers():
    from vramplan.profiles import bundled_model_names

    r = CliRunner()
    for name in bundled_model_names():
        res = r.invoke(cli, ["params", name, "--json"], catch_exceptions=False)
        assert res.exit_code == 0, (name, res.output)
        assert json.loads(res.stdout)["params"]["total"] > 0


def test_local_config_file_and_folder(tmp_path):
    f = tmp_path / "config.json"
    f.write_text(json.dumps(LLAMA3_8B))
    for arg in (str(f), str(tmp_path)):
        res = CliRunner().invoke(cli, ["params", arg, "--json"], catch_exceptions=False)
        assert json.loads(res.output)["params"]["total"] == 8_030_261_248


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    (json.dumps({k: v for k, v in LLAMA3_8B.items() if k != "hidden_size"}), "hidden_size"),
    (json.dumps({**LLAMA3_8B, "num_attention_heads": 0}), "num_attention_heads"),
    (json.dumps({**LLAMA3_8B, "hidden_size": -4096}), "hidden_size"),
    (json.dumps({**LLAMA3_8B, "hidden_size": 4095}), "not divisible"),
    (json.dumps([1, 2]), "JSON object"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, content, fragment):
    f = tmp_path / "config.json"
    f.write_text(content)
    code, out, err = run("params", str(f))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err and str(f) in err


def test_unknown_model_suggests_close_names():
    code, _, err = run("params", "llama-3-8")
    assert code == 2 and err.count("\n") == 1
    assert "llama-3-8b" in err


def test_unbundled_hub_id_offline_says_how_to_pass_a_local_config():
    code, _, err = run("params", "someorg/some-model-7b")
    assert code == 2 and err.count("\n") == 1
    assert "offline" in err and "config.json" in err


def test_hub_config_cache_is_used_offline(tmp_path, monkeypatch):
    cache = tmp_path / "c"
    (cache / "configs").mkdir(parents=True)
    (cache / "configs" / "someorg--llama-clone.json").write_text(json.dumps(LLAMA3_8B))
    monkeypatch.setenv("VRAMPLAN_CACHE", str(cache))
    from vramplan.profiles import resolve_model

    r = resolve_model("someorg/llama-clone")
    assert r.origin == "hub-cache" and r.spec.params_total == 8_030_261_248


@pytest.mark.parametrize("args, fragment", [
    (["--targets", "q_proj,v_proj"], "W_pack"),
    (["--target-regex", "(("], "does not compile"),
    (["-r", "0"], "--rank"),
])
def test_lora_errors(args, fragment):
    code, _, err = run("params", "baichuan-7b", *args)
    assert code == 2 and err.count("\n") == 1 and fragment in err, err


def test_remote_code_folder_needs_the_flag(tmp_path):
    cfg = {**LLAMA3_8B, "model_type": "my_custom_arch", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code, _, err = run("params", str(tmp_path))
    assert code == 2 and "trust-remote-code" in err


def test_analytic_path_imports_no_torch():
    code = ("import sys; from vramplan.cli.main import main\n"
            "try:\n main(['plan','llama-3-8b','--method','qlora','--json'])\n"
            "except SystemExit: pass\n"
            "from vramplan.cli.main import main as m2\n"
            "try:\n m2(['params','qwen3-14b','--targets','all-linear'])\n"
            "except SystemExit: pass\n"
            "bad = [m for m in ('torch','transformers','peft','bitsandbytes') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_python_m_vramplan_and_version():
    code, out, _ = run("--version")
    assert code == 0 and "vramplan" in out


def test_main_exit_codes():
    with pytest.raises(SystemExit) as e:
        main(["params", "llama-3-8b"])
    assert e.value.code == 0
