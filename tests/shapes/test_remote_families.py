"""Remote-code families built without their remote code: Qwen v1, InternLM2, ChatGLM3, Baichuan 2, MiniCPM.

The expected integers come from outside vramplan: each checkpoint's own weight index (``total_size`` of
``model.safetensors.index.json`` / ``pytorch_model.bin.index.json`` divided by the bytes of its dtype, read in the
Hub repositories' mirrors named in ``docs/models.md``), the parameter names that index lists for layer 0, and
shapes summed by hand from each modeling file's ``nn.Linear(in, out)`` constructors. LoRA counts are
``r * (in + out)`` per adapted Linear, as PEFT's ``lora.Linear`` allocates ``lora_A`` [r, in] and ``lora_B`` [out, r].
"""

from __future__ import annotations

import pytest

from vramplan.errors import ConfigError, TargetError
from vramplan.lora import LoraConfig, plan_lora
from vramplan.profiles import model_profiles, resolve_model
from vramplan.shapes import spec_from_config
from vramplan.shapes.remote import REMOTE_FAMILIES

# name -> (index total_size in bytes, bytes per stored element, bytes of persistent non-parameter buffers)
CHECKPOINT_INDEX = {
    "qwen-7b": (15_442_649_088, 2, 0),             # Qwen/Qwen-7B model.safetensors.index.json (bf16)
    "internlm2-chat-7b": (15_475_417_088, 2, 0),   # internlm/internlm2-chat-7b model.safetensors.index.json (bf16)
    # THUDM/chatglm3-6b pytorch_model.bin.index.json (fp16): the index also lists transformer.rotary_pos_emb.inv_freq,
    # a registered buffer of kv_channels // 4 = 32 fp16 values (RotaryEmbedding(dim=64): arange(0, 64, 2)) = 64 B
    "chatglm3-6b": (12_487_168_064, 2, 64),
    "baichuan2-13b-chat": (27_793_336_320, 2, 0),  # baichuan-inc/Baichuan2-13B-Chat pytorch_model.bin.index.json (bf16)
}

# Parameter names the checkpoint index lists outside the layers and for layer 0 (read from the same files).
INDEX_NAMES = {
    "qwen-7b": {"transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"},
    "internlm2-chat-7b": {"model.tok_embeddings.weight", "model.norm.weight", "output.weight"},
    "chatglm3-6b": {"transformer.embedding.word_embeddings.weight", "transformer.encoder.final_layernorm.weight",
                    "transformer.output_layer.weight"},
    "baichuan2-13b-chat": {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"},
}
LAYER0_NAMES = {
    "qwen-7b": {"transformer.h.0." + n for n in (
        "attn.c_attn.bias", "attn.c_attn.weight", "attn.c_proj.weight", "ln_1.weight", "ln_2.weight",
        "mlp.c_proj.weight", "mlp.w1.weight", "mlp.w2.weight")},
    "internlm2-chat-7b": {"model.layers.0." + n for n in (
        "attention.wo.weight", "attention.wqkv.weight", "attention_norm.weight", "feed_forward.w1.weight",
        "feed_forward.w2.weight", "feed_forward.w3.weight", "ffn_norm.weight")},
    "chatglm3-6b": {"transformer.encoder.layers.0." + n for n in (
        "input_layernorm.weight", "mlp.dense_4h_to_h.weight", "mlp.dense_h_to_4h.weight",
        "post_attention_layernorm.weight", "self_attention.dense.weight", "self_attention.query_key_value.bias",
        "self_attention.query_key_value.weight")},
    "baichuan2-13b-chat": {"model.layers.0." + n for n in (
        "input_layernorm.weight", "mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
        "post_attention_layernorm.weight", "self_attn.W_pack.weight", "self_attn.o_proj.weight")},
}

NEW_PROFILES = ("qwen-7b", "internlm2-chat-7b", "chatglm3-6b", "baichuan2-13b-chat", "minicpm-2b")


def _spec(name):
    return spec_from_config(model_profiles()[name].config, name=name)


@pytest.mark.parametrize("name", sorted(CHECKPOINT_INDEX))
def test_total_equals_the_checkpoint_index(name):
    total_size, dtype_bytes, buffers = CHECKPOINT_INDEX[name]
    assert (total_size - buffers) % dtype_bytes == 0
    expected = (total_size - buffers) // dtype_bytes
    assert _spec(name).params_total == expected
    assert model_profiles()[name].params_total == expected


@pytest.mark.parametrize("name", sorted(LAYER0_NAMES))
def test_tensor_names_are_the_checkpoint_names(name):
    spec = _spec(name)
    names = {t.name for t in spec.tensors}
    assert {n for n in names if spec.tensor(n).layer is None} == INDEX_NAMES[name]
    assert {t.name for t in spec.layer_tensors(0)} == LAYER0_NAMES[name]
    layers = {t.layer for t in spec.tensors if t.layer is not None}
    assert layers == set(range(spec.num_layers))
    assert len(names) == len(INDEX_NAMES[name]) + spec.num_layers * len(LAYER0_NAMES[name])


def _layer0(name):
    return {t.name.split(".0.", 1)[1]: t.shape for t in _spec(name).layer_tensors(0)}


def test_qwen_7b_layer_shapes():
    # QWenAttention: c_attn = Linear(4096, 3 * 128 * 32) biased; c_proj = Linear(4096, 128 * 32, bias=False);
    # QWenMLP: w1, w2 = Linear(4096, 22016 // 2); c_proj = Linear(11008, 4096)
    assert _layer0("qwen-7b") == {
        "ln_1.weight": (4096,), "attn.c_attn.weight": (12288, 4096), "attn.c_attn.bias": (12288,),
        "attn.c_proj.weight": (4096, 4096), "ln_2.weight": (4096,), "mlp.w1.weight": (11008, 4096),
        "mlp.w2.weight": (11008, 4096), "mlp.c_proj.weight": (4096, 11008)}
    spec = _spec("qwen-7b")
    # forward: w1(x) * silu(w2(x)): w2 is the gate
    assert spec.tensor("transformer.h.0.mlp.w2.weight").role == "mlp_gate"
    assert spec.tensor("transformer.h.0.mlp.w1.weight").role == "mlp_up"
    assert spec.tensor("transformer.h.0.attn.c_proj.weight").role == "attn_o"
    assert spec.tensor("transformer.h.0.mlp.c_proj.weight").role == "mlp_down"
    assert (spec.intermediate_size, spec.mlp_gated, spec.output_head) == (11008, True, "lm_head")


def test_internlm2_chat_7b_layer_shapes():
    # wqkv = Linear(4096, (32 + 2 * 8) * 128), wo = Linear(32 * 128, 4096), bias=config.bias (false here)
    assert _layer0("internlm2-chat-7b") == {
        "attention.wqkv.weight": (6144, 4096), "attention.wo.weight": (4096, 4096),
        "feed_forward.w1.weight": (14336, 4096), "feed_forward.w3.weight": (14336, 4096),
        "feed_forward.w2.weight": (4096, 14336), "attention_norm.weight": (4096,), "ffn_norm.weight": (4096,)}
    assert _spec("internlm2-chat-7b").output_head == "output"


def test_chatglm3_6b_layer_shapes():
    # query_key_value = Linear(4096, 128 * 32 + 2 * 128 * 2, bias=add_qkv_bias); dense_h_to_4h = Linear(4096, 2 * 13696)
    assert _layer0("chatglm3-6b") == {
        "input_layernorm.weight": (4096,), "self_attention.query_key_value.weight": (4608, 4096),
        "self_attention.query_key_value.bias": (4608,), "self_attention.dense.weight": (4096, 4096),
        "post_attention_layernorm.weight": (4096,), "mlp.dense_h_to_4h.weight": (27392, 4096),
        "mlp.dense_4h_to_h.weight": (4096, 13696)}
    spec = _spec("chatglm3-6b")
    assert (spec.intermediate_size, spec.num_kv_heads, spec.vocab_size) == (13696, 2, 65024)
    assert spec.tensor("transformer.encoder.layers.0.mlp.dense_h_to_4h.weight").role == "mlp_gate_up"


def test_baichuan2_13b_layer_shapes_and_normhead():
    assert _layer0("baichuan2-13b-chat") == {
        "self_attn.W_pack.weight": (15360, 5120), "self_attn.o_proj.weight": (5120, 5120),
        "mlp.gate_proj.weight": (13696, 5120), "mlp.down_proj.weight": (5120, 13696),
        "mlp.up_proj.weight": (13696, 5120), "input_layernorm.weight": (5120,),
        "post_attention_layernorm.weight": (5120,)}
    head = _spec("baichuan2-13b-chat").tensor("lm_head.weight")
    assert (head.shape, head.role, head.module_type) == ((125696, 5120), "lm_head", "other"), \
        "Baichuan 2's NormHead is an nn.Module holding a weight, not an nn.Linear"
    # Baichuan 1 keeps its plain Linear head and its published total
    b1 = _spec("baichuan-7b")
    assert b1.tensor("lm_head.weight").module_type == "linear"
    assert b1.params_total == 7_000_559_616


def test_minicpm_2b_hand_count():
    # MiniCPMAttention q/k/v/o Linear(2304, 36 * 64) without bias, MiniCPMMLP gate/up/down 2304 <-> 5760, two
    # RMSNorms per layer, a final norm, and the head tied to embed_tokens (MiniCPMConfig default).
    h, i, n, v = 2304, 5760, 40, 122753
    non_embedding = n * (4 * h * h + 3 * h * i + 2 * h) + h
    spec = _spec("minicpm-2b")
    assert spec.params_total == non_embedding + v * h
    assert spec.tensor("lm_head.weight").tied_to == "model.embed_tokens.weight"
    # the model card: "2.4B parameters excluding embeddings", "2.7B" in total
    assert round(non_embedding / 1e9, 1) == 2.4 and round(spec.params_total / 1e9, 1) == 2.7


# --------------------------------------------------------------------------------------------------- LoRA
def _linears(spec, *, exclude_head=True):
    return [m for m in spec.modules() if m.module_type == "linear"
            and not (exclude_head and m.name == spec.output_head)]


def _lora(name, r=8, **kw):
    return plan_lora(_spec(name), LoraConfig(r=r, **kw)).trainable


def test_chatglm_peft_default_targets():
    # peft TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["chatglm"] = ["query_key_value"]
    assert _lora("chatglm3-6b") == 28 * 8 * (4096 + 4608) == 1_949_696


@pytest.mark.parametrize("name", ["qwen-7b", "internlm2-chat-7b", "baichuan2-13b-chat", "minicpm-2b"])
def test_no_peft_default_targets(name):
    # PEFT's table has no entry for qwen / internlm2 / baichuan / minicpm: get_peft_model raises
    # "Please specify `target_modules` in `peft_config`"
    with pytest.raises(TargetError, match="no default LoRA targets"):
        _lora(name)


# all-linear, r=8, summed by hand from the layer shapes above (output head left out)
ALL_LINEAR_R8 = {
    "qwen-7b": 32 * 8 * ((4096 + 12288) + (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096)),
    "internlm2-chat-7b": 32 * 8 * ((4096 + 6144) + (4096 + 4096) + 3 * (4096 + 14336)),
    "baichuan2-13b-chat": 40 * 8 * ((5120 + 15360) + (5120 + 5120) + 3 * (5120 + 13696)),
    "minicpm-2b": 40 * 8 * (4 * (2304 + 2304) + 3 * (2304 + 5760)),
}


@pytest.mark.parametrize("name", sorted(ALL_LINEAR_R8))
def test_all_linear(name):
    assert _lora(name, targets=("all-linear",)) == ALL_LINEAR_R8[name]
    assert sum(8 * (m.in_features + m.out_features) for m in _linears(_spec(name))) == ALL_LINEAR_R8[name]


def test_chatglm_all_linear_includes_output_layer_as_peft_does():
    layers = 28 * 8 * ((4096 + 4608) + (4096 + 4096) + (4096 + 27392) + (13696 + 4096))
    assert _lora("chatglm3-6b", targets=("all-linear",)) == layers + 8 * (4096 + 65024)


def test_family_targets():
    assert _lora("qwen-7b", targets=("c_attn",)) == 32 * 8 * (4096 + 12288)
    assert _lora("internlm2-chat-7b", targets=("wqkv",)) == 32 * 8 * (4096 + 6144)
    assert _lora("baichuan2-13b-chat", targets=("W_pack",)) == 40 * 8 * (5120 + 15360)
    assert _lora("minicpm-2b", targets=("q_proj", "v_proj")) == 40 * 2 * 8 * (2304 + 2304)


def test_baichuan2_normhead_is_not_a_lora_target():
    # PEFT: "Target module NormHead() is not supported"
    with pytest.raises(TargetError, match="lm_head"):
        _lora("baichuan2-13b-chat", targets=("lm_head",))
    assert _lora("baichuan-7b", targets=("lm_head",)) == 8 * (4096 + 64000)


# ------------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("name", NEW_PROFILES)
def test_model_folder_with_auto_map_resolves_without_remote_code(tmp_path, name):
    import json

    config = dict(model_profiles()[name].config)
    assert "auto_map" in config
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    got = resolve_model(str(tmp_path))        # no trust_remote_code, no configuration_*.py in the folder
    assert got.spec.params_total == model_profiles()[name].params_total
    assert got.spec.origin == "config"


def test_every_remote_family_has_a_profile():
    assert {model_profiles()[n].config["model_type"] for n in NEW_PROFILES} == set(REMOTE_FAMILIES)


def test_refusals_name_what_is_missing():
    v1 = {"model_type": "chatglm", "hidden_size": 4096, "num_layers": 28, "num_attention_heads": 32,
          "vocab_size": 130528, "inner_hidden_size": 16384, "position_encoding_2d": True}
    with pytest.raises(ConfigError, match="ChatGLM-6B \\(v1\\)"):
        spec_from_config(v1)
    moe = dict(model_profiles()["minicpm-2b"].config, num_experts=8)
    with pytest.raises(ConfigError, match="MiniCPM-MoE"):
        spec_from_config(moe)
    bad = dict(model_profiles()["qwen-7b"].config, kv_channels=0)
    with pytest.raises(ConfigError, match="kv_channels"):
        spec_from_config(bad)


# ------------------------------------------------------------------------------- config-class defaults
# Small configs counted by hand from the modeling files, with the shape-deciding keys left to each family's
# config class (QWenConfig, InternLM2Config, ChatGLMConfig, MiniCPMConfig defaults).
def _count(config):
    return spec_from_config(config).params_total


def test_qwen_bias_default_and_switch():
    base = {"model_type": "qwen", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "kv_channels": 16, "intermediate_size": 256, "vocab_size": 100}
    h, proj, ff, v = 64, 64, 128, 100
    layer = (h * 3 * proj + 3 * proj) + h * proj + 2 * h * ff + ff * h + 2 * h
    assert _count(base) == 2 * layer + 2 * v * h + h          # no_bias defaults to True: only c_attn biased
    biased = layer + proj + 2 * ff + h                         # c_proj, w1, w2, mlp.c_proj gain biases
    assert _count(dict(base, no_bias=False)) == 2 * biased + 2 * v * h + h


def test_internlm2_bias_defaults_to_true():
    base = {"model_type": "internlm2", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 50}
    qkv = (4 + 2 * 2) * 16
    layer = 64 * qkv + 64 * 64 + 3 * 64 * 96 + 2 * 64
    assert _count(dict(base, bias=False)) == layer + 2 * 50 * 64 + 64
    assert _count(base) == layer + qkv + 64 + 2 * 50 * 64 + 64  # wqkv and wo biased


def test_chatglm_defaults_and_switches():
    base = {"model_type": "chatglm", "hidden_size": 64, "num_layers": 2, "num_attention_heads": 4,
            "kv_channels": 16, "ffn_hidden_size": 96, "padded_vocab_size": 80}
    h, ffn, v = 64, 96, 80
    mha = h * 3 * 64 + 64 * h + h * 2 * ffn + ffn * h + 2 * h    # multi_query_attention defaults to False
    assert _count(base) == 2 * mha + 2 * v * h + h
    mqa = dict(base, multi_query_attention=True, multi_query_group_num=2, add_qkv_bias=True)
    qkv = 64 + 2 * 16 * 2
    assert _count(mqa) == 2 * (h * qkv + qkv + 64 * h + h * 2 * ffn + ffn * h + 2 * h) + 2 * v * h + h
    ln = dict(base, rmsnorm=False, post_layer_norm=False)        # LayerNorms with bias, no final norm
    assert _count(ln) == 2 * (mha + 2 * h) + 2 * v * h


def test_minicpm_ties_unless_told_not_to():
    base = {"model_type": "minicpm", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "intermediate_size": 96, "vocab_size": 50}
    layer = 4 * 64 * 64 + 3 * 64 * 96 + 2 * 64
    assert _count(base) == layer + 50 * 64 + 64
    assert _count(dict(base, tie_word_embeddings=False)) == layer + 2 * 50 * 64 + 64


def test_qwen_first_release_config_spelling():
    # Qwen-7B-Chat's first config.json (GPT-2 key names, ffn_hidden_size, padded_vocab_size), shape keys verbatim
    # from the mirror github.com/undefdev/Qwen-7B-Chat; its modeling file builds the same tree as Qwen-7B's
    first = {"model_type": "qwen", "architectures": ["QWenLMHeadModel"], "n_embd": 4096, "n_head": 32, "n_layer": 32,
             "n_positions": 6144, "ffn_hidden_size": 22016, "kv_channels": 128, "no_bias": True,
             "padded_vocab_size": 151936, "vocab_size": 151936, "seq_length": 2048, "tie_word_embeddings": False}
    assert _count(first) == CHECKPOINT_INDEX["qwen-7b"][0] // 2
    # ffn_hidden_size really sizes the MLP (8192 // 2 per w1/w2), and padded rows only the embedding
    small = dict(first, ffn_hidden_size=8192, padded_vocab_size=152064)
    delta_mlp = 32 * 3 * 4096 * (11008 - 4096)
    assert _count(first) - _count(small) == delta_mlp - (152064 - 151936) * 4096
