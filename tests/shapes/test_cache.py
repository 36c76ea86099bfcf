"""The on-disk cache of meta-device specs (vramplan/shapes/cache.py, used by spec_from_meta)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from vramplan.shapes import cache
from vramplan.shapes.from_meta import spec_from_meta

pytest.importorskip("transformers")

# olmo2: transformers builds it, vramplan has no pure-Python builder for it
OLMO2 = {"model_type": "olmo2", "architectures": ["Olmo2ForCausalLM"], "hidden_size": 64, "intermediate_size": 160,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
         "max_position_embeddings": 512, "tie_word_embeddings": False}


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("VRAMPLAN_CACHE_DIR", str(root))
    monkeypatch.delenv("VRAMPLAN_NO_CACHE", raising=False)
    return root


def _only_entry(root: Path) -> Path:
    files = [p for p in (root / "specs").iterdir() if not p.name.startswith(".")]
    assert len(files) == 1, files
    return files[0]


_CHILD = textwrap.dedent("""
    import json, sys
    from vramplan.shapes.from_meta import spec_from_meta
    spec = spec_from_meta(json.loads(sys.argv[1]), name="olmo2-tiny")
    print(json.dumps({"transformers": "transformers" in sys.modules, "torch": "torch" in sys.modules,
                      "total": spec.params_total, "name": spec.name,
                      "tensors": [[t.name, list(t.shape), t.role, t.module_type, t.layer, t.tied_to]
                                  for t in spec.tensors]}))
""")


def _child(root: Path) -> dict:
    env = dict(os.environ, VRAMPLAN_CACHE_DIR=str(root))
    env.pop("VRAMPLAN_NO_CACHE", None)
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(OLMO2)], capture_output=True, text=True,
                         env=env, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_call_imports_neither_transformers_nor_torch(tmp_path):
    root = tmp_path / "cache"
    cold = _child(root)
    assert cold["transformers"] and cold["torch"], "the first call builds on meta"
    assert _only_entry(root).suffix == ".json"
    warm = _child(root)
    assert (warm["transformers"], warm["torch"]) == (False, False), "a cached spec must not import them"
    assert warm["tensors"] == cold["tensors"] and warm["total"] == cold["total"]
    # the cold count is transformers' own: sum(p.numel() for p in model.parameters()) on meta
    import torch
    import transformers

    cfg = transformers.AutoConfig.for_model(**dict(OLMO2))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    assert cold["total"] == sum(p.numel() for p in model.parameters())


def test_cached_spec_equals_the_fresh_one(cache_root):
    fresh = spec_from_meta(dict(OLMO2), name="a")
    entry = _only_entry(cache_root)
    again = spec_from_meta(dict(OLMO2), name="b")
    assert again == replace(fresh, name="b")   # every compared field and tensor; the name is the caller's
    assert again.name == "b" and again.origin == "meta" and again.config == OLMO2
    assert _only_entry(cache_root) == entry


def test_key_follows_config_content_and_versions():
    base = cache.spec_key(OLMO2, transformers_version="5.24.0", torch_version="2.13.0")
    reordered = dict(reversed(list(OLMO2.items())))
    assert cache.spec_key(reordered, transformers_version="5.24.0", torch_version="2.13.0") == base
    assert cache.spec_key(dict(OLMO2, intermediate_size=161), transformers_version="5.24.0",
                          torch_version="2.13.0") != base
    assert cache.spec_key(OLMO2, transformers_version="5.25.0", torch_version="2.13.0") != base
    assert cache.spec_key(OLMO2, transformers_version="5.24.0", torch_version="2.14.0") != base
    assert cache.spec_key({"x": object()}) is None          # not JSON data: not cached


def test_installed_version_is_in_the_key():
    from importlib.metadata import version

    assert cache.spec_key(OLMO2) == cache.spec_key(OLMO2, transformers_version=version("transformers"),
                                                   torch_version=version("torch"))


@pytest.mark.parametrize("content", [
    b"",                                                    # empty
    b"{not json",                                           # corrupt
    b'{"format": 1, "key": "0000", "spec": {}, "tensors": []}',   # foreign key
    b"\xff\xfe garbage",                                    # not UTF-8
])
def test_corrupt_or_foreign_entries_are_rebuilt(cache_root, content):
    fresh = spec_from_meta(dict(OLMO2))
    entry = _only_entry(cache_root)
    entry.write_bytes(content)
    rebuilt = spec_from_meta(dict(OLMO2))
    assert rebuilt == fresh
    doc = json.loads(entry.read_bytes())                    # rewritten, valid again
    assert doc["key"] == entry.stem and doc["format"] == cache.FORMAT


def test_entry_with_wrong_field_types_is_rebuilt(cache_root):
    fresh = spec_from_meta(dict(OLMO2))
    entry = _only_entry(cache_root)
    doc = json.loads(entry.read_bytes())
    doc["tensors"][0][1] = ["64", 256]                      # a shape that is not ints
    entry.write_text(json.dumps(doc))
    assert cache.load(entry.stem, OLMO2, "") is None
    assert spec_from_meta(dict(OLMO2)) == fresh


def test_oversized_entry_is_not_read(cache_root, monkeypatch):
    spec_from_meta(dict(OLMO2))
    entry = _only_entry(cache_root)
    monkeypatch.setattr(cache, "MAX_ENTRY_BYTES", entry.stat().st_size - 1)
    assert cache.load(entry.stem, OLMO2, "") is None


def test_no_cache_env_writes_nothing(cache_root, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    spec_from_meta(dict(OLMO2))
    assert not (cache_root / "specs").exists()


def test_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VRAMPLAN_CACHE_DIR", str(blocker))
    assert spec_from_meta(dict(OLMO2)).params_total > 0


def test_default_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("VRAMPLAN_CACHE_DIR", raising=False)
    monkeypatch.delenv("VRAMPLAN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert cache.cache_dir() == tmp_path / ".cache" / "vramplan" / "specs"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache.cache_dir() == tmp_path / "xdg" / "vramplan" / "specs"
    monkeypatch.setenv("VRAMPLAN_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine" / "specs"


def test_no_cache_flag_writes_nothing(cache_root, tmp_path, monkeypatch):
    """``vramplan --no-cache params CONFIG`` builds on meta without touching the cache (issue 16)."""
    import json as _json

    from click.testing import CliRunner

    from vramplan.cli.main import cli

    config = tmp_path / "config.json"
    config.write_text(_json.dumps(OLMO2))
    r = CliRunner().invoke(cli, ["--no-cache", "params", str(config)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert not (cache_root / "specs").exists()
    monkeypatch.delenv("VRAMPLAN_NO_CACHE", raising=False)      # the flag set it for this process
    r = CliRunner().invoke(cli, ["params", str(config)], catch_exceptions=False)
    assert r.exit_code == 0 and (cache_root / "specs").exists()


def test_a_config_holding_infinity_is_cached(cache_root):
    """Mamba-2's time_step_limit defaults to (0.0, inf): the key hashes JSON's Infinity, so such configs cache too."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Mamba2Config(hidden_size=64, num_hidden_layers=2, vocab_size=100, num_heads=4, head_dim=32,
                                    state_size=16, n_groups=1, expand=2).to_dict()
    assert float("inf") in cfg["time_step_limit"]
    first = spec_from_meta(dict(cfg), name="m2")
    assert _only_entry(cache_root).suffix == ".json"
    assert spec_from_meta(dict(cfg), name="m2") == first
