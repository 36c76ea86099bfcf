"""Name-based roles of weight tensors, shared by both spec builders.

transformers names the same job differently per family (``q_proj`` / ``query`` / ``c_attn`` / ``W_pack`` /
``query_key_value``); this table maps the last module name (and, where ambiguous, its parent) to a
:data:`vramplan.shapes.spec.Role`. An unknown name is ``other`` (still counted, still targetable by LoRA).
"""

from __future__ import annotations

import re

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)(?:\.|$)")

_LEAF_ROLE = {
    # attention
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_o",
    "query": "attn_q", "key": "attn_k", "value": "attn_v",
    "out_proj": "attn_o",
    "q_attn": "attn_q",     # gpt2 cross-attention query (Conv1D); its c_attn holds k and v
    "qkv_proj": "attn_qkv", "query_key_value": "attn_qkv", "W_pack": "attn_qkv", "c_attn": "attn_qkv",
    "Wqkv": "attn_qkv",
    # dense MLP
    "gate_proj": "mlp_gate", "up_proj": "mlp_up", "down_proj": "mlp_down", "gate_up_proj": "mlp_gate_up",
    "fc1": "mlp_up", "fc2": "mlp_down", "c_fc": "mlp_up", "fc_in": "mlp_up", "fc_out": "mlp_down",
    "dense_h_to_4h": "mlp_up", "dense_4h_to_h": "mlp_down",
    "w1": "mlp_gate", "w3": "mlp_up", "w2": "mlp_down",
    # embeddings and head
    "embed_tokens": "embedding", "wte": "embedding", "word_embeddings": "embedding", "embed_in": "embedding",
    "embeddings": "embedding",      # Mamba / Mamba-2 / Falcon-Mamba ``backbone.embeddings``
    "shared": "embedding",          # T5 / BART ``shared`` (the encoder's and decoder's embed_tokens tie to it)
    "wpe": "position_embedding", "embed_positions": "position_embedding",
    "relative_attention_bias": "position_embedding",   # T5's bucketed relative position table
    "lm_head": "lm_head", "embed_out": "lm_head",
}

# ``dense`` / ``c_proj`` are the attention output under these parents (bloom, falcon, gpt_neox ``dense``;
# phi ``self_attn.dense``; gpt2 ``attn.c_proj`` and ``crossattention.c_proj``) and the MLP's down projection
# elsewhere (gpt2 ``mlp.c_proj``).
_ATTN_PARENTS = ("attn", "attention", "self_attention", "self_attn", "mixer", "crossattention")

# T5 / mT5 (``T5Attention``: ``q``/``k``/``v``/``o`` under ``SelfAttention`` / ``EncDecAttention``; ``T5DenseActDense``
# ``wi``/``wo``, ``T5DenseGatedActDense`` ``wi_0`` (gate) / ``wi_1`` (up) / ``wo``: transformers
# ``models/t5/modeling_t5.py``).
_T5_ATTN_PARENTS = ("SelfAttention", "EncDecAttention")
_T5_LEAF_ROLE = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_o"}
_T5_MLP_ROLE = {"wi": "mlp_up", "wi_0": "mlp_gate", "wi_1": "mlp_up", "wo": "mlp_down"}

# State-space mixers (``MambaMixer``, ``Mamba2Mixer``, ``FalconMambaMixer``, ``JambaMambaMixer``, the Mamba half of
# ``Zamba2``/``FalconH1``): ``in_proj``, ``conv1d`` (an ``nn.Conv1d``, not transformers' ``Conv1D``), ``x_proj``,
# ``dt_proj``, ``out_proj`` and the bare ``A_log`` / ``D`` / ``dt_bias`` parameters (transformers
# ``models/mamba/modeling_mamba.py::MambaMixer.__init__``, ``models/mamba2/modeling_mamba2.py``).
_SSM_PARENTS = ("mixer", "mamba")
_SSM_LEAF_ROLE = {"in_proj": "ssm_in", "x_proj": "ssm_x", "dt_proj": "ssm_dt", "out_proj": "ssm_out",
                  "conv1d": "ssm_conv"}
_SSM_PARAMS = ("A_log", "D", "dt_bias")

# Multimodal checkpoints: the parts outside the language model, by the module names transformers gives them
# (``Gemma3Model.vision_tower`` / ``multi_modal_projector``, ``LlavaModel``, ``Qwen2VLModel.visual`` with its
# ``merger``, ``MllamaModel.vision_model``, ``Llama4ForConditionalGeneration.vision_model``, ...). A projector
# segment wins over a tower segment (Qwen2-VL's ``visual.merger`` is the projector inside the tower module).
_PROJECTOR_SEGMENTS = frozenset({"multi_modal_projector", "mm_projector", "merger", "connector", "vision_projection", "visual_projection", "multi_modal_projection"})
_VISION_SEGMENTS = frozenset({"vision_tower", "vision_model", "visual", "vision_encoder", "image_encoder",
                              "vision_embed_tokens", "audio_tower", "audio_model"})


def component_of(name: str) -> str | None:
    """``vision_projector`` / ``vision_tower`` for a tensor or module outside the language model of a multimodal
    checkpoint (by its module names), else ``None``."""
    parts = name.split(".")
    if _PROJECTOR_SEGMENTS.intersection(parts):
        return "vision_projector"
    if _VISION_SEGMENTS.intersection(parts):
        return "vision_tower"
    return None


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor belongs to (``model.layers.7.mlp.up_proj.weight`` -> 7), else None (also for
    the layers of a vision tower: they are not decoder layers)."""
    if component_of(name) is not None:
        return None
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def classify(module: str, param: str, module_type: str) -> str:
    """Role of the parameter ``param`` of module ``module`` whose kind is ``module_type``."""
    parts = module.split(".")
    leaf = parts[-1] if parts else ""
    parent = parts[-2] if len(parts) > 1 else ""
    outside = component_of(module)
    if outside is not None:
        return outside
    if module_type == "norm":
        return "norm"
    if module_type == "experts":
        if param in ("gate_up_proj", "w13_weight"):
            return "moe_experts_gate_up"
        if param in ("down_proj", "w2_weight"):
            return "moe_experts_down"
        return "other"
    if param == "bias" and module_type in ("linear", "conv1d"):
        return "bias"
    # MoE blocks: the router and the shared expert.
    if "shared_expert" in module:
        if leaf == "shared_expert_gate":
            return "shared_expert_router"
        base = _LEAF_ROLE.get(leaf, "")
        if base.startswith("mlp_"):
            return "shared_expert_" + base[4:]
        return "other"
    # transformers 5 routers are ``*TopKRouter`` modules holding a bare ``weight`` [E, H] (module_type
    # "other": not an nn.Linear, so PEFT cannot wrap it); older layouts use an nn.Linear named ``gate``.
    if leaf == "gate" and param == "weight" and module_type in ("linear", "other") \
            and parent in ("mlp", "block_sparse_moe", "moe"):
        return "moe_router"
    if parent.isdigit() and "experts" in parts:
        base = _LEAF_ROLE.get(leaf, "")
        if base.startswith("mlp_"):
            return "moe_expert_" + base[4:]
    if leaf in _SSM_PARENTS and param in _SSM_PARAMS:
        return "ssm_param"
    if parent in _SSM_PARENTS and leaf in _SSM_LEAF_ROLE:
        return _SSM_LEAF_ROLE[leaf]
    if parent in _T5_ATTN_PARENTS and leaf in _T5_LEAF_ROLE:
        return _T5_LEAF_ROLE[leaf]
    if leaf in _T5_MLP_ROLE and parent == "DenseReluDense":
        return _T5_MLP_ROLE[leaf]
    if leaf in ("c_proj", "dense"):
        return "attn_o" if parent in _ATTN_PARENTS else "mlp_down"
    role = _LEAF_ROLE.get(leaf)
    if role is not None:
        return role
    return "other"
