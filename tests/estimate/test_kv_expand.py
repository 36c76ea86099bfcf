"""``--kv-expand``: K and V repeated to every query head before attention (torchtune 0.6.1 modules/attention.py:
285-300, litgpt 0.5.13 model.py:533-539), against what torch's SDPA really saves on this CPU.

CPU SDPA dispatches ``_scaled_dot_product_flash_attention_for_cpu``, which saves q, k, v, the output and the
logsumexp (the set CUDA flash saves). The saved tensors are read from the SDPA backward node itself
(``_saved_key``/``_saved_value``); with litgpt installed (not in CI) LitGPT's own ``CausalSelfAttention`` runs.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vramplan.dtypes import alloc  # noqa: E402
from vramplan.estimate.estimator import estimate  # noqa: E402
from vramplan.estimate.structure import static_structure, structural_setup  # noqa: E402
from vramplan.lora import LoraConfig  # noqa: E402
from vramplan.profiles import resolve_model  # noqa: E402
from vramplan.setup import Setup  # noqa: E402
from vramplan.shapes import spec_from_config  # noqa: E402

B, T, H, NH, KV, HS = 1, 64, 128, 4, 2, 32
TINY = dict(model_type="llama", hidden_size=H, intermediate_size=320, num_attention_heads=NH, num_key_value_heads=KV,
            head_dim=HS, num_hidden_layers=2, vocab_size=512, max_position_embeddings=128, tie_word_embeddings=False,
            hidden_act="silu")


def _sdpa_node(y):
    seen, stack = set(), [y.grad_fn]
    while stack:
        n = stack.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        if "ScaledDotProduct" in type(n).__name__:
            return n
        stack += [f for f, _ in n.next_functions]
    raise AssertionError("no SDPA node in the graph")


def _saved_kv_bytes(node) -> int:
    return sum(getattr(node, a).untyped_storage().nbytes() for a in ("_saved_key", "_saved_value"))


def _vramplan_kv_bytes(kv_expand: bool) -> list[int]:
    s = Setup(method="lora", precision="bf16-true", lora=LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj")),
              batch=B, seq=T, grad_ckpt=True, kv_expand=kv_expand)      # checkpointing: no DynamicCache copies
    s.validate()
    st = static_structure(spec_from_config(TINY, name="tiny"), structural_setup(s))
    out = []
    for tr in st.layer_traces:
        kv = [x for x in tr.saved if any("flash" in b for b in x.saved_by)     # q, k, v, output, logsumexp
              and not x.label.startswith(("q", "attention"))]
        assert len(kv) == 2, [x.label for x in tr.saved]
        out.append(sum(x.nbytes(B * T, B * T * T) for x in kv))
    return out


def test_sdpa_saves_the_expanded_kv_as_vramplan_counts():
    torch.manual_seed(0)
    q = torch.randn(B, NH, T, HS, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, KV, T, HS, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, KV, T, HS, dtype=torch.bfloat16, requires_grad=True)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    # torchtune / LitGPT: expand, then plain SDPA; transformers: SDPA with enable_gqa (no expansion)
    expanded = sdpa(q, k.repeat_interleave(NH // KV, dim=1), v.repeat_interleave(NH // KV, dim=1), is_causal=True)
    gqa = sdpa(q, k, v, is_causal=True, enable_gqa=True)
    measured = {True: _saved_kv_bytes(_sdpa_node(expanded)), False: _saved_kv_bytes(_sdpa_node(gqa))}
    assert measured == {True: 2 * B * T * NH * HS * 2, False: 2 * B * T * KV * HS * 2}     # first principles too
    for kv_expand, m in measured.items():
        assert _vramplan_kv_bytes(kv_expand) == [m, m], kv_expand


def test_llama3_8b_kv_expansion_adds_24_mib_per_layer_at_2k():
    """docs/stacks.md, implementation notes: ``+2·T·(n_h − n_kv)·d·c`` per layer, +24 MiB at 2,048 tokens."""
    spec = resolve_model("llama-3-8b").spec
    T8 = 2048
    per_layer = 2 * (alloc(T8 * spec.num_heads * spec.head_dim * 2) - alloc(T8 * spec.num_kv_heads * spec.head_dim * 2))
    assert per_layer == 24 * 2**20
    acts = {}
    for on in (False, True):
        e = estimate(spec, Setup(method="lora", seq=T8, kv_expand=on))
        acts[on] = next(c.bytes for c in e.components if c.name == "activations/attention")
    assert acts[True] - acts[False] == spec.num_layers * per_layer


def test_eager_attention_is_unchanged_by_kv_expand():
    """transformers' eager attention already repeats K and V (repeat_kv): --kv-expand adds nothing there."""
    spec = spec_from_config(TINY, name="tiny")
    a, b = (estimate(spec, Setup(method="lora", attn="eager", seq=T, kv_expand=on)).peak_allocated_bytes
            for on in (False, True))
    assert a == b


def test_litgpt_attention_saves_what_vramplan_counts():
    litgpt_lora = pytest.importorskip("litgpt.lora")
    cfg = litgpt_lora.Config(n_layer=2, n_embd=H, n_head=NH, n_query_groups=KV, head_size=HS, vocab_size=512,
                             padded_vocab_size=512, block_size=128, intermediate_size=320, mlp_class_name="LLaMAMLP",
                             norm_class_name="RMSNorm", bias=False, rotary_percentage=1.0, parallel_residual=False,
                             lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_query=True, lora_value=True)
    torch.manual_seed(0)
    model = litgpt_lora.GPT(cfg).to(torch.bfloat16)
    litgpt_lora.mark_only_lora_as_trainable(model)
    model.max_seq_length = T
    y = model(torch.randint(0, 512, (B, T)))
    node = _sdpa_node(y)
    assert tuple(node._saved_key.shape) == (B, NH, T, HS)       # expanded by repeat_interleave (model.py:537)
    assert _vramplan_kv_bytes(True)[-1] == _saved_kv_bytes(node)
