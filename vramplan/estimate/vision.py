"""The vision side of a multimodal training step: which parts train (``--train-vision``), how many images the
``--image-tokens`` stand for, and what the vision tower and projector save for backward — replayed on the same
symbolic tracer as the decoder layers (``layers.py`` on ``graph.py``), not by separate formulas.

Modelled: ``Gemma3ForConditionalGeneration`` (transformers 5.24 ``models/gemma3/modeling_gemma3.py``):

* ``Gemma3Model.forward`` -> ``get_image_features``: ``self.vision_tower(pixel_values=...)`` (SigLIP,
  ``models/siglip/modeling_siglip.py``), then ``Gemma3MultiModalProjector.forward`` on its ``last_hidden_state``,
  then ``inputs_embeds.masked_scatter(special_image_mask, image_features)``; ``get_placeholder_mask`` requires
  ``image tokens == images × mm_tokens_per_image`` (default 256, ``configuration_gemma3.py``), so
  ``--image-tokens`` must be a multiple of it.
* ``SiglipVisionEmbeddings.forward``: ``patch_embedding`` (``nn.Conv2d``, stride = patch) on
  ``pixel_values.to(patch_embedding.weight.dtype)`` -> ``(image_size // patch_size) ** 2`` patches per image,
  ``+ position_embedding``; ``SiglipEncoderLayer.forward`` (a ``GradientCheckpointingLayer``): pre-LN
  ``layer_norm1`` -> ``SiglipAttention`` (biased q/k/v/out, ``is_causal=False``, no mask) -> residual ->
  ``layer_norm2`` -> ``SiglipMLP`` (``fc1`` -> ``gelu_pytorch_tanh`` -> ``fc2``) -> residual;
  ``SiglipVisionTransformer.forward``: ``post_layernorm`` (Gemma-3's configs set ``vision_use_head: false``).
  Replayed with ``layers.py Program.layer`` on the tower's dimensions (LayerNorm, no rotary, no cache).
* ``Gemma3MultiModalProjector.forward``: ``transpose``/``reshape``/``contiguous`` (a copy of the tower output),
  ``AvgPool2d`` (saves that copy when the tower's output needs a gradient: ``derivatives.yaml`` ``avg_pool2d``
  keeps ``self``; measured), ``mm_soft_emb_norm`` (``Gemma3RMSNorm``),
  ``torch.matmul(normed, mm_input_projection_weight)``, ``type_as``. Replayed with ``Program.norm`` /
  ``Program.linear`` at the image tokens.

And ``LlavaForConditionalGeneration`` with a CLIP tower (transformers 5.24 ``models/llava/modeling_llava.py``
``LlavaModel.get_image_features``; ``models/clip/modeling_clip.py``): ``CLIPVisionEmbeddings`` (patch ``Conv2d``
without bias, the class token ``torch.cat``-ed in front, ``+ position_embedding``: ``patches + 1`` rows per
image), ``pre_layrnorm``, the same pre-LN encoder layers with ``QuickGELUActivation`` (``x * sigmoid(1.702 x)``:
the sigmoid's output and ``x`` saved), ``hidden_states[vision_feature_layer]`` (one int layer; a list is not
modelled), ``[:, 1:]`` under the ``default`` strategy (``patches`` image tokens per image, ``full``: ``+ 1``), then
``LlavaMultiModalProjector`` (``linear_1`` -> GELU -> ``linear_2``). Measured: every encoder layer's saves stay
alive at the end of forward (the last layer's too, though the feature layer is -2), the pooled class token's
``post_layernorm`` graph is dropped.

And ``Qwen2VLForConditionalGeneration`` (``models/qwen2_vl/modeling_qwen2_vl.py``
``Qwen2VisionTransformerPretrainedModel.forward``): ``PatchEmbed`` (``Conv3d`` without bias on
``in_channels × temporal_patch_size × patch_size²`` values per patch), fp32 vision rotary cos/sin computed once
and saved by every block's ``q * cos`` / ``rotate_half(q) * sin`` (under checkpointing held by the checkpoint's
closure as keyword arguments), ``Qwen2VLVisionBlock`` (LayerNorm, fused biased ``qkv`` whose output ``v`` is a view
of, rotary on q and k, attention per image joined by ``torch.cat`` — a copy ``proj`` saves —, LayerNorm, fc1 ->
QuickGELU -> fc2), then ``PatchMerger`` (its projector: ``ln_q``, ``view(-1, dim·merge²)``, Linear -> GELU ->
Linear). An image token is one merger output of ``spatial_merge_size²`` patches, whatever the image sizes.
``Qwen2_5_VLForConditionalGeneration`` (``models/qwen2_5_vl/modeling_qwen2_5_vl.py``): the same with RMSNorm
blocks, a gated SiLU MLP (biased ``gate_proj``/``up_proj``/``down_proj``), an RMSNorm ``ln_q``, and the windowed
attention's reordering: ``hidden_states[window_index]`` before the blocks and ``merged[reverse_indices]`` after the
merger, each saving its int64 index (one per image token) when a gradient flows (``permute_input_for_window_attn``,
``:422-426``; ``forward`` ``:456-484``); which patches attend together does not change the flash kernels' saves.

What autograd keeps depends on what trains: a tower whose parameters and inputs need no gradient runs without
recording a graph (only its output, ``last_hidden_state``, enters the projector); a frozen projector on such a
tower saves nothing either and the image features enter ``masked_scatter`` as a constant. ``masked_scatter``
saves its bool mask (``derivatives.yaml``: ``masked_scatter``) whenever its input or its source needs a gradient.
With gradient checkpointing the tower's encoder layers save their inputs only, as the decoder layers do
(``GradientCheckpointingLayer``; transformers' ``gradient_checkpointing_enable`` sets every such module).

The vision activations are made first in forward and freed last in backward (the tower's backward runs after
every decoder layer's): they are alive at every activation moment of the timeline (``timeline.py``).

Not modelled (a warning that says what is missing): Mllama's vision model (tiles, local and gated global
layers, the aspect-ratio mask) and its cross-attention layers' saves over the vision tokens, Llama 4's vision model,
other multimodal classes' vision activations; LLaVA with several feature layers; the tower's own forward transients (its peak comes before the decoder's activations exist); the
``pixel_values`` batch itself (an input, as ``input_ids`` are); Gemma-3's bidirectional image-token attention
mask in training (``token_type_ids``), which would rule out the flash kernel for the text layers.

``--train-vision`` (what of the vision side ``--method`` trains): ``all`` (tower and projector, as the text
model), ``projector`` (tower frozen), ``none`` (both frozen; LLaMA-Factory 0.9.5 ``freeze_vision_tower`` /
``freeze_multi_modal_projector`` default True, ``hparams/finetuning_args.py:527-534``; ms-swift 4.6
``freeze_vit`` / ``freeze_aligner`` default True, ``swift/arguments/tuner_args.py:123-124``). A frozen part keeps
its weights in the base dtype (``Setup.base_dtype``: under full fine-tuning with -mixed the model is loaded in fp32,
so a frozen tower stays fp32; LLaMA-Factory 0.9.5 loads the checkpoint's dtype, ``torch_dtype="auto"``
``model/loader.py:155``, and casts only the trainable parameters to fp32, ``model/adapter.py:38-54
_setup_full_tuning``, so there it stays bf16: not placed so yet, a warning says by how much the plan overstates it)
with no gradient or optimizer state, and
is no LoRA target (LoRA: LLaMA-Factory ``model/model_utils/visual.py patch_target_modules`` drops the frozen parts' modules
from any target list; ms-swift ``utils/transformers_utils.py get_multimodal_target_regex`` builds ``all-linear``
from the trainable parts).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..dtypes import BYTES, alloc, alloc_sum
from ..errors import SetupError
from ..setup import Setup
from ..shapes.from_config import VISION_PLANNED
from ..shapes.spec import ModelSpec
from ..stacks import STACKS
from .graph import Tracer, tok
from .layers import LayerInfo, Lin, Norm, Program

if TYPE_CHECKING:
    from ..lora import LoraPlan
    from .weights import Placement

#: multimodal model types whose vision forward is replayed (this module)
MODELLED = VISION_PLANNED

#: ``Gemma3Config.mm_tokens_per_image`` default (transformers 5.24 ``models/gemma3/configuration_gemma3.py``)
GEMMA3_TOKENS_PER_IMAGE = 256


#: ``CLIPVisionConfig`` defaults (transformers 5.24 ``models/clip/configuration_clip.py``) and LLaVA's
#: (``models/llava/configuration_llava.py``: ``vision_feature_layer=-2``, ``vision_feature_select_strategy="default"``,
#: ``projector_hidden_act="gelu"``)
CLIP_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "num_channels": 3}
LLAVA_DEFAULTS: dict[str, Any] = {"vision_feature_layer": -2, "vision_feature_select_strategy": "default",
                                  "projector_hidden_act": "gelu"}


@dataclass(frozen=True)
class Tower:
    """A vision tower's dimensions, read from the checkpoint's ``vision_config`` (SigLIP / CLIP defaults)."""

    hidden: int
    intermediate: int
    heads: int
    layers: int
    patches: int             # encoder sequence per image: (image_size // patch_size) ** 2, + 1 CLS for CLIP
    tokens_per_image: int    # language-model tokens per image (mm_tokens_per_image; LLaVA: the patches)
    act: str
    kind: str = "siglip"     # "siglip" (Gemma 3) or "clip" (LLaVA)
    pixel_values: int = 0    # values of one image's pixel_values: channels × image_size²
    projector_act: str = ""


#: ``Qwen2VLVisionConfig`` defaults (transformers 5.24 ``models/qwen2_vl/configuration_qwen2_vl.py``)
QWEN2_VL_VISION_DEFAULTS: dict[str, Any] = {
    "depth": 32, "embed_dim": 1280, "hidden_act": "quick_gelu", "mlp_ratio": 4, "num_heads": 16, "in_channels": 3,
    "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}


def _qwen2_vl_tower(spec: ModelSpec) -> Tower:
    """Qwen2-VL: an image token is one ``PatchMerger`` output of ``spatial_merge_size ** 2`` patches, each patch
    ``in_channels × temporal_patch_size × patch_size²`` pixel values (``PatchEmbed``). The tower attends within each
    image (``cu_seqlens``); images of any size make the tokens, so the replay counts per image token (an "image"
    here is one token: ``patches`` = merge², ``tokens_per_image`` = 1) — exact for the flash / memory-efficient
    kernels, whose saves are linear in the patches."""
    vision = spec.config.get("vision_config") or {}

    def get(key: str) -> Any:
        v = vision.get(key)
        return QWEN2_VL_VISION_DEFAULTS[key] if v is None else v

    dim, merge = int(get("embed_dim")), int(get("spatial_merge_size"))
    pixels = int(get("in_channels")) * int(get("temporal_patch_size")) * int(get("patch_size")) ** 2 * merge * merge
    return Tower(dim, int(dim * float(get("mlp_ratio"))), int(get("num_heads")), int(get("depth")), merge * merge, 1,
                 str(get("hidden_act")), "qwen2_vl", pixels, "gelu")


#: ``Qwen2_5_VLVisionConfig`` defaults (transformers 5.24 ``models/qwen2_5_vl/configuration_qwen2_5_vl.py``)
QWEN2_5_VL_VISION_DEFAULTS: dict[str, Any] = {
    "depth": 32, "hidden_size": 3584, "hidden_act": "silu", "intermediate_size": 3420, "num_heads": 16,
    "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}


def _qwen2_5_vl_tower(spec: ModelSpec) -> Tower:
    """Qwen2.5-VL: as Qwen2-VL (an image token = merge² patches), with RMSNorm blocks and a gated SiLU MLP; the
    windowed attention reorders the patches (a gather) and changes only which patches attend together."""
    vision = spec.config.get("vision_config") or {}

    def get(key: str) -> Any:
        v = vision.get(key)
        return QWEN2_5_VL_VISION_DEFAULTS[key] if v is None else v

    merge = int(get("spatial_merge_size"))
    pixels = int(get("in_channels")) * int(get("temporal_patch_size")) * int(get("patch_size")) ** 2 * merge * merge
    return Tower(int(get("hidden_size")), int(get("intermediate_size")), int(get("num_heads")), int(get("depth")),
                 merge * merge, 1, str(get("hidden_act")), "qwen2_5_vl", pixels, "gelu")


def tower_of(spec: ModelSpec) -> Tower | None:
    """The modelled tower of ``spec`` (``None``: a text model, a multimodal class not modelled, or a LLaVA with
    several feature layers)."""
    if spec.model_type not in MODELLED or not spec.is_multimodal:
        return None
    if spec.model_type == "qwen2_vl":
        return _qwen2_vl_tower(spec)
    if spec.model_type == "qwen2_5_vl":
        return _qwen2_5_vl_tower(spec)
    from ..shapes.from_config import SIGLIP_VISION_DEFAULTS

    vision = spec.config.get("vision_config") or {}
    clip = spec.model_type == "llava"
    defaults = CLIP_VISION_DEFAULTS if clip else SIGLIP_VISION_DEFAULTS

    def get(key: str) -> Any:
        v = vision.get(key)
        return defaults.get(key, 3) if v is None else v

    per_side = int(get("image_size")) // int(get("patch_size"))
    pixels = int(get("num_channels")) * int(get("image_size")) ** 2
    dims = (int(get("hidden_size")), int(get("intermediate_size")), int(get("num_attention_heads")),
            int(get("num_hidden_layers")))
    if not clip:
        tpi = int(spec.config.get("mm_tokens_per_image") or GEMMA3_TOKENS_PER_IMAGE)
        return Tower(*dims, per_side * per_side, tpi, str(vision.get("hidden_act") or "gelu_pytorch_tanh"),
                     "siglip", pixels)
    cfg = {k: spec.config.get(k, d) if spec.config.get(k) is not None else d for k, d in LLAVA_DEFAULTS.items()}
    if not isinstance(cfg["vision_feature_layer"], int) or vision.get("model_type") not in (None, "clip_vision_model"):
        return None
    # LlavaModel.get_image_features: hidden_states[vision_feature_layer], [:, 1:] under "default" (drops CLS)
    patches = per_side * per_side
    tpi = patches if cfg["vision_feature_select_strategy"] == "default" else patches + 1
    return Tower(*dims, patches + 1, tpi, str(get("hidden_act")), "clip", pixels, str(cfg["projector_hidden_act"]))


def images(spec: ModelSpec, setup: Setup) -> int:
    """Images per sequence that ``--image-tokens`` stand for (0 when none or not modelled)."""
    tower = tower_of(spec)
    if tower is None or not setup.image_tokens:
        return 0
    n, rest = divmod(setup.image_tokens, tower.tokens_per_image)
    if rest:
        what = "mm_tokens_per_image" if tower.kind == "siglip" else "its patches per image"
        raise SetupError(f"--image-tokens {setup.image_tokens}: {spec.architecture} puts {tower.tokens_per_image} "
                         f"tokens per image ({what}; get_placeholder_mask requires tokens = images × "
                         f"{tower.tokens_per_image}), so it must be a multiple of {tower.tokens_per_image}")
    return n


def warnings(spec: ModelSpec, setup: Setup) -> list[str]:
    """What the plan cannot say about the vision side, one line each."""
    out = []
    if setup.image_tokens and not spec.is_multimodal:
        out.append(f"--image-tokens {setup.image_tokens}: {spec.architecture or spec.model_type} has no vision tower "
                   "in this plan; the tokens count as text tokens of --seq")
    elif setup.image_tokens and tower_of(spec) is None and spec.model_type in UNMODELLED_DETAIL:
        out.append(UNMODELLED_DETAIL[spec.model_type](spec, setup))
    elif setup.image_tokens and tower_of(spec) is None:
        out.append(f"--image-tokens {setup.image_tokens}: the vision activations of {spec.architecture} are not "
                   f"modelled (modelled: Gemma3ForConditionalGeneration, LlavaForConditionalGeneration with one feature layer, "
                   f"Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration); its tower and projector are weights "
                   f"(trained per --train-vision {setup.train_vision}), the image tokens text tokens of --seq")
    if setup.image_tokens and setup.act_offload and setup.training and tower_of(spec) is not None:
        out.append("--act-offload with --image-tokens: the vision tower's and projector's saves are kept on the GPU "
                   "in this plan (an offloader's saved-tensor hooks would move them too): an upper bound")
    stack_value = STACKS[setup.stack].defaults_for(setup.quant != "none", setup.method == "full", setup.gpus).get(
        "train_vision")
    if setup.train_vision != "all" and not spec.is_multimodal and setup.training and (
            stack_value is None or stack_value.value != setup.train_vision):     # a stack's default is no mistake
        out.append(f"--train-vision {setup.train_vision}: {spec.architecture or spec.model_type} has no vision "
                   "tower or projector; nothing changes")
    return out


def _vision_cfg(spec: ModelSpec, key: str, default: Any) -> Any:
    v = (spec.config.get("vision_config") or {}).get(key)
    return default if v is None else v


def _mllama_unmodelled(spec: ModelSpec, setup: Setup) -> str:
    """What a plan of ``MllamaForConditionalGeneration`` leaves out (transformers 5.24 ``models/mllama/
    modeling_mllama.py``): ``MllamaVisionModel.forward`` runs every image as ``max_num_tiles`` tiles (the processor
    pads to them) of ``(image_size // patch_size)² + 1`` patches, padded to a multiple of 8, through the local
    ``transformer`` and the gated ``global_transformer`` under a 4-D aspect-ratio mask
    (``_prepare_aspect_ratio_attention_mask``, tiles·rows squared per image); the projector's output,
    ``tiles × patches`` vision tokens per image, is what every ``MllamaCrossAttentionDecoderLayer`` reads through
    ``k_proj``/``v_proj``/``k_norm`` and attends to under the cross-attention mask — none of it is in the text
    sequence (one ``<|image|>`` token per image is)."""
    defaults = {"max_num_tiles": 4, "image_size": 448, "patch_size": 14, "num_hidden_layers": 32,
                "num_global_layers": 8, "hidden_size": 1280}     # MllamaVisionConfig (configuration_mllama.py)
    g = {k: int(_vision_cfg(spec, k, d)) for k, d in defaults.items()}
    patches = (g["image_size"] // g["patch_size"]) ** 2 + 1
    padded = patches + (8 - patches % 8) % 8
    text = spec.config.get("text_config") or {}
    cross = text.get("cross_attention_layers") or spec.config.get("cross_attention_layers") or ()
    return (f"--image-tokens {setup.image_tokens}: MllamaForConditionalGeneration's vision side is not replayed "
            f"(each <|image|> token counts as one text token of --seq): per image {g['max_num_tiles']} tiles × "
            f"{patches} patches ({padded} padded) through {g['num_hidden_layers']} local + {g['num_global_layers']} "
            f"global vision layers of width {g['hidden_size']} and their aspect-ratio mask, and the "
            f"{len(cross)} cross-attention layers' saves over its {g['max_num_tiles'] * patches} vision tokens "
            "(k_proj/v_proj input, K/V, k_norm, the cross-attention mask): missing from the plan (transformers 5.24 "
            "modeling_mllama.py)")


def _llama4_unmodelled(spec: ModelSpec, setup: Setup) -> str:
    """``Llama4ForConditionalGeneration`` (transformers 5.24 ``models/llama4/modeling_llama4.py``): the image
    tokens are in the text sequence (``masked_scatter`` of the projected features), as for LLaVA, but
    ``Llama4VisionModel`` (``Llama4UnfoldConvolution``: ``nn.Unfold`` + Linear, a class token, 2-D vision rotary
    encoder layers, the pixel-shuffle ``Llama4VisionPixelShuffleMLP`` adapter) has no replay here."""
    size, patch = int(_vision_cfg(spec, "image_size", 448)), int(_vision_cfg(spec, "patch_size", 14))
    ratio = float(_vision_cfg(spec, "pixel_shuffle_ratio", 0.5))
    per_tile = int((size // patch) ** 2 * ratio * ratio)
    return (f"--image-tokens {setup.image_tokens}: the vision activations of Llama4ForConditionalGeneration are not "
            f"modelled (Llama4VisionModel: unfolded-patch Linear, class token, 2-D rotary encoder layers, "
            f"pixel-shuffle adapter; {per_tile} image tokens per {size}-px tile; then multi_modal_projector — "
            "modeling_llama4.py Llama4VisionModel.forward): their saves are missing, the image tokens count as text "
            "tokens of --seq")


#: multimodal model types whose vision side is not replayed, with what exactly the plan leaves out
UNMODELLED_DETAIL = {"mllama": _mllama_unmodelled, "llama4": _llama4_unmodelled}


# ------------------------------------------------------------------------------------------- the trace
@dataclass(frozen=True)
class VisionTrace:
    """The vision forward's saved storages, as ``(const, per token, per tokens·seq²)`` bytes: the tower's at
    the patches (per encoder layer, times ``layers``), the projector's and the merge's at the image tokens."""

    layer: tuple[tuple[int, int, int], ...]     # one encoder layer's saves (its input included when saved)
    layers: int
    first: tuple[tuple[int, int, int], ...]     # layer 0's: its input needs no gradient unless the embeddings train
    tower_other: tuple[tuple[int, int, int], ...]   # embeddings, post_layernorm
    projector: tuple[tuple[int, int, int], ...]
    pool_input: int                               # bytes per patch of the avg-pool input the projector saves
    mask_saved: bool                              # masked_scatter keeps its bool mask (per text token)
    tower: Tower
    ckpt_input: int                               # checkpointing: bytes per patch of one saved layer input
    pixel_bytes: int = 0                          # per image: the patch embedding's saved input (it trains)

    def at(self, n_images: int, text_tokens: int, ckpt: bool) -> tuple[int, int]:
        """(tower bytes, projector + merge bytes) at ``n_images`` images in the step."""
        P = n_images * self.tower.patches
        bss = P * self.tower.patches
        if ckpt:
            tower = self.layers * alloc(P * self.ckpt_input) if self.ckpt_input else 0
        else:
            tower = (self.layers - 1) * alloc_sum(self.layer, P, bss) + alloc_sum(self.first, P, bss) \
                if self.layers else 0
        tower += alloc_sum(self.tower_other, P, bss)
        if self.pixel_bytes:
            tower += alloc(n_images * self.pixel_bytes)
        it = n_images * self.tower.tokens_per_image
        proj = alloc_sum(self.projector, it, it * self.tower.tokens_per_image)
        if self.pool_input:
            proj += alloc(P * self.pool_input)
        if self.mask_saved and n_images:
            proj += alloc(text_tokens)
        return (tower, proj) if n_images else (0, 0)


def _terms(storages) -> tuple[tuple[int, int, int], ...]:
    out = []
    for st in storages:
        k = BYTES[st.dtype]
        out.append((st.size.const * k, st.size.per_token * k, st.size.per_bss * k))
    return tuple(out)


def vision_trace(spec: ModelSpec, setup: Setup, placements: tuple[Placement, ...], plan: LoraPlan | None,
                 text_embed_rg: bool) -> VisionTrace | None:
    """Replay the modelled tower and projector of ``spec`` under ``setup`` (``None``: nothing modelled).

    ``plan``: the LoRA plan (the vision modules it wraps); ``text_embed_rg``: the text embeddings' output needs a
    gradient (then ``masked_scatter`` saves its mask whatever the vision side does)."""
    tower = tower_of(spec)
    if tower is None or not setup.training:
        return None
    adapted = adapted_modules(plan)
    by_name = {p.tensor.name: p for p in placements}
    vt = [p for p in placements if p.tensor.role == "vision_tower"]
    pj = [p for p in placements if p.tensor.role == "vision_projector"]
    pos = next((p for p in vt if p.tensor.module.endswith("position_embedding")), None)
    conv = next((p for p in vt if p.tensor.module.endswith(("patch_embedding", "patch_embed.proj"))
                 and p.tensor.param_name == "weight"), None)
    # the stream's dtype: the position embedding's (added to the patches), else the patch convolution's output
    # (autocast: the compute dtype)
    if pos is not None:
        resid = pos.dtype
    else:
        resid = setup.compute_dtype if (setup.autocast or conv is None) else conv.dtype
    # with checkpointing, transformers 5.24 gradient_checkpointing_enable calls enable_input_require_grads
    # (modeling_utils.py:3190-3198), which hooks every sub-model's get_input_embeddings — SiglipVisionModel's is the
    # patch_embedding (modeling_siglip.py:852-853): its output requires grad, so even a frozen tower records a graph
    hooked = setup.grad_ckpt
    embed_trains = any(p.trainable for p in vt if ".embeddings." in p.tensor.name) or hooked \
        or (conv is not None and conv.trainable)
    tower_modules = {p.tensor.module for p in vt}
    tower_grad = any(p.trainable for p in vt) or any(m in tower_modules for m in adapted) or hooked
    # the tower's replay: a spec of its dimensions (LayerNorm, no rotary, no KV cache, no dropout)
    vspec = replace(spec, model_type="siglip_vision_model", hidden_size=tower.hidden, num_heads=tower.heads,
                    num_kv_heads=tower.heads, head_dim=tower.hidden // tower.heads,
                    intermediate_size=tower.intermediate, hidden_act=tower.act,
                    norm_type="rmsnorm" if tower.kind == "qwen2_5_vl" else "layernorm",
                    config={"use_cache": False}, tensors=(), notes=())
    qwen = tower.kind in ("qwen2_vl", "qwen2_5_vl")
    prog = _TowerProgram(vspec, setup, tower.act, rotary=qwen)
    ac = setup.compute_dtype if setup.autocast else None
    clip = tower.kind == "clip"
    pre = _norm_of(vt, "pre_layrnorm") if clip else None
    # CLIP's pre_layrnorm runs before the layers: under (CUDA) autocast its output, the layers' stream, is fp32
    stream = "fp32" if (pre is not None and setup.autocast) else resid
    pixel_bytes = 0

    layer_terms: tuple = ()
    first_terms: tuple = ()
    other: list = []
    if tower_grad:
        for index in (0, 1):
            info = _encoder_layer(vt, min(index, max(tower.layers - 1, 0)), setup, adapted, plan)
            tr = Tracer(ac)
            # layer 0's input is the embeddings' output: it needs a gradient only when they train (then its first
            # LayerNorm saves nothing otherwise, as the decoder's layer 0 in structure.py trace_layer)
            rg0 = embed_trains or (pre is not None and pre.trainable)
            x = tr.external("encoder layer input", tok(tower.hidden), stream, rg0 or index > 0)
            prog.layer(tr, x, info)
            if index == 0:
                first_terms = _terms(tr.saved_storages())
            else:
                layer_terms = _terms(tr.saved_storages())
        tr0 = Tracer(ac)
        if conv is not None and conv.trainable:
            # Conv2d saves its input, pixel_values.to(weight dtype) (autocast: the compute dtype), per image
            pixel_bytes = tower.pixel_values * BYTES[ac or conv.dtype]
        if qwen:
            # Qwen2VLVisionRotaryEmbedding.forward returns fp32 cos/sin, computed once per forward; every block's
            # q * cos and rotate_half(q) * sin save them (cos.unsqueeze(-2).float() is a view): once per tower
            for name in ("cos", "sin"):
                trig = tr0.new(f"vision rotary {name} (fp32)", tok(tower.hidden // tower.heads), "fp32", False)
                tr0.save("mul", trig)
        if pre is not None:
            # CLIPVisionTransformer.forward: pre_layrnorm on the embeddings (class token + patches + positions)
            h = tr0.external("embeddings", tok(tower.hidden), resid, embed_trains)
            prog.norm(tr0, h, pre, "pre_layrnorm")
        # SigLIP's post_layernorm is on the output; CLIP's on the pooled class token, whose graph LLaVA drops
        post = _norm_of(vt, "post_layernorm") if not clip else None
        if post is not None:
            # post_layernorm's input: the last layer's output, requires grad (the tower trains)
            h = tr0.external("last layer output", tok(tower.hidden), resid, True)
            prog.norm(tr0, h, post, "post_layernorm")
        other = list(_terms(tr0.saved_storages()))
        if tower.kind == "qwen2_5_vl" and embed_trains:
            # permute_input_for_window_attn: hidden_states[window_index] saves the int64 window index, one entry
            # per merge² patches (= per image token) — modeling_qwen2_5_vl.py:422-426
            pixel_bytes += 8
    ckpt_input = tower.hidden * BYTES[stream] if tower_grad else 0
    proj_trains = any(p.trainable for p in pj)
    if qwen:
        return _qwen2_vl_merger(spec, setup, pj, adapted, plan, tower, prog, stream, tower_grad, text_embed_rg,
                                (layer_terms, first_terms, tuple(other), ckpt_input, pixel_bytes))
    if clip:
        return _llava_projector(spec, setup, pj, adapted, plan, tower, prog, stream, tower_grad, text_embed_rg,
                                (layer_terms, first_terms, tuple(other), ckpt_input, pixel_bytes))

    # projector: Gemma3RMSNorm(mm_soft_emb_norm) then matmul with mm_input_projection_weight
    tr = Tracer(ac)
    # post_layernorm's output: fp32 under (CUDA) autocast, which runs layer_norm in fp32; the pooling keeps it
    vdt = "fp32" if setup.autocast else resid
    pooled = tr.external("pooled tower output", tok(tower.hidden), vdt, tower_grad)
    gprog = Program(spec, setup)     # the Gemma RMSNorm of the language model's family (1 + weight)
    n = _norm_of(pj, "mm_soft_emb_norm")
    h = gprog.norm(tr, pooled, n, "mm_soft_emb_norm") if n is not None else pooled
    w = by_name.get("model.multi_modal_projector.mm_input_projection_weight")
    if w is not None:
        lin = Lin("multi_modal_projector.mm_input_projection", w.tensor.shape[0], w.tensor.shape[1], w.dtype,
                  w.trainable)
        gprog.linear(tr, h, lin)
    proj_terms = _terms(tr.saved_storages())
    # the image features need a gradient when anything of the vision side records a graph (the projector's
    # matmul output is a new tensor either way: its rg flag in the replay says nothing here)
    features_rg = proj_trains or tower_grad
    # AvgPool2d saves its input, the contiguous (b, C, H, W) copy of the tower output, when that needs a gradient
    pool_input = tower.hidden * BYTES[vdt] if tower_grad else 0
    return VisionTrace(layer_terms, tower.layers, first_terms, tuple(other), proj_terms, pool_input,
                       features_rg or text_embed_rg, tower, ckpt_input, pixel_bytes)


def _lins(pj: list, adapted: dict[str, Any], plan: LoraPlan | None, setup: Setup) -> dict[str, Lin]:
    """The projector's Linears by leaf name, with their LoRA adapters."""
    lins = {}
    for p in pj:
        t = p.tensor
        if t.module_type == "linear" and t.param_name == "weight":
            lin = Lin(t.module, t.shape[1], t.shape[0], p.dtype, p.trainable)
            a = adapted.get(t.module)
            if a is not None and plan is not None:
                lin.lora_r, lin.lora_dtype = a.rank, setup.adapter_weight_dtype
                lin.dropout, lin.dora = plan.config.dropout, plan.config.dora
            lins[t.module.rpartition(".")[2]] = lin
    return lins


def _qwen2_vl_merger(spec: ModelSpec, setup: Setup, pj: list, adapted: dict[str, Any], plan: LoraPlan | None,
                     tower: Tower, prog: Program, stream: str, tower_grad: bool, text_embed_rg: bool,
                     tower_parts: tuple) -> VisionTrace:
    """``PatchMerger.forward`` (transformers 5.24 ``models/qwen2_vl/modeling_qwen2_vl.py``): ``ln_q`` (LayerNorm
    over each patch), ``.view(-1, dim * merge²)``, ``mlp`` = Linear -> GELU -> Linear; per image token."""
    layer_terms, first_terms, other, ckpt_input, pixel_bytes = tower_parts
    lins = _lins(pj, adapted, plan, setup)
    tr = Tracer(setup.compute_dtype if setup.autocast else None)
    x = tr.external("last block output (merge² patches per token)", tok(tower.hidden * tower.patches), stream,
                    tower_grad)
    h = prog.norm(tr, x, _norm_of(pj, "ln_q"), "merger.ln_q")
    first = lins.get("0")
    if first is not None:
        h2 = prog.linear(tr, h, first)
        if not (h.rg or first.trainable or first.lora_r):
            h2.rg = False
        h = h2
    saved_act, saved_quick = prog.act, prog.quick
    prog.act, prog.quick = "gelu", False       # nn.GELU(): exact erf GELU, saves its input
    h = prog.act_fn(tr, h, "merger GELU")
    prog.act, prog.quick = saved_act, saved_quick
    if "2" in lins:
        prog.linear(tr, h, lins["2"])
    features_rg = tower_grad or any(lin.trainable or lin.lora_r for lin in lins.values()) \
        or any(p.trainable for p in pj)
    if tower.kind == "qwen2_5_vl" and features_rg:
        # merged_hidden_states[reverse_indices] (argsort of the window index) saves the int64 indices, one per token
        idx = tr.new("merger reverse_indices (int64)", tok(1), "int64", False)
        tr.save("index", idx)
    terms = _terms(tr.saved_storages())
    return VisionTrace(layer_terms, tower.layers, first_terms, other, terms, 0, features_rg or text_embed_rg, tower,
                       ckpt_input, pixel_bytes)


def _llava_projector(spec: ModelSpec, setup: Setup, pj: list, adapted: dict[str, Any], plan: LoraPlan | None,
                     tower: Tower, prog: Program, stream: str, tower_grad: bool, text_embed_rg: bool,
                     tower_parts: tuple) -> VisionTrace:
    """``LlavaMultiModalProjector.forward`` (transformers 5.24 ``models/llava/modeling_llava.py``): ``linear_1`` on
    the selected hidden states (``[:, 1:]`` of a layer output: ``F.linear`` reshapes the strided slice to 2-D, a
    contiguous copy, and saves that), the projector activation (GELU), ``linear_2``."""
    layer_terms, first_terms, other, ckpt_input, pixel_bytes = tower_parts
    lins = _lins(pj, adapted, plan, setup)
    tr = Tracer(setup.compute_dtype if setup.autocast else None)
    x = tr.external("selected image features ([:, 1:] copy)", tok(tower.hidden), stream, tower_grad)
    h = prog.linear(tr, x, lins["linear_1"]) if "linear_1" in lins else x
    l1 = lins.get("linear_1")
    if l1 is not None and not (x.rg or l1.trainable or l1.lora_r):
        h.rg = False        # nothing before it needs a gradient: autograd records no graph, the GELU saves nothing
    saved_act = prog.act
    prog.act, prog.quick = ("gelu" if "gelu" in tower.projector_act else "silu"), tower.projector_act == "quick_gelu"
    h = prog.act_fn(tr, h, "projector act")
    prog.act, prog.quick = saved_act, tower.act == "quick_gelu"
    if "linear_2" in lins:
        prog.linear(tr, h, lins["linear_2"])
    terms = _terms(tr.saved_storages())
    features_rg = tower_grad or any(lin.trainable or lin.lora_r for lin in lins.values())
    return VisionTrace(layer_terms, tower.layers, first_terms, other, terms, 0, features_rg or text_embed_rg, tower,
                       ckpt_input, pixel_bytes)


class _TowerProgram(Program):
    """The decoder program on a vision tower's dimensions: LayerNorm, no rotary, no KV cache, CLIP's QuickGELU."""

    def __init__(self, spec: ModelSpec, setup: Setup, act: str, rotary: bool = False) -> None:
        super().__init__(spec, setup)
        self.kv_cache = self.gemma_norm = False
        # Qwen2-VL's vision rotary (apply_rotary_pos_emb_vision: elementwise on q and k, cos/sin shared by every
        # block) and its per-image attention outputs joined by torch.cat (a copy, which proj saves): the cat_rope
        # path of the decoder's program
        self.rotary = self.cat_rope = rotary
        self.quick = act == "quick_gelu"

    def act_fn(self, tr: Tracer, x: Any, label: str) -> Any:
        if not self.quick:
            return super().act_fn(tr, x, label)
        # QuickGELUActivation (transformers 5.24 activations.py:117-123): input * torch.sigmoid(1.702 * input);
        # sigmoid saves its output, the mul saves both operands
        scaled = tr.fresh("mul", x, f"{label} 1.702 * x")
        sig = tr.new(f"{label} sigmoid", x.size, x.dtype, x.rg)
        tr.op("sigmoid", (scaled,), (sig,))
        if x.rg:
            tr.save("sigmoid", sig)
        return tr.mul(x, sig, label)


def adapted_modules(plan: LoraPlan | None) -> dict[str, Any]:
    """The modules LoRA wraps (module name -> its adapter), none without a plan."""
    if plan is None:
        return {}
    return {a.module: a for a in plan.adapters if a.parameter is None and not a.frozen}


def image_features_require_grad(spec: ModelSpec, setup: Setup, placements: tuple[Placement, ...],
                                plan: LoraPlan | None) -> bool:
    """Whether the image features merged into the text embeddings need a gradient (then layer 0's input does):
    a trainable or adapted tower or projector."""
    if tower_of(spec) is None or not setup.training:
        return False
    vision = {p.tensor.module for p in placements if p.tensor.role in ("vision_tower", "vision_projector")}
    return setup.grad_ckpt or any(p.trainable for p in placements if p.tensor.module in vision) \
        or any(m in vision for m in adapted_modules(plan))


def _norm_of(ps: list, leaf: str) -> Norm | None:
    for p in ps:
        t = p.tensor
        if t.module.endswith(leaf) and t.param_name == "weight":
            return Norm(t.module, t.shape[0], p.dtype, p.trainable)
    return None


def _encoder_layer(vt: list, index: int, setup: Setup, adapted: dict[str, Any], plan: LoraPlan | None) -> LayerInfo:
    """Encoder layer ``index`` of the tower as the replay's :class:`LayerInfo` (SigLIP's module names onto the
    decoder roles: ``layer_norm1``/``layer_norm2`` -> the two pre-norms, ``fc1``/``fc2`` -> up/down)."""
    roles = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "out_proj": "attn_o",
             "qkv": "attn_qkv", "proj": "attn_o", "fc1": "mlp_up", "fc2": "mlp_down",
             "gate_proj": "mlp_gate", "up_proj": "mlp_up", "down_proj": "mlp_down"}
    norms = {"layer_norm1": "input_layernorm", "layer_norm2": "post_attention_layernorm",
             "norm1": "input_layernorm", "norm2": "post_attention_layernorm"}
    info = LayerInfo(index)
    segs = (f".layers.{index}.", f".blocks.{index}.")
    for p in vt:
        t = p.tensor
        if not any(seg in t.name for seg in segs):
            continue
        leaf = t.module.rpartition(".")[2]
        if t.param_name != "weight":
            continue
        if leaf in norms:
            info.norms[norms[leaf]] = Norm(t.module, t.shape[0], p.dtype, p.trainable)
        elif leaf in roles:
            lin = Lin(t.module, t.shape[1], t.shape[0], p.dtype, p.trainable)
            a = adapted.get(t.module)
            if a is not None and plan is not None:
                lin.lora_r, lin.lora_dtype = a.rank, setup.adapter_weight_dtype
                lin.dropout, lin.dora = plan.config.dropout, plan.config.dora
            info.lin[roles[leaf]] = lin
    return info


#: per tower kind: (encoder name, where the tower is, the projector and where it is) — transformers 5.24
_KINDS = {
    "siglip": ("SigLIP encoder layers", "models/siglip/modeling_siglip.py SiglipEncoderLayer.forward, "
               "models/gemma3/modeling_gemma3.py Gemma3Model.get_image_features",
               "Gemma3MultiModalProjector (AvgPool2d input, mm_soft_emb_norm, projection matmul)",
               "modeling_gemma3.py Gemma3MultiModalProjector.forward, Gemma3Model.forward"),
    "clip": ("CLIP encoder layers", "models/clip/modeling_clip.py CLIPEncoderLayer.forward, "
             "models/llava/modeling_llava.py LlavaModel.get_image_features",
             "LlavaMultiModalProjector (linear_1, GELU, linear_2)",
             "modeling_llava.py LlavaMultiModalProjector.forward, LlavaModel.forward"),
    "qwen2_vl": ("Qwen2-VL vision blocks", "models/qwen2_vl/modeling_qwen2_vl.py Qwen2VLVisionBlock.forward, "
                 "Qwen2VisionTransformerPretrainedModel.forward", "PatchMerger (ln_q, Linear, GELU, Linear)",
                 "modeling_qwen2_vl.py PatchMerger.forward, Qwen2VLModel.forward"),
    "qwen2_5_vl": ("Qwen2.5-VL vision blocks", "models/qwen2_5_vl/modeling_qwen2_5_vl.py "
                   "Qwen2_5_VLVisionBlock.forward, Qwen2_5_VisionTransformerPretrainedModel.forward",
                   "Qwen2_5_VLPatchMerger (ln_q, Linear, GELU, Linear; the reverse window gather)",
                   "modeling_qwen2_5_vl.py Qwen2_5_VLPatchMerger.forward, Qwen2_5_VLModel.forward"),
}


def vision_items(spec: ModelSpec, setup: Setup, acts: Any) -> list[tuple[str, int, str]]:
    """The components of the vision saves at ``setup``'s batch (``acts``: the structure's LayerActivations)."""
    n = images(spec, setup)
    tower_b, proj_b = acts.vision_at(setup.batch, setup.seq, n)
    vt = acts.vision
    if vt is None:
        return []
    t = vt.tower
    layers, tower_src, proj, proj_src = _KINDS[t.kind]
    what = ("each encoder layer's input (checkpointing)" if setup.grad_ckpt else
            "per encoder layer its norms' inputs and statistics, q/k/v, attention output and logsumexp, the MLP's "
            "inputs and its activation's (layers.py Program.layer on the tower's dimensions)")
    if t.tokens_per_image == 1:      # Qwen: per image token, merge² patches
        rows = f"{setup.batch} × {setup.image_tokens} image tokens × {t.patches} patches"
    else:
        rows = (f"{setup.batch * n} images ({setup.batch} × {n}: --image-tokens {setup.image_tokens} / "
                f"{t.tokens_per_image} per image) × {t.patches} rows")
    tower_f = (f"{rows} through {t.layers} {layers} (width {t.hidden}, MLP {t.intermediate}, {t.heads} heads): "
               f"{what}; nothing when the tower neither trains nor is adapted and no checkpointing hook makes its "
               f"embeddings require grad (it runs without recording a graph) — transformers 5.24 {tower_src}")
    proj_f = (f"{proj} at {setup.batch * setup.image_tokens:,} image tokens: the saved inputs of what trains or "
              "passes a gradient, plus masked_scatter's bool mask (one byte per text token) when its input or source "
              f"needs a gradient — {proj_src}")
    return [("activations/vision_tower", tower_b, tower_f), ("activations/vision_projector", proj_b, proj_f)]
