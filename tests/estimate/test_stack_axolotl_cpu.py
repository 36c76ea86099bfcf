"""``--stack axolotl`` against axolotl 0.21.0's real code on CPU (issue 14, item 4).

``benchmarks/frameworks/axolotl_step.py`` builds the tiny random Llama of ``benchmarks/frameworks/_step.py``
(2 layers, hidden 64, vocab 128) from a user config dict (``adapter: lora`` / ``qlora`` + ``load_in_4bit``,
``lora_target_linear: true``, ``bf16: auto``, ``gradient_checkpointing`` on/off, r = alpha = 4) through axolotl's
``validate_config`` / ``normalize_config``, ``loaders.ModelLoader.load()`` (its ``_configure_embedding_dtypes``:
gradient checkpointing, ``prepare_model_for_kbit_training`` under 4-bit, the cast back to ``torch_dtype``;
``load_adapter``), the ``AxolotlTrainer`` from ``HFCausalTrainerBuilder`` (accelerate bf16 CPU autocast), and runs
``trainer.compute_loss`` + ``trainer.accelerator.backward`` on CPU (torch 2.13.0, transformers 5.20.1, peft 0.21.2,
bitsandbytes 0.50.2), measured as ``tests/estimate/test_activations_vs_torch.py`` measures. Its JSON output,
``benchmarks/frameworks/results/axolotl.json``, is committed; this test needs no framework.

Two things the script answers as a GPU would (its docstring): ``bf16: auto`` asks ``is_torch_bf16_gpu_available()``
(axolotl 0.21.0 utils/config/__init__.py:163-200), which a CPU answers False (fp16 then); and the trainer's
``TrainingArguments`` get ``use_cpu=True``.

Exact, storage for storage (axolotl always calls ``enable_input_require_grads``, loaders/adapter.py:526-527, so
without checkpointing layer 0 saves its input norm's fp32 upcast and rsqrt and three lora_A autocast copies:
18,176 B here, ``Stack.input_requires_grad``). Not modelled and pinned: ``nll_loss``'s int64 targets (8 B per token) and 0-dim total
weight (4 B); without checkpointing the rotary cos/sin (``(1, seq, head_dim)`` bf16, made once, saved by every
layer). ``lora_dropout`` is 0.0 by axolotl's default (utils/schemas/peft.py:96), so no CPU/CUDA dropout difference.
The live-byte peaks are recorded, not compared (CPU-only buffers, as test_stack_frameworks_cpu.py says).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from framework_checks import assert_params_as_built

from vramplan.dtypes import BYTES, alloc
from vramplan.estimate.estimator import estimate
from vramplan.estimate.states import model_states
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.lora import LoraConfig
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

DATA = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "frameworks" / "results"
                   / "axolotl.json").read_text())
CASES = sorted(DATA["cases"])
SPEC = spec_from_config(DATA["config"], name="tiny-llama")
T = DATA["batch"] * DATA["seq"]
BSS = DATA["batch"] * DATA["seq"] * DATA["seq"]


def _setup(name: str, *, as_run: bool = True) -> Setup:
    c = DATA["cases"][name]["setup"]
    kw = {"grad_ckpt": c["grad_ckpt"]} if as_run else {}
    lora = LoraConfig(r=DATA["rank"], alpha=DATA["rank"], targets=("all-linear",), dropout=c["lora_dropout"])
    return Setup.create(method=c["method"], stack="axolotl", lora=lora, batch=DATA["batch"], seq=DATA["seq"], **kw)


def _structure(name: str):
    s = _setup(name)
    return s, static_structure(SPEC, structural_setup(s))


def test_results_are_for_the_release_the_stack_cites():
    from vramplan.stacks import STACKS
    assert DATA["versions"]["axolotl"] == "0.21.0" and STACKS["axolotl"].release == "axolotl 0.21.0"
    assert DATA["versions"]["torch"].startswith("2.13.0")
    assert set(CASES) == {"lora-gc", "lora-nogc", "qlora-gc", "qlora-nogc"}


@pytest.mark.parametrize("name", CASES)
def test_stack_defaults_are_what_axolotl_ran(name):
    """``--stack axolotl`` alone gives what axolotl did: lora_dropout 0.0, bf16 autocast with fp32 adapters,
    and after ``prepare_model_for_kbit_training`` + the cast back (loaders/model.py:606-646) no fp32 frozen
    tensor: vramplan's ``kbit_prep=False``. Checkpointing: the stack's default is off (grad_ckpt False)."""
    case = DATA["cases"][name]
    c = case["setup"]
    s = _setup(name, as_run=False)
    assert c["lora_dropout"] == 0.0 == s.lora.dropout
    assert c["torch_dtype"] == "torch.bfloat16" and c["bf16"] is True
    assert c["native_amp"] is True, "accelerate bf16 autocast (TrainingArguments bf16 from core/builders/base.py:318-326)"
    assert s.autocast and s.compute_dtype == "bf16"
    assert {p["dtype"] for n, p in case["params"].items() if ".lora_" in n} == {s.adapter_weight_dtype} == {"fp32"}
    frozen = {p["dtype"] for n, p in case["params"].items() if p["dtype"] != "nf4" and ".lora_" not in n}
    assert frozen == {"bf16"} and s.kbit_prep is False
    assert s.grad_ckpt is False
    assert case["gradient_checkpointing"] is c["grad_ckpt"]
    assert case["loss_dtype"] == "fp32" and case["sdpa_cpu_flash"]
    assert c["trainer"] == "AxolotlTrainer"


@pytest.mark.parametrize("name", CASES)
def test_parameters_as_built(name):
    """Every parameter axolotl built: dtype (nf4 for a Params4bit), trainable, storage bytes, by name. Exact."""
    measured = DATA["cases"][name]["params"]
    s, st = _structure(name)
    trainable = assert_params_as_built(measured, st)
    assert trainable == st.params_trainable == 8960    # PEFT's log under axolotl: "trainable params: 8,960"
    if s.quantized:
        assert {e["quant_state_dtype"] for e in measured.values() if e["dtype"] == "nf4"} == {s.compute_dtype}


def _head(st) -> Counter:
    """After the last layer: the head trace, the fp32 log_softmax output, nll_loss's int64 targets and 0-dim
    total weight (the last two not modelled)."""
    out = Counter((x.nbytes(T, BSS), x.dtype) for x in st.head.saved)
    out[(T * SPEC.vocab_size * 4, "fp32")] += 1
    out[(8 * T, "int64")] += 1
    out[(4, "fp32")] += 1
    return out


@pytest.mark.parametrize("name", CASES)
def test_saved_per_layer_exact(name):
    """Without checkpointing each layer's saved storages as a multiset equal its trace (layer 0: plus the pinned
    ``enable_input_require_grads`` term); with it no layer saves
    anything inside its region and the head region equals the head trace + loss."""
    case = DATA["cases"][name]
    s, st = _structure(name)
    if s.grad_ckpt:
        assert set(case["saved_per_layer"]) == {"-1"}
    else:
        for i, tr in enumerate(st.layer_traces):
            got = Counter(tuple(x) for x in case["saved_per_layer"][str(i)])
            want = Counter((x.nbytes(T, BSS), x.dtype) for x in tr.saved)
            assert got == want, (i, sorted((got - want).items()), sorted((want - got).items()))
    assert Counter(tuple(x) for x in case["saved_per_layer"]["-1"]) == _head(st)


@pytest.mark.parametrize("name", CASES)
def test_whole_forward_saved_bytes(name):
    """Every storage saved in the forward. Checkpointed (axolotl: transformers' gradient_checkpointing_enable,
    loaders/model.py:634-640, or prepare_model_for_kbit_training's): each layer's input, kept by the checkpoint,
    equal to ``activations/checkpoint_inputs``. Otherwise the layer traces + the rotary cos/sin (pinned)."""
    case = DATA["cases"][name]
    s, st = _structure(name)
    outside = Counter((n, d) for n, d, _ in case["saved_all"]["outside_layers"])
    if s.grad_ckpt:
        resid = T * SPEC.hidden_size * BYTES[st.resid_dtype]
        assert outside == Counter({(resid, st.resid_dtype): SPEC.num_layers})
        assert estimate(SPEC, s).component("activations/checkpoint_inputs") == SPEC.num_layers * alloc(resid)
        layers = Counter()
    else:
        head_dim = SPEC.hidden_size // SPEC.config["num_attention_heads"]
        assert outside == Counter({(DATA["seq"] * head_dim * 2, "bf16"): 2}), "rotary cos and sin, not modelled"
        layers = Counter((x.nbytes(T, BSS), x.dtype) for tr in st.layer_traces for x in tr.saved)
    want = layers + _head(st) + outside
    assert case["saved_all"]["bytes"] == sum(n * k for (n, _), k in want.items())
    assert case["saved_all"]["count"] == sum(want.values())


@pytest.mark.parametrize("name", CASES)
def test_gradients(name):
    """One fp32 gradient per trainable adapter tensor: 8,960 x 4 = 35,840 B, exact."""
    _, st = _structure(name)
    want: Counter = Counter()
    for t in st.trainables:
        if not t.frozen:
            want[t.dtype] += t.numel * BYTES[t.dtype]
    assert DATA["cases"][name]["grads"] == dict(want) == {"fp32": 35840}


# ---------------------------------------------------------------------------------- full fine-tuning
FULL = sorted(DATA["full_cases"])


def _full(name: str, *, as_run: bool = True) -> Setup:
    kw = {"grad_ckpt": DATA["full_cases"][name]["setup"]["grad_ckpt"]} if as_run else {}
    return Setup.create(method="full", stack="axolotl", batch=DATA["batch"], seq=DATA["seq"], **kw)


def test_full_cases_ran_as_axolotl_runs_them():
    """No adapter, ``bf16: auto`` (torch_dtype bfloat16), sdpa (no attention key), checkpointing on and off —
    turned on by ``Trainer.train()``'s ``gradient_checkpointing_enable`` for a full fine-tune."""
    assert set(FULL) == {"full-gc", "full-nogc"}
    for name in FULL:
        case = DATA["full_cases"][name]
        assert case["setup"]["method"] == "full" and case["setup"]["torch_dtype"] == "torch.bfloat16"
        assert case["setup"]["native_amp"] is True and case["setup"]["trainer"] == "AxolotlTrainer"
        assert case["gradient_checkpointing"] is case["setup"]["grad_ckpt"] is (name == "full-gc")


@pytest.mark.parametrize("name", FULL)
def test_full_fine_tuning_keeps_norms_embeddings_and_head_fp32(name):
    """axolotl's load-time ``_convert_embedding_modules_dtype(torch.float32)`` is not undone without an adapter,
    FSDP, a flash kernel or Cut Cross-Entropy: embed_tokens, lm_head and every norm train in fp32, the other
    Linears in bf16 — ``--stack axolotl --method full`` alone (bf16-true + --fp32-norms-embeddings, under autocast).
    Every parameter as built and every gradient (one per parameter, in its dtype), exact."""
    case = DATA["full_cases"][name]
    s = _full(name, as_run=False)
    assert s.precision == "bf16-true" and s.fp32_norms_embeddings and s.autocast
    fp32 = {n for n, p in case["params"].items() if p["dtype"] == "fp32"}
    assert fp32 == {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                    *(f"model.layers.{i}.{n}.weight" for i in range(SPEC.num_layers)
                      for n in ("input_layernorm", "post_attention_layernorm"))}
    st = static_structure(SPEC, structural_setup(_full(name)))
    trainable = assert_params_as_built(case["params"], st)
    assert trainable == st.params_trainable == SPEC.params_total
    want: Counter = Counter()
    for p in case["params"].values():
        want[p["dtype"]] += p["bytes"]
    assert case["grads"] == dict(want) == {"fp32": 66816, "bf16": 172032}


def _head_region(st, s) -> Counter:
    """The measured region after the last layer: the head trace less its input (the last layer's output, which the
    recorder gives the layer that made it, not the final norm that saves it), plus the lm_head weight's bf16
    autocast copy (an fp32 trainable weight: vramplan's buffers/autocast_weight_casts) and the loss's storages."""
    out = _head(st)
    resid = (T * SPEC.hidden_size * BYTES[st.resid_dtype], st.resid_dtype)
    if st.head.input_saved:
        out[resid] -= 1
    out[(model_states(SPEC, structural_setup(s)).casts_head, "bf16")] += 1
    return +out


@pytest.mark.parametrize("name", FULL)
def test_full_fine_tuning_saves(name):
    """What autograd saves under axolotl's mixed-dtype model: an fp32 residual stream (the fp32 embedding's output),
    bf16 autocast copies at every Linear. Without checkpointing each layer equals its trace; the head region and
    the whole forward in both cases (the rotary cos/sin and the trainable embedding's int64 ids pinned, not
    modelled)."""
    case = DATA["full_cases"][name]
    s = _full(name)
    st = static_structure(SPEC, structural_setup(s))
    assert st.resid_dtype == "fp32"
    ms = model_states(SPEC, structural_setup(s))
    # only the fp32 head is cast (its bf16 Linears are used as they are): V x H x 2 B, held from forward to backward
    assert ms.casts == ms.casts_head == ms.casts_backward == SPEC.vocab_size * SPEC.hidden_size * 2
    assert Counter(tuple(x) for x in case["saved_per_layer"]["-1"]) == _head_region(st, s)
    resid = T * SPEC.hidden_size * 4
    outside = Counter((n, d) for n, d, _ in case["saved_all"]["outside_layers"])
    ids = Counter({(8 * T, "int64"): 1})
    if s.grad_ckpt:
        assert set(case["saved_per_layer"]) == {"-1"}
        # each layer's fp32 input kept by the checkpoint + the last layer's output, saved by the final norm
        assert outside == Counter({(resid, "fp32"): SPEC.num_layers + 1}) + ids
        layers = Counter()      # the checkpoint inputs: one residual-stream tensor per layer, st.resid_dtype
    else:
        for i, tr in enumerate(st.layer_traces):
            got = Counter(tuple(x) for x in case["saved_per_layer"][str(i)])
            assert got == Counter((x.nbytes(T, BSS), x.dtype) for x in tr.saved), f"layer {i}"
        head_dim = SPEC.hidden_size // SPEC.config["num_attention_heads"]
        rotary = Counter({(DATA["seq"] * head_dim * 4, "fp32"): 2})      # cos/sin in the fp32 stream's dtype
        assert outside == Counter({(resid, "fp32"): 1}) + rotary + ids
        layers = Counter((x.nbytes(T, BSS), x.dtype) for tr in st.layer_traces for x in tr.saved) + rotary
    want = layers + _head_region(st, s) + ids + (Counter({(resid, "fp32"): 1 + SPEC.num_layers}) if s.grad_ckpt
                                                 else Counter({(resid, "fp32"): 1}))
    assert case["saved_all"]["bytes"] == sum(n * k for (n, _), k in want.items())
    assert case["saved_all"]["count"] == sum(want.values())
