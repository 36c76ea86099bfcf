"""Multimodal plans (issue 16): ``--image-tokens`` and ``--train-vision`` on Gemma3ForConditionalGeneration.

The vision saves are checked against real torch: a tiny ``Gemma3ForConditionalGeneration`` (transformers 5.24,
SigLIP tower, random weights) runs a forward pass with ``pixel_values`` on this CPU inside a
``torch.autograd.graph.saved_tensors_hooks`` that records, between the vision tower's forward pre-hook and the
projector's forward hook, every tensor autograd saves (distinct storages by ``untyped_storage().data_ptr()``,
sized by ``untyped_storage().nbytes()``, parameters left out: saving a weight costs no memory). That is what the
tower and the projector keep for backward; the estimator's number is the un-rounded sum of the vision trace's
saved storages (``vramplan/estimate/vision.py``).

Precision 32-true only: CPU ``native_layer_norm`` keeps mean/rstd in the input dtype and CPU autocast runs
``layer_norm`` in the autocast dtype, where CUDA keeps fp32 (see tests/estimate/test_activations_vs_torch.py); in
fp32 the two agree, so the comparison is exact. On CPU sdpa dispatches
``_scaled_dot_product_flash_attention_for_cpu`` (q, k, v, output, logsumexp saved), the set CUDA flash saves.
"""

from __future__ import annotations

import pytest

from vramplan.errors import SetupError
from vramplan.estimate.estimator import estimate
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.lora import LoraConfig, plan_lora
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

V_HIDDEN, V_INTER, V_LAYERS, V_HEADS, IMAGE, PATCH, TPI = 32, 64, 2, 2, 32, 4, 16
IMAGE_TOKEN = 100
TINY = {
    "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "mm_tokens_per_image": TPI,
    "image_token_id": IMAGE_TOKEN, "boi_token_id": 101, "eoi_token_id": 102, "tie_word_embeddings": True,
    "text_config": {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                    "vocab_size": 128, "max_position_embeddings": 256, "sliding_window": 16,
                    "attention_dropout": 0.0, "use_cache": False},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": V_HIDDEN, "intermediate_size": V_INTER,
                      "num_hidden_layers": V_LAYERS, "num_attention_heads": V_HEADS, "image_size": IMAGE,
                      "patch_size": PATCH, "vision_use_head": False, "attention_dropout": 0.0},
}
PATCHES = (IMAGE // PATCH) ** 2        # 64 patches per image, pooled 2x2 to 16 tokens
#: a tiny LlavaForConditionalGeneration (CLIP tower: class token, pre_layrnorm, QuickGELU; 3 layers, feature layer
#: -2, "default" strategy: 64 image tokens per image; GELU projector)
TINY_LLAVA = {
    "model_type": "llava", "architectures": ["LlavaForConditionalGeneration"], "image_token_id": 500,
    "text_config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "use_cache": False},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": V_HIDDEN, "intermediate_size": V_INTER,
                      "num_hidden_layers": 3, "num_attention_heads": V_HEADS, "image_size": IMAGE,
                      "patch_size": PATCH, "projection_dim": 32},
}


def _spec():
    return spec_from_config(TINY, "tiny-gemma3-mm")


#: a tiny Qwen2VLForConditionalGeneration: 2 vision blocks of width 32 (fused qkv, vision rotary, QuickGELU), 2×2
#: patches per image token (PatchMerger), 8×8-patch images (16 tokens each), patches of 3 × 2 × 2² pixel values
TINY_QWEN2_VL = {
    "model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"], "image_token_id": 500,
    "vision_start_token_id": 501, "vision_end_token_id": 502,
    "text_config": {"model_type": "qwen2_vl_text", "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
                    "use_cache": False, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                                            "rope_theta": 1000000.0}},
    "vision_config": {"model_type": "qwen2_vl", "depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2,
                      "mlp_ratio": 2, "patch_size": 2, "spatial_merge_size": 2, "temporal_patch_size": 2},
}
QWEN_TOKENS_PER_IMAGE = 16
#: a tiny Qwen2_5_VLForConditionalGeneration: RMSNorm blocks with a gated SiLU MLP, windowed attention (window 8
#: pixels = 2×2 tokens) in block 0, full attention in block 1
TINY_QWEN2_5_VL = {
    **TINY_QWEN2_VL, "model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "text_config": {**TINY_QWEN2_VL["text_config"], "model_type": "qwen2_5_vl_text"},
    "vision_config": {"model_type": "qwen2_5_vl", "depth": 2, "hidden_size": 32, "intermediate_size": 48,
                      "num_heads": 2, "out_hidden_size": 64, "patch_size": 2, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "window_size": 8, "fullatt_block_indexes": [1]},
}


def _qwen_spec(v25: bool = False):
    pytest.importorskip("torch")
    from vramplan.shapes.from_meta import spec_from_meta

    return spec_from_meta(TINY_QWEN2_5_VL, "tiny-qwen2.5-vl") if v25 else spec_from_meta(TINY_QWEN2_VL, "tiny-qwen2-vl")


def _llava_spec():
    pytest.importorskip("torch")
    from vramplan.shapes.from_meta import spec_from_meta

    return spec_from_meta(TINY_LLAVA, "tiny-llava")


def _setup(method: str, train_vision: str, llava: bool = False, qwen: bool = False, **kw) -> Setup:
    lora = LoraConfig(targets=("all-linear",), r=4) if method == "lora" else None
    tpi = QWEN_TOKENS_PER_IMAGE if qwen else PATCHES if llava else TPI
    return Setup(method=method, precision="32-true", batch=2, seq=2 * tpi + 32, image_tokens=2 * tpi,
                 train_vision=train_vision, lora=lora, **kw)


def _estimated(spec, setup: Setup) -> tuple[int, int]:
    """The vision trace's saves at the setup's images, un-rounded: (tower, projector)."""
    vt = static_structure(spec, structural_setup(setup)).vision
    tpi = vt.tower.tokens_per_image
    n_img = setup.batch * setup.image_tokens // tpi
    P = n_img * vt.tower.patches
    if setup.grad_ckpt:
        it = n_img * tpi
        mask = setup.batch * setup.seq if vt.mask_saved else 0
        return vt.layers * P * vt.ckpt_input + sum(c + a * P for c, a, _ in vt.tower_other) + n_img * vt.pixel_bytes, \
            sum(c + a * it + q * it * tpi for c, a, q in vt.projector) + P * vt.pool_input + mask

    def total(terms, tokens, bss):
        return sum(c + a * tokens + q * bss for c, a, q in terms)

    tower = ((vt.layers - 1) * total(vt.layer, P, P * vt.tower.patches) + total(vt.first, P, P * vt.tower.patches)
             + total(vt.tower_other, P, P * vt.tower.patches) + n_img * vt.pixel_bytes)
    it = n_img * tpi
    mask = setup.batch * setup.seq if vt.mask_saved else 0
    return tower, total(vt.projector, it, it * tpi) + P * vt.pool_input + mask


class _Held:
    """What the pack hook hands autograd: the graph keeps it as long as it keeps the saved tensor."""

    __slots__ = ("t", "__weakref__")

    def __init__(self, t) -> None:
        self.t = t


def _measured(method: str, train_vision: str, ckpt: bool = False, llava: bool = False,
              qwen: bool = False, v25: bool = False) -> tuple[int, int]:
    """Bytes saved by the tower and the projector that are still held by the graph at the end of forward."""
    qwen = qwen or v25
    import weakref

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    conf, cls, cfg_cls = (
        (TINY_QWEN2_5_VL, transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLConfig) if v25 else
        (TINY_QWEN2_VL, transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLConfig) if qwen else
        (TINY_LLAVA, transformers.LlavaForConditionalGeneration, transformers.LlavaConfig) if llava else
        (TINY, transformers.Gemma3ForConditionalGeneration, transformers.Gemma3Config))
    cfg = cfg_cls(**{k: v for k, v in conf.items() if k != "architectures"})
    cfg._attn_implementation = "sdpa"
    model = cls(cfg).float().train()
    m = model.model
    tower, projector = (m.visual, m.visual.merger) if qwen else (m.vision_tower, m.multi_modal_projector)
    if ckpt:
        model.gradient_checkpointing_enable()
    if method == "lora":
        peft = pytest.importorskip("peft")
        parts = {"all": (), "projector": (tower,), "none": (tower, projector)}[train_vision]
        skip = {id(mod) for part in parts for mod in part.modules()}
        if train_vision == "projector":      # the projector trains: keep its modules (Qwen2-VL's is in the tower)
            skip -= {id(mod) for mod in projector.modules()}
        names = [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and n != "lm_head"
                 and id(mod) not in skip]
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=names))
    else:
        for part in {"all": (), "projector": (tower,), "none": (tower, projector)}[train_vision]:
            part.requires_grad_(False)
        if train_vision == "projector":
            projector.requires_grad_(True)
    # parameters and buffers (SigLIP's position_ids, saved by the embedding's backward) cost no activation memory
    params = {p.untyped_storage().data_ptr() for p in (*model.parameters(), *model.buffers())}
    held: list[tuple[weakref.ref, str, int, int]] = []
    where = [None]
    tower.register_forward_pre_hook(lambda *a: where.__setitem__(0, "tower"))
    kept: dict[int, int] = {}
    if qwen and ckpt:
        # a checkpointed block gets the fp32 rotary cos/sin as a keyword argument: the checkpoint's closure holds
        # them to the block's recompute (not a saved tensor, still memory), measured from the call itself
        def rotary(module, args, kwargs):
            for t in kwargs.get("position_embeddings") or ():
                kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

        tower.blocks[0].register_forward_pre_hook(rotary, with_kwargs=True)
    projector.register_forward_pre_hook(lambda *a: where.__setitem__(0, "projector"))
    projector.register_forward_hook(lambda *a: where.__setitem__(0, "merge"))
    m.language_model.layers[0].register_forward_pre_hook(lambda *a: where.__setitem__(0, None))

    def pack(t):
        h = _Held(t)
        p = t.untyped_storage().data_ptr()
        # after the projector: masked_scatter's bool mask (and Qwen2.5-VL's int64 reverse_indices gather)
        if where[0] is not None and p not in params and (where[0] != "merge" or t.dtype in (torch.bool, torch.int64)):
            held.append((weakref.ref(h), where[0], p, t.untyped_storage().nbytes()))
        return h

    tpi, token = (QWEN_TOKENS_PER_IMAGE, 500) if qwen else (PATCHES, 500) if llava else (TPI, IMAGE_TOKEN)
    batch, n_img = 2, 2
    seq = n_img * tpi + 32
    ids = torch.randint(0, 99, (batch, seq))
    for i in range(n_img):      # the images apart (Qwen2-VL's M-RoPE groups consecutive image tokens)
        ids[:, 4 + i * (tpi + 1):4 + i * (tpi + 1) + tpi] = token
    kwargs = {}
    if qwen:       # flattened patches (3 × 2 × 2² values each), an 8×8 grid per image; M-RoPE needs the token types
        pixel = torch.randn(batch * n_img * 64, 24)
        kwargs = {"image_grid_thw": torch.tensor([[1, 8, 8]] * (batch * n_img)),
                  "mm_token_type_ids": (ids == token).long()}
    else:
        pixel = torch.randn(batch * n_img, 3, IMAGE, IMAGE)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        out = model(input_ids=ids, pixel_values=pixel, labels=ids, **kwargs)
    alive: dict[str, dict[int, int]] = {"tower": {}, "projector": {}, "merge": {}}
    for ref, part, p, nbytes in held:
        if ref() is not None:
            alive[part][p] = nbytes
    out.loss.backward()
    # masked_scatter's bool mask (batch × seq × 1) belongs to the projector component
    return sum(alive["tower"].values()) + sum(kept.values()), \
        sum(alive["projector"].values()) + sum(alive["merge"].values())


CASES = [("full", "all"), ("full", "projector"), ("full", "none"),
         ("lora", "all"), ("lora", "projector"), ("lora", "none")]


@pytest.mark.parametrize(("method", "train_vision"), CASES)
def test_vision_saves_equal_torch(method: str, train_vision: str) -> None:
    spec = _spec()
    assert _estimated(spec, _setup(method, train_vision)) == _measured(method, train_vision)


@pytest.mark.parametrize(("method", "train_vision"), CASES)
def test_llava_vision_saves_equal_torch(method: str, train_vision: str) -> None:
    """LLaVA's CLIP tower: every encoder layer's saves stay alive at the end of forward (the feature layer is -2,
    yet the last layer's graph is still referenced), the pooled class token's post_layernorm graph is dropped."""
    spec = _llava_spec()
    assert _estimated(spec, _setup(method, train_vision, llava=True)) == \
        _measured(method, train_vision, llava=True)


@pytest.mark.parametrize(("method", "train_vision"), CASES)
def test_qwen2_vl_vision_saves_equal_torch(method: str, train_vision: str) -> None:
    """Qwen2-VL's tower (Conv3d patches, fused qkv, fp32 vision rotary shared by the blocks, per-image attention
    joined by torch.cat, QuickGELU) and PatchMerger (its projector, inside the tower module)."""
    spec = _qwen_spec()
    assert _estimated(spec, _setup(method, train_vision, qwen=True)) == \
        _measured(method, train_vision, qwen=True)


@pytest.mark.parametrize(("method", "train_vision"), CASES)
def test_qwen2_5_vl_vision_saves_equal_torch(method: str, train_vision: str) -> None:
    """Qwen2.5-VL: RMSNorm blocks, gated SiLU MLP, the window reordering's int64 index, merger's reverse gather."""
    spec = _qwen_spec(v25=True)
    assert _estimated(spec, _setup(method, train_vision, qwen=True)) == \
        _measured(method, train_vision, qwen=True, v25=True)


@pytest.mark.parametrize(("method", "train_vision"), [("full", "all"), ("lora", "none")])
def test_qwen2_vl_vision_saves_with_checkpointing_equal_torch(method: str, train_vision: str) -> None:
    spec = _qwen_spec()
    assert _estimated(spec, _setup(method, train_vision, qwen=True, grad_ckpt=True)) == \
        _measured(method, train_vision, ckpt=True, qwen=True)


@pytest.mark.parametrize(("method", "train_vision"), [("full", "all"), ("lora", "none")])
def test_llava_vision_saves_with_checkpointing_equal_torch(method: str, train_vision: str) -> None:
    spec = _llava_spec()
    assert _estimated(spec, _setup(method, train_vision, llava=True, grad_ckpt=True)) == \
        _measured(method, train_vision, ckpt=True, llava=True)


@pytest.mark.parametrize(("method", "train_vision"), [("full", "all"), ("full", "none"), ("lora", "all"),
                                                      ("lora", "none")])
def test_vision_saves_with_checkpointing_equal_torch(method: str, train_vision: str) -> None:
    """Checkpointed SigLIP layers keep their inputs only (torch.utils.checkpoint's ``_NoopSaveInputs``, outside
    the checkpoint's own saved-tensor hooks: the outer hook sees them) — a frozen tower too: transformers'
    ``gradient_checkpointing_enable`` makes the patch embedding's output require grad (enable_input_require_grads)."""
    spec = _spec()
    assert _estimated(spec, _setup(method, train_vision, grad_ckpt=True)) == \
        _measured(method, train_vision, ckpt=True)


# expected from first principles (fp32, batch 2 × 2 images × 64 patches = 256 patch rows, 64 pooled tokens):
# a trained tower saves per encoder layer 2 LayerNorm inputs + mean + rstd, q/k/v/attention output + logsumexp,
# fc1's input, the GELU input, fc2's input; a frozen tower (nothing upstream needs a gradient) saves nothing
def test_frozen_tower_saves_nothing() -> None:
    spec = _spec()
    for method in ("full", "lora"):
        for tv in ("projector", "none"):
            assert _estimated(spec, _setup(method, tv))[0] == 0
    # nothing of the vision side needs a gradient: only masked_scatter's mask, kept for the trained text embeddings
    # (full fine-tuning), one byte per text token; under LoRA nothing at all
    setup = _setup("full", "none")
    assert _estimated(spec, setup)[1] == setup.batch * setup.seq
    assert _estimated(spec, _setup("lora", "none"))[1] == 0


def test_trained_tower_layer_from_first_principles() -> None:
    rows, f32 = 2 * 2 * PATCHES, 4
    # rows × width: layer_norm1's input and output (the q/k/v input), q, k, v, the attention output (out_proj's
    # input is a view of it), layer_norm2's input and output (fc1's input); rows × MLP width: fc1's output (the
    # GELU input) and the GELU output (fc2's input); per row: two mean/rstd pairs and the per-head logsumexp
    layer = (8 * rows * V_HIDDEN + 2 * rows * V_INTER + 4 * rows + rows * V_HEADS) * f32
    conv = rows * 3 * PATCH * PATCH * f32                        # patch_embedding's input, per patch
    post = (rows * V_HIDDEN + 2 * rows) * f32                    # post_layernorm's input, mean, rstd
    assert _estimated(_spec(), _setup("full", "all"))[0] == V_LAYERS * layer + conv + post


def test_train_vision_freezes_weights_and_targets() -> None:
    spec = _spec()
    parts = spec.params_by_component()
    full = {tv: estimate(spec, _setup("full", tv)).params_trainable for tv in ("all", "projector", "none")}
    assert full["all"] == spec.params_total
    assert full["projector"] == spec.params_total - parts["vision_tower"]
    assert full["none"] == parts["language_model"]
    # PEFT's all-linear takes the tower's Linears too; --train-vision drops them
    adapted = {tv: {a.module for a in plan_lora(spec, LoraConfig(targets=("all-linear",)), roles).adapters}
               for tv, roles in (("all", ()), ("none", ("vision_tower", "vision_projector")))}
    assert any(".vision_tower." in m for m in adapted["all"])
    assert not any(".vision_tower." in m for m in adapted["none"])


def test_image_tokens_must_fill_whole_images() -> None:
    with pytest.raises(SetupError, match="multiple of 16"):
        estimate(_spec(), _setup("lora", "all").with_(image_tokens=20))


def test_text_model_warns() -> None:
    from vramplan.profiles import resolve_model

    spec = resolve_model("qwen2.5-0.5b").spec
    est = estimate(spec, Setup(method="lora", seq=512, image_tokens=256))
    assert any("no vision tower" in w for w in est.warnings)


@pytest.mark.parametrize("llava", [False, True])
@pytest.mark.parametrize("train_vision", ["all", "projector", "none"])
def test_lora_trainable_equals_peft(train_vision: str, llava: bool) -> None:
    """PEFT 0.21.2 on the real tiny model: ``all-linear`` (``_maybe_include_all_linear_layers``: every Linear but
    the output embedding, the SigLIP tower's included) for ``all``; for the frozen variants the Linear names
    outside the frozen parts, as LLaMA-Factory's ``patch_target_modules`` passes them."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    conf, cls, cfg_cls = (TINY_LLAVA, transformers.LlavaForConditionalGeneration, transformers.LlavaConfig) \
        if llava else (TINY, transformers.Gemma3ForConditionalGeneration, transformers.Gemma3Config)
    cfg = cfg_cls(**{k: v for k, v in conf.items() if k != "architectures"})
    with torch.device("meta"):
        model = cls(cfg)
    frozen = {"all": (), "projector": ("vision_tower",), "none": ("vision_tower", "multi_modal_projector")}
    if train_vision == "all":
        targets = "all-linear"
    else:
        targets = [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and n != "lm_head"
                   and not any(f".{p}." in f".{n}." for p in frozen[train_vision])]
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets))
    trainable, _ = pm.get_nb_trainable_parameters()
    tower_adapted = any(".vision_tower." in n and "lora_A" in n for n, _ in pm.named_parameters())
    assert tower_adapted == (train_vision == "all")
    spec = _llava_spec() if llava else _spec()
    assert estimate(spec, _setup("lora", train_vision, llava=llava)).params_trainable == trainable


def test_sweep_counters_equal_estimate() -> None:
    """The sweep's evaluator (grid.py) prices the same vision saves as estimate()."""
    from vramplan.estimate.grid import estimate_counters

    spec = _spec()
    for tv in ("all", "none"):
        setup = _setup("lora", tv)
        est = estimate(spec, setup, detail=False)
        row = estimate_counters(spec, setup, [(setup.batch, setup.seq)])[0]
        assert (row.peak_allocated_bytes, row.peak_phase) == (est.peak_allocated_bytes, est.peak_phase)
    # the vision saves are in the peak: a trained tower's plan is larger than the text-only one by at least them
    with_images = estimate(spec, _setup("full", "all"))
    text_only = estimate(spec, _setup("full", "all").with_(image_tokens=0))
    vision = sum(c.bytes for c in with_images.components if c.name.startswith("activations/vision_"))
    assert vision > 0 and with_images.peak_allocated_bytes >= text_only.peak_allocated_bytes + vision


def test_unmodelled_vision_class_warns() -> None:
    """Llama 4's vision forward is not replayed: one warning line, never silence."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import json

    from vramplan.shapes.from_meta import spec_from_meta

    cfg = transformers.Llama4Config(
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": 512, "intermediate_size_mlp": 128,
                     "num_local_experts": 2, "head_dim": 16, "interleave_moe_layer_step": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14, "vision_output_dim": 32, "projector_input_dim": 32,
                       "projector_output_dim": 64})
    d = json.loads(cfg.to_json_string())
    d["architectures"] = ["Llama4ForConditionalGeneration"]
    spec = spec_from_meta(d, "tiny-llama4")
    est = estimate(spec, Setup(method="lora", seq=64, image_tokens=16, lora=LoraConfig(targets=("all-linear",))))
    assert any("vision activations of Llama4ForConditionalGeneration are not modelled" in w for w in est.warnings)
