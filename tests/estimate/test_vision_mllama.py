"""Mllama (Llama-3.2-Vision) and Llama 4 multimodal checkpoints (issue 16): parameter counts as transformers 5.24
builds ``MllamaForConditionalGeneration`` / ``Llama4ForConditionalGeneration``, PEFT-exact LoRA counts, and the
one-line warnings for what a plan does not model of their vision side.

Expected values come from the real classes built on ``meta`` (``torch.device("meta")``, transformers 5.24) and from
``peft.get_peft_model`` (peft 0.21.2) on them; the published total from Meta's model card.
"""

from __future__ import annotations

import json

import pytest

from vramplan.errors import TargetError
from vramplan.estimate.estimator import estimate
from vramplan.lora import LoraConfig, plan_lora
from vramplan.setup import Setup

#: a tiny MllamaForConditionalGeneration: 3 text layers (layer 1 a MllamaCrossAttentionDecoderLayer), a vision model
#: of 3 local and 2 gated global layers over 2 tiles of (20 // 4)² + 1 = 26 patches, 2 intermediate layers kept
#: (vision_output_dim 96 = 32 × (1 + 2))
TINY_MLLAMA = {
    "model_type": "mllama", "architectures": ["MllamaForConditionalGeneration"], "image_token_index": 500,
    "text_config": {"model_type": "mllama_text_model", "vocab_size": 500, "hidden_size": 64,
                    "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "cross_attention_layers": [1], "use_cache": False,
                    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    "vision_config": {"model_type": "mllama_vision_model", "hidden_size": 32, "image_size": 20, "patch_size": 4,
                      "num_hidden_layers": 3, "num_global_layers": 2, "attention_heads": 2, "intermediate_size": 64,
                      "max_num_tiles": 2, "vision_output_dim": 96, "intermediate_layers_indices": [0, 2],
                      "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]]},
}

#: meta-llama/Llama-3.2-11B-Vision's config.json shape keys (text: Llama-3.1-8B with 8 cross-attention layers;
#: vision: ViT-H/14 at 560 px, 32 local + 8 global layers, 4 tiles, 5 intermediate layers)
LLAMA_3_2_11B_VISION = {
    "model_type": "mllama", "architectures": ["MllamaForConditionalGeneration"], "image_token_index": 128256,
    "text_config": {"model_type": "mllama_text_model", "vocab_size": 128256, "hidden_size": 4096,
                    "intermediate_size": 14336, "num_hidden_layers": 40, "num_attention_heads": 32,
                    "num_key_value_heads": 8, "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
                    "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": False},
    "vision_config": {"model_type": "mllama_vision_model", "hidden_size": 1280, "image_size": 560, "patch_size": 14,
                      "num_hidden_layers": 32, "num_global_layers": 8, "attention_heads": 16,
                      "intermediate_size": 5120, "max_num_tiles": 4, "vision_output_dim": 7680,
                      "intermediate_layers_indices": [3, 7, 15, 23, 30],
                      "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]},
}


def _llama4_config() -> dict:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Llama4Config(
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": 512, "intermediate_size_mlp": 128,
                     "num_local_experts": 2, "head_dim": 16, "interleave_moe_layer_step": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14, "vision_output_dim": 32, "projector_input_dim": 32,
                       "projector_output_dim": 64})
    d = json.loads(cfg.to_json_string())
    d["architectures"] = ["Llama4ForConditionalGeneration"]
    return d


def _meta_model(conf: dict):
    """The checkpoint's class as transformers builds it on meta (the independent count)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, conf["architectures"][0])
    cfg = cls.config_class(**{k: v for k, v in conf.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        return cls(cfg)


def _spec(conf: dict, name: str):
    pytest.importorskip("torch")
    from vramplan.shapes.from_meta import spec_from_meta

    return spec_from_meta(conf, name)


def _parts(model) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, p in model.named_parameters():
        key = ("vision_tower" if ".vision_model." in f".{n}" else
               "vision_projector" if ".multi_modal_projector." in f".{n}" else "language_model")
        out[key] = out.get(key, 0) + p.numel()
    return out


@pytest.mark.parametrize("which", ["mllama", "llama4"])
def test_counts_equal_meta_build(which: str) -> None:
    conf = TINY_MLLAMA if which == "mllama" else _llama4_config()
    model = _meta_model(conf)
    spec = _spec(conf, f"tiny-{which}")
    assert spec.architecture == type(model).__name__
    assert spec.params_total == sum(p.numel() for p in model.parameters())
    assert spec.params_by_component() == _parts(model)


def test_mllama_cross_attention_layers_are_language_model() -> None:
    """The cross-attention decoder layers (cross_attention_layers) and their tanh gates are the text model's."""
    model = _meta_model(TINY_MLLAMA)
    spec = _spec(TINY_MLLAMA, "tiny-mllama")
    cross = {n: p.numel() for n, p in model.named_parameters() if ".language_model.layers.1." in n}
    assert any(n.endswith("cross_attn_attn_gate") for n in cross) and any(".cross_attn.k_norm." in n for n in cross)
    ours = {t.name: t.numel for t in spec.tensors if ".language_model.layers.1." in t.name}
    assert ours == cross
    assert {t.layer for t in spec.tensors if t.name in cross} == {1}


def test_llama_3_2_11b_vision_total() -> None:
    """10,670,220,835 as transformers 5.24 builds MllamaForConditionalGeneration on meta (the language model's
    embedding has vocab_size + 8 rows, MllamaTextModel.__init__); Meta's model card (huggingface.co/meta-llama/
    Llama-3.2-11B-Vision, "Params: 11B (10.6)") publishes 10.6B: the build is within its rounding."""
    model = _meta_model(LLAMA_3_2_11B_VISION)
    total = sum(p.numel() for p in model.parameters())
    assert total == 10_670_220_835
    assert abs(total / 1e9 - 10.6) < 0.1
    spec = _spec(LLAMA_3_2_11B_VISION, "llama-3.2-11b-vision")
    assert spec.params_total == total
    assert spec.params_by_component() == _parts(model) == {
        "language_model": 9_775_192_080, "vision_tower": 863_567_379, "vision_projector": 31_461_376}
    # all-linear r=16: 67,362,816 trainable under peft 0.21.2 (measured on the meta build), 240 of the adapted
    # Linears in the vision model
    assert plan_lora(spec, LoraConfig(targets=("all-linear",), r=16)).trainable == \
        _peft_trainable(LLAMA_3_2_11B_VISION, "all-linear", r=16) == 67_362_816


def _peft_trainable(conf: dict, targets, r: int = 4) -> int:
    peft = pytest.importorskip("peft")
    pm = peft.get_peft_model(_meta_model(conf), peft.LoraConfig(r=r, target_modules=targets))
    return pm.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("which", ["mllama", "llama4"])
@pytest.mark.parametrize("train_vision", ["all", "projector", "none"])
def test_lora_trainable_equals_peft(which: str, train_vision: str) -> None:
    """PEFT 0.21.2 ``all-linear`` takes every Linear but ``lm_head``, the vision model's and the projector's included
    (``_maybe_include_all_linear_layers``: no multimodal exclusion); the frozen variants are the Linear names outside
    the frozen parts, as LLaMA-Factory 0.9.5 ``patch_target_modules`` passes them (mllama / llama4:
    ``vision_model_keys=["vision_model"]``, projector ``multi_modal_projector``; visual.py:296-298, :347-350)."""
    torch = pytest.importorskip("torch")
    conf = TINY_MLLAMA if which == "mllama" else _llama4_config()
    frozen = {"all": (), "projector": ("vision_model",), "none": ("vision_model", "multi_modal_projector")}
    if train_vision == "all":
        targets = "all-linear"
    else:
        model = _meta_model(conf)
        head = model.get_output_embeddings()      # Llama 4's is language_model.lm_head
        targets = [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and mod is not head
                   and not any(f".{p}." in f".{n}." for p in frozen[train_vision])]
    spec = _spec(conf, f"tiny-{which}")
    setup = Setup(method="lora", precision="32-true", seq=64, train_vision=train_vision,
                  lora=LoraConfig(targets=("all-linear",), r=4))
    assert estimate(spec, setup).params_trainable == _peft_trainable(conf, targets)


def test_default_targets_follow_peft() -> None:
    """PEFT has no default targets for ``mllama`` (it raises "Please specify `target_modules`"), for ``llama4``
    q_proj / v_proj (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``), the vision model's included."""
    peft = pytest.importorskip("peft")
    with pytest.raises(ValueError, match="target_modules"):
        peft.get_peft_model(_meta_model(TINY_MLLAMA), peft.LoraConfig(r=4))
    with pytest.raises(TargetError, match="no default LoRA targets for model_type 'mllama'"):
        plan_lora(_spec(TINY_MLLAMA, "tiny-mllama"), LoraConfig(r=4))
    conf = _llama4_config()
    assert plan_lora(_spec(conf, "tiny-llama4"), LoraConfig(r=4)).trainable == _peft_trainable(conf, None)


def test_mllama_image_tokens_warn_what_is_missing() -> None:
    """The warning names what the plan leaves out, from the checkpoint's config: Llama-3.2-11B-Vision runs each
    image as 4 tiles of (560 // 14)² + 1 = 1601 patches (padded to 1608, the next multiple of 8: MllamaVisionModel.
    forward) through 32 + 8 layers, and 8 cross-attention layers attend to its 4 × 1601 = 6404 vision tokens."""
    spec = _spec(LLAMA_3_2_11B_VISION, "llama-3.2-11b-vision")
    est = estimate(spec, Setup(method="lora", seq=512, image_tokens=1, lora=LoraConfig(targets=("all-linear",))))
    line = next(w for w in est.warnings if w.startswith("--image-tokens 1: MllamaForConditionalGeneration"))
    for part in ("4 tiles × 1601 patches (1608 padded)", "32 local + 8 global vision layers of width 1280",
                 "8 cross-attention layers", "6404 vision tokens"):
        assert part in line
    assert "\n" not in line


def test_llama_factory_full_fine_tuning_keeps_the_frozen_tower_16_bit() -> None:
    """LLaMA-Factory 0.9.5 full fine-tuning keeps the frozen tower and projector in the checkpoint's dtype
    (loader.py:155 torch_dtype="auto"; adapter.py:38-54 upcasts only trainable parameters), where the HF Trainer's
    -mixed load makes them fp32: 2 B less per frozen parameter (counted on the meta model)."""
    model = _meta_model(TINY_MLLAMA)
    # each tensor is its own allocation, rounded to the caching allocator's 512-B blocks
    frozen = sum(-(-4 * p.numel() // 512) * 512 - -(-2 * p.numel() // 512) * 512 for n, p in model.named_parameters()
                 if ".vision_model." in f".{n}" or ".multi_modal_projector." in f".{n}")
    spec = _spec(TINY_MLLAMA, "tiny-mllama")
    setup = Setup(method="full", precision="bf16-mixed", seq=64, stack="llama-factory", train_vision="none")

    def weights(s: Setup) -> int:
        return sum(c.bytes for c in estimate(spec, s).components if c.name.startswith("weights/"))

    assert weights(setup.with_(stack="hf")) - weights(setup) == frozen
    assert weights(setup.with_(stack="hf", train_vision="all")) == weights(setup.with_(train_vision="all"))
    assert not any("frozen" in w and "overstated" in w for w in estimate(spec, setup).warnings)


def _mllama_step_saves(method: str, train_vision: str) -> dict[str, int]:
    """Bytes autograd still holds at the end of a tiny Mllama forward (fp32, sdpa, CPU; batch 2 × 40 tokens, one
    image of 2 tiles per sequence), by where they were saved: the vision model, the projector, each text layer.
    The tracker of tests/estimate/test_vision_plan.py: saved_tensors_hooks, distinct storages, parameters left out."""
    import weakref

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    conf = {k: v for k, v in TINY_MLLAMA.items() if k not in ("architectures", "model_type")}
    cfg = transformers.MllamaConfig(**conf)
    cfg._attn_implementation = "sdpa"
    model = transformers.MllamaForConditionalGeneration(cfg).float().train()
    m = model.model
    frozen = {"all": (), "projector": ("vision_model",), "none": ("vision_model", "multi_modal_projector")}
    if method == "lora":
        peft = pytest.importorskip("peft")
        names = [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and n != "lm_head"
                 and not any(f".{p}." in f".{n}." for p in frozen[train_vision])]
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=names))
    else:
        for part in frozen[train_vision]:
            getattr(m, part).requires_grad_(False)
    params = {p.untyped_storage().data_ptr() for p in (*model.parameters(), *model.buffers())}
    where: list = [None]
    held: list = []

    def mark(name):
        return lambda *a: where.__setitem__(0, name)

    m.vision_model.register_forward_pre_hook(mark("tower"))
    m.multi_modal_projector.register_forward_pre_hook(mark("projector"))
    m.multi_modal_projector.register_forward_hook(mark("masks"))
    for i, layer in enumerate(m.language_model.layers):
        layer.register_forward_pre_hook(mark(f"layer {i}"))
    m.language_model.norm.register_forward_pre_hook(mark(None))

    class Held:
        __slots__ = ("t", "__weakref__")

        def __init__(self, t) -> None:
            self.t = t

    def pack(t):
        h = Held(t)
        p = t.untyped_storage().data_ptr()
        if where[0] is not None and p not in params:
            held.append((weakref.ref(h), where[0], p, t.untyped_storage().nbytes()))
        return h

    batch, seq, tiles, image = 2, 40, 2, TINY_MLLAMA["vision_config"]["image_size"]
    ids = torch.randint(3, 499, (batch, seq))
    ids[:, 2] = 500
    xmask = torch.ones(batch, seq, 1, tiles, dtype=torch.long)
    xmask[:, :2] = 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        out = model(input_ids=ids, pixel_values=torch.randn(batch, 1, tiles, 3, image, image),
                    aspect_ratio_ids=torch.full((batch, 1), 2), aspect_ratio_mask=torch.ones(batch, 1, tiles),
                    cross_attention_mask=xmask, labels=ids.masked_fill(ids == 500, -100))
    alive: dict[str, dict[int, int]] = {}
    for ref, part, p, nbytes in held:
        if ref() is not None:
            alive.setdefault(part, {})[p] = nbytes
    out.loss.backward()
    return {part: sum(d.values()) for part, d in alive.items()}


@pytest.mark.xfail(strict=True, reason="Mllama's vision model and cross-attention saves are not replayed "
                                       "(vision.py UNMODELLED_DETAIL): the target a replay must meet")
def test_mllama_vision_saves_equal_torch() -> None:
    """Measured (torch 2.13 CPU, transformers 5.24, LoRA all-linear r=4): the vision model keeps 1,092,624 B, the
    projector 41,600 B; the cross-attention layer 431,112 B against 302,400 B for self-attention layer 0."""
    measured = _mllama_step_saves("lora", "all")
    spec = _spec(TINY_MLLAMA, "tiny-mllama")
    setup = Setup(method="lora", precision="32-true", batch=2, seq=40, image_tokens=1, train_vision="all",
                  lora=LoraConfig(targets=("all-linear",), r=4))
    est = estimate(spec, setup)
    vision = sum(c.bytes for c in est.components if c.name.startswith("activations/vision_"))
    assert vision == measured["tower"] + measured["projector"]
