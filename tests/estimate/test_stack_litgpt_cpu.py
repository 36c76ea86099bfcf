"""``--stack litgpt`` against LitGPT 0.5.13's real LoRA/QLoRA fine-tuning step on CPU (issue 14, item 4).

``benchmarks/frameworks/litgpt_step.py`` builds the tiny Llama of ``benchmarks/frameworks/_step.py`` (2 layers, hidden
64, 4 heads / 2 KV heads, vocab 128) as a ``litgpt.lora.Config`` (LoRA r = alpha = 4, dropout 0, on query, key,
value, projection, MLP and head; two cases on LitGPT's default query + value only) and runs what
``litgpt/finetune/lora.py`` runs: ``L.Fabric(devices=1, accelerator="cpu", precision=...)`` (``bf16-mixed``, the
default of ``get_default_supported_precision(training=True)``, or ``bf16-true``; QLoRA: ``BitsandbytesPrecision
("nf4", bf16)``), ``GPT(config)`` under ``fabric.init_module``, ``mark_only_lora_as_trainable``,
``fabric.setup_module``, the optimizer (QLoRA: ``instantiate_bnb_optimizer`` and the swap of ``transformer.wte`` for a
bitsandbytes ``StableEmbedding``), ``load_checkpoint``, ``model.max_seq_length = 32`` as ``fit`` sets it, then
``fit``'s step: ``model(input_ids, lm_head_chunk_size=128)``, ``logits[-1] = logits[-1][..., :-1, :]``,
``chunked_cross_entropy(logits, targets[..., 1:])``, ``fabric.backward(loss)``. Torch 2.13.0 (CPU), lightning 2.6.6,
bitsandbytes 0.50.2; measured as ``tests/estimate/test_activations_vs_torch.py`` measures (``_step.step``). The
``-gc`` cases run LitGPT's own ``parallelize_fn(activation_checkpointing=True)`` (``finetune/lora.py:522-541``, the
only checkpointing its LoRA script has: on more than one device) with ``fully_shard`` made the identity. QLoRA on
this CPU needs two answers a GPU gives (the script's ``bnb_on_cpu``): Lightning's connector accepts the plugin, and
the plugin's ``quantize`` runs its fp16-then-``quantize_4bit`` steps on the CPU. Its JSON output,
``benchmarks/frameworks/results/litgpt.json``, is committed; this test needs no framework.

Exact, storage for storage, where LitGPT allocates as vramplan's trace of the same setup says; the terms where it
does not are spelled out below from LitGPT's source, each with the shapes it has (never from vramplan's output):

Modelled (``Stack.fp32_model_output``, ``Stack.litgpt_model``): Fabric's ``_FabricModule.forward`` casts every
floating output to ``torch.get_default_dtype()`` (lightning 2.6.6 fabric/wrappers.py:138, ``convert_output``), so
the logits list and ``chunked_cross_entropy``'s saved log-probabilities are fp32 in every precision; LoRA on the
head; LitGPT's ``RMSNorm`` (``model.py:1315-1322``: a saved fp32 ``weight.float()`` of a bf16 weight); its
``LoRALinear`` feeding ``lora_A`` the uncast input; ``zero_pad``'s ``index_copy_`` (index and source) when some of
q/k/v are not adapted (``lora.py:288-326``).

* modelled differently, same bytes: LitGPT's fused ``attn.qkv`` (``lora.py:381-415 LoRAQKVLinear``): one ``lora_A``
  output of ``T x (n r)`` for the n adapted of q/k/v instead of n of ``T x r``; under autocast one bf16 copy of its
  input, of the fused weight and of the fused ``lora_A`` instead of one per projection (the input copies: fewer
  bytes, a ``Stack.unmodelled`` warning).
* not modelled (warned):
  - QLoRA's ``StableEmbedding`` (``finetune/lora.py:217-230``; modelled by ``Stack.stable_embedding``: its weight
    and LayerNorm train outside the optimizer, the replaced embedding stays alive, layer 0's input needs a
    gradient) also saves the token ids and its LayerNorm's input and statistics (outside every region).
  - not modelled, and small, as in the other frameworks' checks: ``nll_loss``'s int64 targets, the int64 count of
    ``chunked_cross_entropy``'s division and a 0-dim fp32; the fp32 rotary ``cos``/``sin`` (``fit`` rebuilds the
    cache at the data's length, ``model.py:43-62``: fp32) that every layer's rotary multiply saves.
* a CPU artifact: LitGPT's q is a new contiguous ``(B, heads, T, hs)`` tensor (``torch.cat``, ``model.py:512``) and
  the CPU flash kernel's output takes its layout, so ``y.reshape(B, T, C)`` (``model.py:571``) copies it: when
  ``proj`` has LoRA the copy is saved (``T x hidden``). CUDA's kernels are not measured here.

The live-byte peaks are recorded in the JSON, not compared (CPU-only buffers, as test_stack_frameworks_cpu.py says).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from framework_checks import assert_params_as_built

from vramplan.dtypes import BYTES, alloc
from vramplan.estimate.estimator import estimate
from vramplan.estimate.logits import LITGPT, logits_kept, loss_bytes
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.lora import LoraConfig
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

DATA = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "frameworks" / "results"
                   / "litgpt.json").read_text())
CASES = sorted(DATA["cases"])
NOGC = [n for n in CASES if not DATA["cases"][n]["setup"]["grad_ckpt"]]
SPEC = spec_from_config(DATA["config"], name="tiny-llama")
LC = DATA["litgpt_config"]
B, S, R = DATA["batch"], DATA["seq"], DATA["rank"]
T, BSS = B * S, B * S * S
H, V, FF, L = LC["n_embd"], LC["padded_vocab_size"], LC["intermediate_size"], LC["n_layer"]
Q, KV = LC["n_head"] * LC["head_size"], LC["n_query_groups"] * LC["head_size"]
#: finetune/lora.py's target switches -> the Hugging Face module names vramplan targets
HF_TARGETS = {"lora_query": ("q_proj",), "lora_key": ("k_proj",), "lora_value": ("v_proj",),
              "lora_projection": ("o_proj",), "lora_mlp": ("gate_proj", "up_proj", "down_proj"),
              "lora_head": ("lm_head",)}
#: LitGPT's module names -> Hugging Face's (litgpt 0.5.13 scripts/convert_hf_checkpoint.py copy_weights_llama)
HF_NAMES = {"transformer.wte": "model.embed_tokens", "norm_1": "input_layernorm", "norm_2": "post_attention_layernorm",
            "attn.proj": "self_attn.o_proj", "mlp.fc_1": "mlp.gate_proj", "mlp.fc_2": "mlp.up_proj",
            "mlp.proj": "mlp.down_proj", "transformer.ln_f": "model.norm", "lm_head": "lm_head"}
#: the fused qkv's output rows (litgpt lora.py:236-246 qkv_shapes)
QKV_ROWS = {"q_proj": Q, "k_proj": KV, "v_proj": KV}


def _case(name: str) -> dict:
    return DATA["cases"][name]


def _targets(name: str) -> dict[str, bool]:
    return {k: k in _case(name)["setup"]["targets"] for k in HF_TARGETS}


def _setup(name: str, *, as_run: bool = True) -> Setup:
    """vramplan's setup of a case: ``--stack litgpt`` + the LoRA the script configured, and (``as_run``) the
    precision and checkpointing the case ran where they differ from the stack's defaults."""
    c = _case(name)["setup"]
    targets = tuple(hf for k in c["targets"] for hf in HF_TARGETS[k])
    lora = LoraConfig(r=R, alpha=R, targets=targets, dropout=c["lora_dropout"])
    kw = {}
    if as_run:
        kw["grad_ckpt"] = c["grad_ckpt"]
        if c["quantize"] is None and c["precision"] != "bf16-mixed":
            kw["precision"] = c["precision"]
    return Setup.create(method="qlora" if c["quantize"] else "lora", stack="litgpt", lora=lora, batch=B, seq=S, **kw)


def _structure(name: str):
    s = _setup(name)
    return s, static_structure(SPEC, structural_setup(s))


def test_results_are_for_the_release_the_stack_cites():
    from vramplan.stacks import STACKS
    v = DATA["versions"]
    assert v["litgpt"] == "0.5.13" and STACKS["litgpt"].release == "litgpt 0.5.13"
    assert v["lightning"] == "2.6.6" and v["bitsandbytes"] == "0.50.2" and v["torch"].startswith("2.13.0")
    assert set(CASES) == {"lora-mixed", "lora-mixed-gc", "lora-mixed-qv", "lora-true", "lora-true-gc", "lora-true-qv", "qlora-true",
                          "qlora-true-gc"}


@pytest.mark.parametrize("name", CASES)
def test_stack_defaults_are_what_litgpt_ran(name):
    """``--stack litgpt`` alone gives the precision, dtypes and optimizer LitGPT ran: LoRA at its default
    ``bf16-mixed`` (an fp32 base and fp32 adapters under autocast), QLoRA at ``bf16-true`` with an fp16 quant state
    and a quantized head, no kbit preparation, no checkpointing on one device."""
    case, c = _case(name), _case(name)["setup"]
    s = _setup(name, as_run=False)
    assert s.grad_ckpt is False and s.kbit_prep is False
    lora = {p["dtype"] for n, p in case["params"].items() if ".lora_" in n}
    frozen = {p["dtype"] for n, p in case["params"].items() if ".lora_" not in n and not n.startswith("transformer.wte")}
    if c["quantize"]:
        assert c["plugin"] == "BitsandbytesPrecision" and s.precision == "bf16-true" and s.quant == "nf4"
        assert {e["quant_state_dtype"] for e in case["params"].values() if e["dtype"] == "nf4"} == {s.quant_state_dtype}
        assert case["params"]["lm_head.linear.weight"]["dtype"] == "nf4" and s.quant_head
        assert c["optimizer"] == "PagedAdamW" and s.optim == "paged-adamw"
        assert lora == {s.adapter_weight_dtype} == {"bf16"} and frozen == {"nf4", "bf16"}
    elif c["precision"] == "bf16-mixed":
        assert c["plugin"] == "MixedPrecision" and s.precision == "bf16-mixed" and s.autocast
        assert lora == {s.adapter_weight_dtype} == {"fp32"} and frozen == {s.base_dtype} == {"fp32"}
        assert c["optimizer"] == "AdamW" and s.optim == "adamw-foreach"
    else:                   # bf16-true: stated with --precision, the base and adapters converted to bf16
        s = _setup(name)
        assert c["plugin"] == "HalfPrecision" and not s.autocast
        assert lora == {s.adapter_weight_dtype} == frozen == {s.base_dtype} == {"bf16"}
    assert case["loss_dtype"] == "fp32" and case["sdpa_cpu_flash"]
    assert c["rope_cache_dtype"] == "float32"
    assert c["blocks"] == (["CheckpointWrapper"] if c["grad_ckpt"] else ["Block"])


def _as_hf(name: str) -> dict[str, dict]:
    """The measured parameters by Hugging Face name: LitGPT's fused ``attn.qkv`` split into q, k, v by its rows
    (``qkv_shapes``; a 4-bit weight's packed bytes split alike: half a byte a value), ``lora_A`` by rank blocks."""
    out = {}
    t = _targets(name)
    on = [p for p, k in (("q_proj", "lora_query"), ("k_proj", "lora_key"), ("v_proj", "lora_value")) if t[k]]
    for n, e in _case(name)["params"].items():
        parts = n.split(".")
        if "attn.qkv" in n:
            prefix = f"model.layers.{parts[2]}.self_attn"
            what = n.rsplit(".", 1)[1]
            if what == "weight":
                for p, rows in QKV_ROWS.items():
                    out[f"{prefix}.{p}.weight"] = {**e, "bytes": e["bytes"] * rows // (Q + 2 * KV),
                                                   "numel": e["numel"] * rows // (Q + 2 * KV)}
            else:
                total = R * len(on) if what == "lora_A" else sum(QKV_ROWS[p] for p in on)
                for p in on:
                    share = R if what == "lora_A" else QKV_ROWS[p]
                    out[f"{prefix}.{p}.{what}"] = {**e, "bytes": e["bytes"] * share // total,
                                                   "numel": e["numel"] * share // total}
            continue
        hf = n.replace(".linear.weight", ".weight")
        for lit, h in HF_NAMES.items():
            if hf.startswith(lit + ".") or f".{lit}." in hf:
                hf = hf.replace(lit, h, 1)
                break
        out[hf.replace("transformer.h.", "model.layers.")] = e
    return out


@pytest.mark.parametrize("name", CASES)
def test_parameters_as_built(name):
    """Every parameter LitGPT built, by name (LitGPT's fused qkv split by its rows): dtype (nf4 for a Params4bit),
    trainable, storage bytes. Exact; QLoRA's ``StableEmbedding`` (its weight and LayerNorm require grad, the
    optimizer does not hold them: ``Stack.stable_embedding``) are trainable tensors outside the optimizer, and the
    replaced embedding the optimizer keeps is a placement of its own."""
    measured = _as_hf(name)
    s, st = _structure(name)
    if s.quantized:
        # StableEmbedding (finetune/lora.py:217-230, after mark_only_lora_as_trainable and the optimizer): its
        # vocab x hidden weight and LayerNorm(hidden) weight and bias require grad, the optimizer does not hold them
        unstepped = {t.name: t for t in st.trainables if not t.in_optimizer}
        assert sorted(unstepped) == ["model.embed_tokens.norm.bias", "model.embed_tokens.norm.weight",
                                     "model.embed_tokens.weight"]
        for n, want in (("model.embed_tokens.weight", V * H * 2), ("model.embed_tokens.norm.weight", 2 * H),
                        ("model.embed_tokens.norm.bias", 2 * H)):
            e = measured[n]
            assert e["trainable"] and not e["in_optimizer"] and e["dtype"] == "bf16" and e["bytes"] == want
            assert unstepped[n].dtype == "bf16" and unstepped[n].numel * 2 == want
            measured[n] = {**e, "trainable": False}     # a Placement's ``trainable``: what the optimizer steps
        # the replaced embedding the optimizer's param_groups hold: vramplan places it next to the model's
        (nb, dtype, shape, trains), = _case(name)["setup"]["optimizer_params_not_in_model"]
        measured["model.embed_tokens.replaced.weight"] = {"bytes": nb, "dtype": dtype, "trainable": trains}
    trainable = assert_params_as_built(measured, st)
    # LitGPT's own count ("Number of trainable parameters", finetune/lora.py:214), from its shapes: per layer
    # qkv (n r x H + rows x r), proj, fc_1, fc_2 and mlp.proj (r x (in + out) each), and the head r x (H + V)
    t = _targets(name)
    n = sum(t[k] for k in ("lora_query", "lora_key", "lora_value"))
    rows = Q * t["lora_query"] + KV * (t["lora_key"] + t["lora_value"])
    per_layer = n * R * H + rows * R + t["lora_projection"] * R * 2 * H + t["lora_mlp"] * 3 * R * (H + FF)
    assert trainable == st.params_trainable == L * per_layer + t["lora_head"] * R * (H + V) \
        == (9728 if all(t.values()) else 1792)


# --------------------------------------------------------------------------- LitGPT's terms, from its source
def _qkv_terms(name: str, grad_in: bool, autocast: bool) -> tuple[Counter, Counter]:
    """(what LitGPT saves and the trace does not, what the trace saves and LitGPT does not) at the fused qkv."""
    t = _targets(name)
    on = [p for p, k in (("q_proj", "lora_query"), ("k_proj", "lora_key"), ("v_proj", "lora_value")) if t[k]]
    add, sub = Counter(), Counter()
    n = len(on)
    sub[(T * R * 2, "bf16")] += n                  # one lora_A output per projection ...
    add[(T * n * R * 2, "bf16")] += 1              # ... is one after_A (lora.py:405)
    if autocast:
        sub[(T * H * 2, "bf16")] += n - 1          # one bf16 copy of the norm output feeds the fused lora_A
    if autocast and grad_in:                       # the input's gradient needs the bf16 weight copies:
        sub[(R * H * 2, "bf16")] += n              # one of the fused lora_A, not one per projection,
        add[(n * R * H * 2, "bf16")] += 1
        for rows in QKV_ROWS.values():             # and one of the fused frozen weight
            sub[(rows * H * 2, "bf16")] += 1
        add[((Q + 2 * KV) * H * 2, "bf16")] += 1
    return add, sub


def _layer_terms(name: str, i: int, trace) -> tuple[Counter, Counter]:
    c = _case(name)["setup"]
    autocast = c["precision"] == "bf16-mixed"
    grad_in = i > 0 or c["wte_swapped"]
    add, sub = _qkv_terms(name, grad_in, autocast)
    if _targets(name)["lora_projection"]:          # y.reshape's copy of the CPU flash output (model.py:571)
        add[(T * H * 2, "bf16")] += 1
    return add, sub


def _vramplan_layer(trace) -> Counter:
    """The trace of a layer (QLoRA's layer 0: its input needs a gradient, the StableEmbedding trains)."""
    return Counter((x.nbytes(T, BSS), x.dtype) for x in trace.saved)


@pytest.mark.parametrize("name", NOGC)
def test_saved_per_layer(name):
    """Each decoder layer's saved storages: vramplan's trace + LitGPT's terms above, as a multiset, exact."""
    case = _case(name)
    _, st = _structure(name)
    for i, tr in enumerate(st.layer_traces):
        got = Counter(tuple(x) for x in case["saved_per_layer"][str(i)])
        add, sub = _layer_terms(name, i, tr)
        want = _vramplan_layer(tr) - sub + add
        assert got == want, (i, sorted((got - want).items()), sorted((want - got).items()))


def _loss_terms() -> Counter:
    """After the last layer, besides the head trace: the log-softmax output of the B x (S - 1) shifted positions,
    fp32 (Fabric's convert_output: vramplan's ``litgpt-chunked`` loss saves it in bf16 under bf16-true, pinned in
    :func:`test_logits_are_fp32_fabric_convert_output`); nll_loss's int64 targets, the int64 count
    ``chunked_cross_entropy`` divides by and a 0-dim fp32 (not modelled)."""
    rows = B * (S - 1)
    return Counter({(rows * V * 4, "fp32"): 1, (rows * 8, "int64"): 1, (8, "int64"): 1, (4, "fp32"): 1})


@pytest.mark.parametrize("name", CASES)
def test_saved_after_the_layers(name):
    """The final norm, head and loss region: vramplan's head trace (less its input when that is the last layer's
    fp32 output: made inside the last layer) + the loss terms."""
    case = _case(name)
    s, st = _structure(name)
    got = Counter(tuple(x) for x in case["saved_per_layer"]["-1"])
    want = Counter((x.nbytes(T, BSS), x.dtype) for x in st.head.saved
                   if not (st.head.input_saved and x.label == "final hidden states"))
    want += _loss_terms()
    assert got == want, (sorted((got - want).items()), sorted((want - got).items()))


def _outside(name: str, st, s) -> Counter:
    """Saved storages made outside every region: the rotary cos and sin (fp32, ``(1, S, head_size)``); the last
    layer's fp32 output the final norm saves (bf16-mixed); QLoRA's StableEmbedding: token ids (int64), its
    LayerNorm's input and mean/rstd (bf16)."""
    c = _case(name)["setup"]
    out = Counter({(S * LC["head_size"] * 4, "fp32"): 2})
    if st.head.input_saved:
        out[(T * H * BYTES[st.resid_dtype], st.resid_dtype)] += 1
    if c["wte_swapped"]:
        out[(T * 8, "int64")] += 1
        out[(T * H * 2, "bf16")] += 1
        out[(T * 2, "bf16")] += 2
    return out


@pytest.mark.parametrize("name", CASES)
def test_whole_forward_saved_bytes(name):
    """Every storage saved in the forward: the regions above + what is saved outside them. Checkpointed
    (``parallelize_fn``'s ``checkpoint_wrapper``): each layer region holds only its input, kept by the checkpoint,
    equal to ``activations/checkpoint_inputs``."""
    case = _case(name)
    s, st = _structure(name)
    outside = Counter((n, d) for n, d, _ in case["saved_all"]["outside_layers"])
    assert outside == _outside(name, st, s), sorted(outside.items())
    if s.grad_ckpt:
        resid = T * H * BYTES[st.resid_dtype]
        for i in range(L):
            assert case["saved_per_layer"][str(i)] == [[resid, st.resid_dtype]]
        assert estimate(SPEC, s).component("activations/checkpoint_inputs") == L * alloc(resid)
    regions = sum(n for v in case["saved_per_layer"].values() for n, _ in v)
    count = sum(len(v) for v in case["saved_per_layer"].values())
    assert case["saved_all"]["bytes"] == regions + sum(n * k for (n, _), k in outside.items())
    assert case["saved_all"]["count"] == count + sum(outside.values())


@pytest.mark.parametrize("name", CASES)
def test_gradients(name):
    """One gradient per trainable adapter tensor in the adapter dtype, exact; QLoRA adds the StableEmbedding's
    weight and LayerNorm gradients (bf16, vocab x hidden + 2 x hidden), which the optimizer does not hold."""
    s, st = _structure(name)
    want: Counter = Counter()
    for t in st.trainables:
        if not t.frozen:
            want[t.dtype] += t.numel * BYTES[t.dtype]
    unstepped = sum(t.numel * BYTES[t.dtype] for t in st.trainables if not t.in_optimizer)
    assert unstepped == (V * H * 2 + 2 * H * 2 if _case(name)["setup"]["wte_swapped"] else 0)
    assert _case(name)["grads"] == dict(want)


@pytest.mark.parametrize("name", CASES)
def test_logits_are_fp32_fabric_convert_output(name):
    """The logits list ``fit`` keeps through backward is fp32 in every precision: ``_FabricModule.forward``'s
    ``convert_output`` (lightning 2.6.6 fabric/wrappers.py:138). vramplan keeps them in its logits dtype: pinned."""
    case = _case(name)
    s, st = _structure(name)
    # one 128-position chunk (seq 32), fp32, its last position sliced off as fit does (finetune/lora.py:357)
    assert case["logits"] == [[T * V * 4, "float32", [B, S - 1, V]]]
    assert (T * V * 4, "fp32") not in Counter(tuple(x) for x in case["saved_per_layer"]["-1"])
    rows = B * (S - 1)
    assert (rows * V * 4, "fp32") in Counter(tuple(x) for x in case["saved_per_layer"]["-1"])
    # vramplan: the logits in the compute dtype, the log-probs in fp32 only under autocast
    assert st.logits_dtype == "fp32"
    assert logits_kept(T, V, BYTES[st.logits_dtype], LITGPT, seq=S) == alloc(T * V * 4)
    lb = loss_bytes(T, V, H, BYTES[st.logits_dtype], BYTES[s.compute_dtype], LITGPT, False, s.autocast, seq=S)
    assert lb.saved == alloc(rows * V * 4)
    # with fp32 logits (the fix reported to the lead) the loss saves what LitGPT saves
    assert loss_bytes(T, V, H, 4, BYTES[s.compute_dtype], LITGPT, False, s.autocast, seq=S).saved == \
        alloc(rows * V * 4)


@pytest.mark.parametrize("name", CASES)
def test_qlora_keeps_the_replaced_embedding_alive(name):
    """QLoRA: ``instantiate_bnb_optimizer(optimizer, model.parameters())`` runs before ``wte`` is replaced by a
    ``StableEmbedding`` (finetune/lora.py:217-228), so the optimizer's ``param_groups`` keep the old, frozen
    ``vocab x hidden`` embedding alive next to the new one: vramplan's ``weights/replaced_embedding``. LoRA:
    every optimizer parameter is the model's."""
    held = _case(name)["setup"]["optimizer_params_not_in_model"]
    if _case(name)["setup"]["wte_swapped"]:
        assert held == [[V * H * 2, "bf16", [V, H], False]]
        s, st = _structure(name)
        emb = [p for p in st.placements if p.tensor.role == "embedding"]
        assert len(emb) == 1 and emb[0].numel * BYTES[emb[0].dtype] == V * H * 2
        kept = [p for p in st.placements if p.tensor.role == "replaced_embedding"]
        assert [[p.numel * BYTES[p.dtype], p.dtype, list(p.tensor.shape), p.trainable] for p in kept] == held
        e = estimate(SPEC, s)
        assert e.component("weights/replaced_embedding") == alloc(V * H * 2)
        # the never-zeroed gradients: one allocation per tensor, vocab x hidden + 2 x hidden, bf16
        assert e.component("gradients/not_in_optimizer") == alloc(V * H * 2) + 2 * alloc(H * 2)
    else:
        assert held == []
