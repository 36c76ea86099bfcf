"""Helpers for the simulation tests: small model shapes (real configs, few layers) and the CLI entry."""

from __future__ import annotations

import functools
import json

from cli_entry import vp


@functools.cache
def spec_of(name: str, layers: int | None = 2):
    """A bundled model's exact shapes with ``layers`` decoder layers (``None``: all)."""
    from vramplan.profiles import resolve_model
    from vramplan.simulate.compare import spec_with_layers

    spec = resolve_model(name).spec
    return spec if layers is None else spec_with_layers(spec, layers)


def tiny_config(model_type: str = "llama", layers: int = 2, **extra) -> dict:
    cfg = dict(model_type=model_type, hidden_size=128, num_hidden_layers=layers, num_attention_heads=4,
               num_key_value_heads=2, intermediate_size=256, vocab_size=512, hidden_act="silu",
               max_position_embeddings=4096, tie_word_embeddings=False, rms_norm_eps=1e-5)
    cfg.update(extra)
    return cfg


@functools.cache
def tiny_spec(model_type: str = "llama", layers: int = 2, **extra):
    from vramplan.profiles import build_spec

    return build_spec(tiny_config(model_type, layers, **extra), f"tiny-{model_type}", "test")


def lora_all(r: int = 16):
    from vramplan.lora import LoraConfig

    return LoraConfig(r=r, targets=("all-linear",))




def vp_json(*args: str, codes: tuple[int, ...] = (0, 1)) -> dict:
    r = vp(*args, "--json")
    assert r.exit_code in codes, (r.exit_code, r.stderr)
    return json.loads(r.stdout)
