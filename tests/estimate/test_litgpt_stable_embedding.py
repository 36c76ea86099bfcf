"""LitGPT 0.5.13 QLoRA's ``StableEmbedding`` swap at real size (issue 14), from first principles.

``litgpt/finetune/lora.py:217-230``: after ``mark_only_lora_as_trainable`` and after
``instantiate_bnb_optimizer(optimizer, model.parameters())``, ``BitsandbytesPrecision`` runs replace
``model.transformer.wte`` by ``bnb.nn.StableEmbedding(vocab, hidden)`` (bitsandbytes 0.50.2 nn/modules.py: an
``nn.Embedding`` plus ``nn.LayerNorm(hidden)``), its weight copied from the old one and moved to the old dtype and
device. So: the new weight and the LayerNorm's weight and bias require grad but are not in the optimizer (no states;
``optimizer.zero_grad()`` never frees their ``.grad``, alive from the first backward on), the optimizer's
``param_groups`` keep the old ``vocab x hidden`` weight alive, and layer 0's input requires grad. The tiny-model
whole-step check against the real run is ``tests/estimate/test_stack_litgpt_cpu.py``.

Llama-3-8B (vocab 128,256, hidden 4,096, bf16): one ``vocab x hidden`` copy is 128,256 x 4,096 x 2 =
1,050,673,152 B (a multiple of 512: no allocator rounding); the LayerNorm weight and bias 8,192 B each.
"""

from __future__ import annotations

from vramplan.estimate import estimate
from vramplan.estimate.optimizer import optimizer_states
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.lora import LoraConfig
from vramplan.profiles import resolve_model
from vramplan.setup import Setup

SPEC = resolve_model("llama-3-8b").spec
COPY = 128_256 * 4_096 * 2
NORM = 4_096 * 2


def _setup(stack: str) -> Setup:
    return Setup.create(method="qlora", stack=stack, lora=LoraConfig(r=8, alpha=16, targets=("q_proj", "v_proj")),
                        batch=1, seq=2048)


def test_copy_size_is_vocab_times_hidden_bf16():
    assert (SPEC.vocab_size, SPEC.hidden_size) == (128_256, 4_096)
    assert COPY == 1_050_673_152


def test_litgpt_qlora_counts_the_swap():
    s = _setup("litgpt")
    e = estimate(SPEC, s)
    assert e.component("weights/replaced_embedding") == COPY
    assert e.component("weights/embeddings") == COPY
    assert e.component("gradients/not_in_optimizer") == COPY + 2 * NORM
    # the LayerNorm's weight and bias are weights too (two 512-B-rounded allocations of 8,192 B)
    st = static_structure(SPEC, structural_setup(s))
    norms = [p for p in st.placements if p.tensor.role == "embedding_norm"]
    assert sorted(p.tensor.name for p in norms) == ["model.embed_tokens.norm.bias", "model.embed_tokens.norm.weight"]
    assert all(p.dtype == "bf16" and p.numel * 2 == NORM for p in norms)
    # what is left of the swap, warned: the embedding's own saves and its backward's transient gradient
    assert [w for w in e.warnings if "StableEmbedding" in w] == [w for w in e.warnings if "StableEmbedding" in w
                                                                  and "not counted" in w] != []


def test_no_optimizer_state_for_the_unstepped_tensors():
    """PagedAdamW (32-bit) keeps two fp32 states per element of what it holds: the LoRA adapters only."""
    st = static_structure(SPEC, structural_setup(_setup("litgpt")))
    unstepped = [t for t in st.trainables if not t.in_optimizer]
    assert sum(t.numel for t in unstepped) == 128_256 * 4_096 + 2 * 4_096
    held = [t for t in st.trainables if t.in_optimizer]
    assert optimizer_states(tuple(st.trainables), _setup("litgpt")) == optimizer_states(tuple(held), _setup("litgpt"))


def test_layer_zero_input_requires_grad_only_under_the_swap():
    """Layer 0 saves what a layer whose input needs a gradient saves (layer 1's trace), under litgpt only."""
    lit = static_structure(SPEC, structural_setup(_setup("litgpt")))
    assert lit.layer_traces[0].saved == lit.layer_traces[1].saved
    hf = static_structure(SPEC, structural_setup(Setup.create(
        method="qlora", stack="hf", kbit_prep=False, grad_ckpt=False,
        lora=LoraConfig(r=8, alpha=16, targets=("q_proj", "v_proj")), batch=1, seq=2048)))
    assert hf.layer_traces[0].saved != hf.layer_traces[1].saved

