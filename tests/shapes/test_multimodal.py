"""Multimodal checkpoints are counted as transformers builds them (issue 16): the checkpoint's own
``*ForConditionalGeneration`` class, vision tower and projector included, never silently its text model.

Expected values come from the real classes: each test builds the class by name on the meta device and counts
``model.parameters()``, and applies real PEFT 0.21.2 (``get_peft_model(...).get_nb_trainable_parameters()``). Tiny
configs are built from transformers' own config classes (no Hub).
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import pytest

from vramplan.errors import TargetError
from vramplan.lora import LoraConfig, plan_lora
from vramplan.shapes.from_config import spec_from_config
from vramplan.shapes.spec import OUTSIDE_LANGUAGE_MODEL, ModelSpec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
logging.getLogger("transformers").setLevel(logging.ERROR)

TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512}


def _configs() -> dict[str, tuple[str, Any]]:
    """Tiny configs of each multimodal family, from transformers' config classes, and the class to build."""
    T = transformers
    mrope = {"rope_type": "default", "mrope_section": [2, 3, 3]}     # sums to head_dim 16 / 2
    return {
        "gemma3": ("Gemma3ForConditionalGeneration", T.Gemma3Config(
            text_config={**TEXT, "head_dim": 16}, mm_tokens_per_image=4,
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "vision_use_head": False})),
        "qwen2_vl": ("Qwen2VLForConditionalGeneration", T.Qwen2VLConfig(
            text_config={**TEXT, "rope_parameters": mrope},
            vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                           "patch_size": 14, "spatial_merge_size": 2})),
        "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", T.Qwen2_5_VLConfig(
            text_config={**TEXT, "rope_parameters": mrope},
            vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                           "out_hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2,
                           "fullatt_block_indexes": [1]})),
        "llava": ("LlavaForConditionalGeneration", T.LlavaConfig(
            text_config={**TEXT, "model_type": "llama"},
            vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                           "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                           "projection_dim": 32})),
        "mllama": ("MllamaForConditionalGeneration", T.MllamaConfig(
            text_config={**TEXT, "cross_attention_layers": [1], "pad_token_id": 0},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_global_layers": 1, "attention_heads": 2, "image_size": 28, "patch_size": 14,
                           "vision_output_dim": 64, "intermediate_layers_indices": [0], "max_num_tiles": 4})),
        "llama4": ("Llama4ForConditionalGeneration", T.Llama4Config(
            text_config={**TEXT, "intermediate_size_mlp": 128, "num_local_experts": 2, "head_dim": 16,
                         "interleave_moe_layer_step": 1},
            vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "vision_output_dim": 32,
                           "projector_input_dim": 32, "projector_output_dim": 64})),
    }


CONFIGS = _configs()


def _as_dict(cfg: Any, cls: str) -> dict[str, Any]:
    """What a config.json holds: the config's dict through JSON, naming its class."""
    d = json.loads(cfg.to_json_string())
    d["architectures"] = [cls]
    return d


def _real(cls: str, config: dict[str, Any]):
    """The class named ``cls`` built on meta from ``config`` -- independently of vramplan's builders."""
    kwargs = {k: v for k, v in config.items() if k != "model_type" and not k.startswith("_")}
    cfg = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    with torch.device("meta"):
        return getattr(transformers, cls)(cfg)


def _peft_trainable(cls: str, config: dict[str, Any], targets: Any, r: int = 4) -> int:
    model = peft.get_peft_model(_real(cls, config), peft.LoraConfig(r=r, target_modules=targets))
    return model.get_nb_trainable_parameters()[0]


def _meta(config: dict[str, Any], monkeypatch) -> ModelSpec:
    from vramplan.shapes.from_meta import spec_from_meta

    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    return spec_from_meta(config)


# ----------------------------------------------------------------------------------- counts, classes
@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_counted_as_the_checkpoints_own_class(family, monkeypatch):
    cls, cfg = CONFIGS[family]
    config = _as_dict(cfg, cls)
    model = _real(cls, config)
    spec = _meta(config, monkeypatch)
    assert spec.architecture == cls
    assert spec.params_total == sum(p.numel() for p in model.parameters())
    parts = spec.params_by_component()
    assert parts["vision_tower"] > 0 and sum(parts.values()) == spec.params_total
    # no vision tensor is placed in a decoder layer; the decoder layers are the language model's
    assert all(t.layer is None for t in spec.tensors if t.role in OUTSIDE_LANGUAGE_MODEL)
    assert spec.num_layers == cfg.get_text_config().num_hidden_layers
    assert spec.hidden_size == cfg.get_text_config().hidden_size
    assert any(f"counted as {cls}" in n and "not modelled" in n for n in spec.notes), spec.notes
    assert any("cross-attention" in n for n in spec.notes) == (family == "mllama")


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("targets", [("all-linear",), ("q_proj", "v_proj")])
def test_lora_counts_match_peft_on_the_multimodal_model(family, targets, monkeypatch):
    """PEFT's all-linear takes the vision tower's Linears too (only the output embedding is left out)."""
    cls, cfg = CONFIGS[family]
    config = _as_dict(cfg, cls)
    spec = _meta(config, monkeypatch)
    peft_targets = "all-linear" if targets == ("all-linear",) else list(targets)
    lp = plan_lora(spec, LoraConfig(r=4, targets=targets))
    assert lp.trainable == _peft_trainable(cls, config, peft_targets)
    if targets == ("all-linear",):
        assert any(a.role in OUTSIDE_LANGUAGE_MODEL for a in lp.adapters)


def test_gemma3_default_targets_refused_as_peft_does(monkeypatch):
    cls, cfg = CONFIGS["gemma3"]
    config = _as_dict(cfg, cls)
    with pytest.raises(ValueError, match="Please specify `target_modules`"):
        peft.get_peft_model(_real(cls, config), peft.LoraConfig(r=4))
    with pytest.raises(TargetError, match=r"no default LoRA targets for model_type 'gemma3'.*--targets"):
        plan_lora(spec_from_config(config), LoraConfig(r=4))


# ------------------------------------------------------------------------- Gemma 3: pure Python == meta
#: google/gemma-3-4b-it config.json: the wrapper and vision_config as published, text_config with the keys it
#: leaves to Gemma3TextConfig written out (profiles/models/gemma-3-4b.yaml's source)
GEMMA3_4B_IT = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "boi_token_index": 255999,
    "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02,
    "mm_tokens_per_image": 256, "torch_dtype": "bfloat16",
    "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": False},
}


def test_gemma3_4b_it_counts_as_transformers_builds_it():
    """4,300,079,472 (issue 16): language model 3,880,263,168 + SigLIP 416,866,032 + projector 2,950,272."""
    spec = spec_from_config(GEMMA3_4B_IT, "gemma-3-4b-it")
    model = _real("Gemma3ForConditionalGeneration", GEMMA3_4B_IT)
    assert spec.params_total == sum(p.numel() for p in model.parameters()) == 4_300_079_472
    inner = model.model
    assert spec.params_by_component() == {
        "language_model": sum(p.numel() for p in inner.language_model.parameters()),
        "vision_tower": sum(p.numel() for p in inner.vision_tower.parameters()),
        "vision_projector": sum(p.numel() for p in inner.multi_modal_projector.parameters())}
    assert spec.architecture == "Gemma3ForConditionalGeneration" and spec.origin == "config"
    # the bundled profile counts the language model alone and says, with the class's own numbers, what it leaves out
    from vramplan.profiles import resolve_model

    profile = resolve_model("google/gemma-3-4b-it").spec
    assert profile.params_total == sum(p.numel() for p in inner.language_model.parameters())
    tower = sum(p.numel() for p in inner.vision_tower.parameters())
    proj = sum(p.numel() for p in inner.multi_modal_projector.parameters())
    assert any(f"vision tower ({tower:,} parameters) and projector ({proj:,})" in n
               and f"{spec.params_total:,} in all as Gemma3ForConditionalGeneration" in n for n in profile.notes), \
        profile.notes
    # the language model's summary, not the SigLIP tower's (LayerNorm with bias, width 4304)
    assert (spec.hidden_size, spec.num_layers, spec.intermediate_size, spec.norm_type, spec.sliding_window) == \
        (2560, 34, 10240, "rmsnorm", 1024)


def _gemma3_random(rng: random.Random) -> dict[str, Any]:
    text: dict[str, Any] = {"model_type": "gemma3_text", "hidden_size": rng.choice([32, 64]),
                            "intermediate_size": rng.choice([48, 96]), "num_hidden_layers": rng.choice([1, 2]),
                            "num_attention_heads": 4, "num_key_value_heads": rng.choice([1, 2, 4]),
                            "head_dim": rng.choice([8, 16]), "vocab_size": rng.choice([300, 512])}
    vision: dict[str, Any] = {"model_type": "siglip_vision_model", "hidden_size": rng.choice([16, 32]),
                              "intermediate_size": rng.choice([24, 64]), "num_hidden_layers": rng.choice([1, 2]),
                              "num_attention_heads": 2, "image_size": rng.choice([28, 56]), "patch_size": 14,
                              "num_channels": rng.choice([None, 3, 1]), "vision_use_head": rng.choice([None, True, False])}
    config = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
              "mm_tokens_per_image": 4, "tie_word_embeddings": rng.choice([None, True, False]),
              "text_config": {**text, **({} if (t := rng.choice([None, True, False])) is None
                                         else {"tie_word_embeddings": t})},
              "vision_config": {k: v for k, v in vision.items() if v is not None}}
    return {k: v for k, v in config.items() if v is not None}


def test_gemma3_pure_builder_equals_meta_tensor_for_tensor(monkeypatch):
    """The SigLIP head (vision_use_head, default True), the wrapper's tie flag (the text config's is ignored) and
    the text and vision config defaults, against the real class."""
    rng = random.Random("vramplan-gemma3-multimodal")
    for _ in range(6):
        config = _gemma3_random(rng)
        pure, meta = spec_from_config(config), _meta(config, monkeypatch)
        assert pure == meta, config
        assert pure.params_total == sum(p.numel() for p in _real("Gemma3ForConditionalGeneration", config).parameters())


def test_gemma3_text_defaults_filled_like_the_config_class(monkeypatch):
    """A text_config that leaves every shape key to Gemma3TextConfig (as the published ones leave vocab_size,
    heads and head_dim), and a vision_config that leaves them to SiglipVisionConfig."""
    config = {"model_type": "gemma3", "text_config": {"num_hidden_layers": 1},
              "vision_config": {"num_hidden_layers": 1, "vision_use_head": False}}
    pure = spec_from_config(config)
    assert pure == _meta(config, monkeypatch)
    assert pure.params_total == sum(p.numel() for p in _real("Gemma3ForConditionalGeneration", config).parameters())


# --------------------------------------------------------------------------------------- resolution
def test_a_llava_config_file_is_not_reduced_to_its_text_model(tmp_path, monkeypatch):
    """Its text_config is a llama the pure-Python builder knows; it used to be planned as that, silently."""
    from vramplan.profiles import resolve_model

    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    cls, cfg = CONFIGS["llava"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_as_dict(cfg, cls)))
    spec = resolve_model(str(path)).spec
    assert spec.architecture == cls and spec.is_multimodal
    assert spec.params_total == sum(p.numel() for p in _real(cls, _as_dict(cfg, cls)).parameters())


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """The console entry point in-process: exit code, stdout, stderr (user errors are one line, exit 2)."""
    from vramplan.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_params_cli_counts_the_vision_tower_and_refuses_default_targets_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    cls, cfg = CONFIGS["gemma3"]
    config = _as_dict(cfg, cls)
    path = tmp_path / "gemma3.json"
    path.write_text(json.dumps(config))
    total = sum(p.numel() for p in _real(cls, config).parameters())
    code, out, _ = _main(capsys, "params", str(path))
    assert code == 0 and f"{total:,} parameters" in out
    code, _, err = _main(capsys, "params", str(path), "--rank", "4")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "gemma3" in err and "--targets" in err
    code, out, _ = _main(capsys, "params", str(path), "--rank", "4", "--targets", "all-linear")
    assert code == 0 and f"trainable params: {_peft_trainable(cls, config, 'all-linear'):,d}" in out
