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
    "wpe": "position_embedding", "embed_positions": "position_embedding",
    "lm_head": "lm_head", "embed_out": "lm_head",
}

# ``dense`` / ``c_proj`` are the attention output under these parents (bloom, falcon, gpt_neox ``dense``;
# phi ``self_attn.dense``; gpt2 ``attn.c_proj`` and ``crossattention.c_proj``) and the MLP's down projection
# elsewhere (gpt2 ``mlp.c_proj``).
_ATTN_PARENTS = ("attn", "attention", "self_attention", "self_attn", "mixer", "crossattention")


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor belongs to (``model.layers.7.mlp.up_proj.weight`` -> 7), else None."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def classify(module: str, param: str, module_type: str) -> str:
    """Role of the parameter ``param`` of module ``module`` whose kind is ``module_type``."""
    parts = module.split(".")
    leaf = parts[-1] if parts else ""
    parent = parts[-2] if len(parts) > 1 else ""
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
    if leaf in ("c_proj", "dense"):
        return "attn_o" if parent in _ATTN_PARENTS else "mlp_down"
    role = _LEAF_ROLE.get(leaf)
    if role is not None:
        return role
    return "other"
