"""``--frozen-dtype fp32`` (Lightning ``bf16-mixed``: the frozen base stays fp32, the forward runs under autocast):
the weights, and the bf16 copy of every frozen Linear weight that autocast makes at each call and autograd saves
for the input gradient (not cached: ``aten/src/ATen/autocast_mode.cpp`` ``cached_cast`` caches leaves that require
grad only).

Measured on this CPU under CPU autocast (same cache rule) with ``saved_tensors_hooks``: the saved bf16 tensors
whose shape is a frozen weight's (or its transpose), per decoder layer and at the head, in a tiny fp32 Llama with
PEFT LoRA (transformers + peft, pinned in CI) and, when litgpt is installed, LitGPT's own LoRA GPT.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vramplan.estimate.estimator import estimate  # noqa: E402
from vramplan.estimate.structure import static_structure, structural_setup  # noqa: E402
from vramplan.lora import LoraConfig  # noqa: E402
from vramplan.profiles import resolve_model  # noqa: E402
from vramplan.setup import Setup  # noqa: E402
from vramplan.shapes import spec_from_config  # noqa: E402

B, T, H, FF, NH, KV, HS, V = 1, 32, 128, 320, 4, 2, 32, 512
TINY = dict(model_type="llama", hidden_size=H, intermediate_size=FF, num_attention_heads=NH, num_key_value_heads=KV,
            head_dim=HS, num_hidden_layers=2, vocab_size=V, max_position_embeddings=128, tie_word_embeddings=False,
            hidden_act="silu", attention_dropout=0.0)


def _vramplan_copies() -> tuple[list[int], int]:
    """Bytes of the saved weight copies per layer trace and at the head, LoRA r=4 on q and v, bf16-mixed."""
    s = Setup(method="lora", precision="bf16-mixed", frozen_dtype="fp32", batch=B, seq=T, grad_ckpt=False,
              lora=LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj")))
    s.validate()
    st = static_structure(spec_from_config(TINY, name="tiny"), structural_setup(s))

    def copies(tr) -> int:
        return sum(x.nbytes(B * T, B * T * T) for x in tr.saved
                   if x.label.endswith(".weight (bf16 autocast copy)") and "lora_" not in x.label)
    return [copies(tr) for tr in st.layer_traces], copies(st.head)


def _saved_weight_copies(run, frozen_shapes: set[tuple[int, ...]]) -> int:
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        run()
    return sum(t.untyped_storage().nbytes() for t in saved.values() if t.dtype == torch.bfloat16 and t.dim() == 2
               and (tuple(t.shape) in frozen_shapes or tuple(t.shape[::-1]) in frozen_shapes))


def _first_principles() -> tuple[int, int, int]:
    """Frozen Linears whose input requires grad save a bf16 copy: layer 0 (its input, the frozen embedding's
    output, needs none) o + gate + up + down; layer 1 q, k, v too; the head V × H."""
    layer0 = 2 * (H * NH * HS + 3 * H * FF)
    return layer0, layer0 + 2 * (H * NH * HS + 2 * H * KV * HS), 2 * V * H


def test_hf_llama_fp32_base_under_autocast_saves_the_copies_vramplan_counts():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"})
    model = transformers.LlamaForCausalLM(cfg).float()
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    # (the embedding has the head's shape, but embedding lookups are not autocast: no copy of it is made)
    frozen = {tuple(p.shape) for p in model.parameters() if not p.requires_grad and p.dim() == 2}
    ids = torch.randint(0, V, (B, T))
    layer0, layer1, head = _first_principles()
    assert _saved_weight_copies(lambda: model(input_ids=ids, use_cache=False), frozen) == layer0 + layer1 + head
    assert _vramplan_copies() == ([layer0, layer1], head)


def test_frozen_fp32_weights_are_4_bytes_a_parameter():
    spec = resolve_model("llama-3-8b").spec
    w = {fd: sum(c.bytes for c in estimate(spec, Setup(method="lora", frozen_dtype=fd)).components
                 if c.name.startswith("weights/")) for fd in ("compute", "fp32")}
    # every base tensor doubles (bf16 -> fp32); allocations round to 512 B, which 2- and 4-byte tensors of these
    # shapes already are, so exactly 2 B more per parameter
    assert w["fp32"] - w["compute"] == 2 * spec.params_total


def test_frozen_fp32_without_autocast_warns():
    spec = spec_from_config(TINY, name="tiny")
    e = estimate(spec, Setup(method="lora", precision="bf16-true", frozen_dtype="fp32", seq=T))
    assert any("--frozen-dtype fp32" in w and "no autocast" in w for w in e.warnings)


def test_litgpt_bf16_mixed_saves_the_copies_vramplan_counts():
    litgpt_lora = pytest.importorskip("litgpt.lora")
    cfg = litgpt_lora.Config(n_layer=2, n_embd=H, n_head=NH, n_query_groups=KV, head_size=HS, vocab_size=V,
                             padded_vocab_size=V, block_size=128, intermediate_size=FF, mlp_class_name="LLaMAMLP",
                             norm_class_name="RMSNorm", bias=False, rotary_percentage=1.0, parallel_residual=False,
                             lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_query=True, lora_value=True)
    torch.manual_seed(0)
    model = litgpt_lora.GPT(cfg)           # fp32: bf16-mixed has no convert_module (lightning 2.6.6 amp.py)
    litgpt_lora.mark_only_lora_as_trainable(model)
    model.max_seq_length = T
    frozen = {tuple(p.shape) for p in model.parameters() if not p.requires_grad and p.dim() == 2}
    ids = torch.randint(0, V, (B, T))
    layer0, layer1, head = _first_principles()     # LitGPT's fused qkv holds q, k and v's elements in one weight
    assert _saved_weight_copies(lambda: model(ids), frozen) == layer0 + layer1 + head
    assert _vramplan_copies() == ([layer0, layer1], head)
