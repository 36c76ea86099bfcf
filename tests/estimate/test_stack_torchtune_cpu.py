"""``--stack torchtune`` against torchtune 0.6.1's real LoRA/QLoRA single-device recipe step on CPU (issue 14, item 4).

``benchmarks/frameworks/torchtune_step.py`` (torch 2.13.0 CPU, torchtune 0.6.1, torchao 0.10.0) runs the recipe file
the wheel ships, ``recipes/lora_finetune_single_device.py``: ``LoRAFinetuneRecipeSingleDevice(cfg).setup(cfg)`` on
the shipped ``llama3_1/8B_lora_single_device.yaml`` / ``8B_qlora_single_device.yaml`` (``lora_attn_modules
[q_proj, v_proj, output_proj]``, ``apply_lora_to_mlp``, r 8, alpha 16, dropout 0, ``dtype: bf16``, fused AdamW,
``CEWithChunkedOutputLoss``, ``batch_size 2``) with ``device: cpu``, ``enable_activation_checkpointing`` on and
off, and the model component the configs' 8B builders call (``lora_llama3_1``, ``quantize_base`` for QLoRA) at a tiny
shape: 2 layers, embed 256, 4 heads (2 KV, head_dim 64), intermediate 512, vocab 256, so that every quantized Linear
is a whole number of torchao NF4 blocks (the head is never quantized). Its checkpoint is a random bf16 ``llama3_1``
written with torchtune's ``tune_to_hf`` and loaded by the configs' ``FullModelHFCheckpointer``; the tokenizer and
dataset are stand-ins (the Llama-3 tiktoken file is not here): 32-token random rows, every position supervised,
collated by ``padded_collate_sft``. The measured step is the body of ``recipe.train()``'s loop on the recipe's
first batch: ``recipe._loss_step(batch) * current_num_tokens`` and ``.backward()``, measured as
``tests/estimate/test_activations_vs_torch.py`` measures (``benchmarks/frameworks/_step.py``); then ``recipe.train()``
itself ran one step (optimizer, scheduler, checkpoint save). Its JSON output,
``benchmarks/frameworks/results/torchtune.json``, is committed; this test needs no framework.

The setup compared is read from the config the recipe ran, by vramplan's own torchtune reader
(``vramplan.interop.torchtune.read_torchtune`` -> ``normalize_plan_keys`` -> ``setup_from_options``: the path
``vramplan check`` takes), and ``--stack torchtune`` alone gives the same defaults.

Exact, storage for storage: parameters as built (dtype, ``nf4`` for a torchao ``NF4Tensor`` with every inner
storage, trainable, bytes), each layer's saved tensors without checkpointing, each checkpointed layer's kept input,
the head's saves, the chunked loss's fp32 log-probs, the gradients. Not modelled and pinned, each with its source:
``CEWithChunkedOutputLoss``'s int64 label copies (``labels.chunk(8, dim=1)`` then ``reshape(-1)``: a copy per chunk
at batch > 1), ``nll_loss``'s 0-dim total weight per chunk and the 0-dim ``total_elements`` its division saves; the
recipe's 0-dim ``current_num_tokens`` (``loss * current_num_tokens``); without checkpointing ``Llama3ScaledRoPE``'s
cos/sin ``cache`` (a buffer built at init, resident before the step, saved by every layer's rotation). The
live-byte peaks are recorded, not compared (CPU-only buffers, as test_stack_frameworks_cpu.py says).

Full fine-tuning (``full_cases``): ``recipes/full_finetune_single_device.py`` (``FullFinetuneRecipeSingleDevice``) on
the shipped ``llama3_1/8B_full_single_device.yaml`` — bf16, ``optimizer_in_bwd: True``, checkpointing on,
bitsandbytes ``PagedAdamW8bit`` (bitsandbytes 0.50.2 runs it on CPU, unpaged) — with checkpointing and
``optimizer_in_bwd`` each on and off, plus the PagedAdamW (32-bit) and fused AdamW of other shipped full configs;
the same tiny ``llama3_1``. Exact: every parameter (bf16, trainable), the gradients after backward (none with
``optimizer_in_bwd``; at each in-backward step only the parameter's own, the most the largest parameter's: the
estimate's ``gradients/trainable``), every optimizer state tensor from the optimizers' source and their storages
as ``optimizer/states`` + ``optimizer/paged_states``, each layer's saves, the head region and the whole forward.
Modelled from this check (``Stack.rms_norm_fp32_scale``): torchtune's RMSNorm multiplies a trainable scale into
the fp32 normalized rows and casts after (``F.rms_norm(x.float(), weight=scale).to(x.dtype)``), so each norm saves
T x H x 4 B where LlamaRMSNorm saves a T x H x 2 B bf16 cast. Pinned, not modelled: the trainable head's input is 8
chunk copies (``chunked_output``, B > 1), the same bytes as the one tensor the trace saves; the trainable
embedding's int64 token ids.

That cache is resident device memory, ``buffers/rope_cache`` in the estimate (``Stack.rope_cache``):
one fp32 ``(max_seq_len, head_dim // 2, 2)`` table per model (``(max_seq_len, 2 x head_dim)`` for Qwen2/Phi-3),
built at the builder's ``max_seq_len``, not the training length: 64 MiB for Llama-3.1-8B, 128 MiB for Qwen2.5-7B
(``rope_caches``: five real-size builders' ``rope_init()`` run on CPU by the same script).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from framework_checks import assert_params_as_built

from vramplan.dtypes import BYTES, alloc
from vramplan.estimate.estimator import estimate
from vramplan.estimate.logits import loss_bytes, loss_code
from vramplan.estimate.optimizer import largest_gradient
from vramplan.estimate.states import model_states
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.interop.torchtune import read_torchtune
from vramplan.lora import LoraConfig
from vramplan.planner.planfile import normalize_plan_keys
from vramplan.setup import Setup, setup_from_options
from vramplan.shapes import spec_from_config
from vramplan.units import ceil_div

DATA = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "frameworks" / "results"
                   / "torchtune.json").read_text())
CASES = sorted(DATA["cases"])
SPEC = spec_from_config(DATA["config"], name="tiny-llama3.1")
B, S = DATA["batch"], DATA["seq"]
T = B * S
BSS = B * S * S
V = SPEC.vocab_size
#: CEWithChunkedOutputLoss() in the shipped configs: num_output_chunks=8 (modules/loss/ce_chunked_output_loss.py:30)
CHUNKS = 8
#: the shipped configs' LoRA targets as Hugging Face names: output_proj is o_proj, apply_lora_to_mlp w1/w2/w3
TARGETS = ("q_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj")
#: torchao 0.10.0 NF4Tensor's inner tensors, in the order vramplan's placement lists them (test_torchao_nf4.py)
NF4_PARTS = ("quantized_data", "quantized_scalers", "quantization_factor", "scaler_mean", "nf4")


def _setup(name: str) -> Setup:
    """The setup vramplan reads from the config the recipe ran (``vramplan check``'s path)."""
    r = read_torchtune(DATA["cases"][name]["recipe_config"], recipe="lora_finetune_single_device",
                       text="#   tune download meta-llama/Meta-Llama-3.1-8B-Instruct\n")  # the shipped usage line
    assert not r.ignored and not r.undecided
    return setup_from_options(normalize_plan_keys(r.setup_options(), "torchtune.json", 1, 1))


def _structure(name: str):
    s = _setup(name)
    return s, static_structure(SPEC, structural_setup(s))


def test_results_are_for_the_release_the_stack_cites():
    from vramplan.stacks import STACKS
    v = DATA["versions"]
    assert v["torchtune"].startswith("0.6.1") and STACKS["torchtune"].release == "torchtune 0.6.1"
    assert v["torch"].startswith("2.13.0") and v["torchao"] == "0.10.0"
    assert set(CASES) == {"lora-gc", "lora-nogc", "qlora-gc", "qlora-nogc"}
    for name in CASES:
        case = DATA["cases"][name]
        assert case["train_steps_run"] == 1, "recipe.train() ran its loop once"
        assert case["loss_fn"] == "CEWithChunkedOutputLoss" and case["logits_chunks"] == CHUNKS
        assert case["layers"] == (["CheckpointWrapper"] if case["setup"]["grad_ckpt"]
                                  else ["TransformerSelfAttentionLayer"])


@pytest.mark.parametrize("name", CASES)
def test_reader_gives_what_the_recipe_ran(name):
    case = DATA["cases"][name]
    c = case["setup"]
    s = _setup(name)
    assert s.stack == "torchtune" and s.method == c["method"]
    assert (s.lora.r, s.lora.alpha, s.lora.dropout) == (c["lora_rank"], c["lora_alpha"], c["lora_dropout"])
    assert set(s.lora.targets) == set(TARGETS)
    assert c["lora_attn_modules"] == ["q_proj", "v_proj", "output_proj"] and c["apply_lora_to_mlp"] is True
    assert s.grad_ckpt is c["grad_ckpt"] and (s.batch, s.seq) == (B, S)
    assert s.loss == "torchtune-chunked"
    assert s.optim == "adamw" and case["optimizer"] == "AdamW" and case["optimizer_fused"]
    assert s.precision == "bf16-true" and c["dtype"] == "bf16"
    assert s.quant == ("nf4" if c["method"] == "qlora" else "none")


@pytest.mark.parametrize("name", CASES)
def test_stack_defaults_are_what_torchtune_ran(name):
    """``--stack torchtune`` alone (targets, rank and alpha as the config): bf16 base and adapters, no autocast,
    nothing upcast (no PEFT), the chunked loss; checkpointing on, as the shipped 8B configs set it."""
    case = DATA["cases"][name]
    c = case["setup"]
    s = Setup.create(method=c["method"], stack="torchtune", batch=B, seq=S,
                     lora=LoraConfig(r=c["lora_rank"], alpha=c["lora_alpha"], targets=TARGETS))
    assert s.grad_ckpt is True is c["shipped_enable_activation_checkpointing"]
    assert s.precision == "bf16-true" and not s.autocast and s.kbit_prep is False
    assert s.loss == "torchtune-chunked" and s.lora.dropout == 0.0 == c["lora_dropout"]
    p = case["params"]
    assert {e["dtype"] for n, e in p.items() if ".lora_" in n} == {s.adapter_weight_dtype} == {"bf16"}
    assert {e["dtype"] for n, e in p.items() if ".lora_" not in n} == ({"nf4", "bf16"} if s.quantized else {"bf16"})
    assert case["loss_dtype"] == "fp32" and case["sdpa_cpu_flash"]


@pytest.mark.parametrize("name", CASES)
def test_parameters_as_built(name):
    """Every parameter the recipe built, by Hugging Face name: dtype (nf4 for an NF4Tensor), trainable, storage
    bytes; an NF4Tensor's five inner storages equal the placement's parts, in order. Exact."""
    measured = DATA["cases"][name]["params"]
    s, st = _structure(name)
    trainable = assert_params_as_built(measured, st)
    assert trainable == st.params_trainable == 59_392
    nf4 = {n: e for n, e in measured.items() if e["dtype"] == "nf4"}
    by_name = {p.tensor.name: p for p in st.placements}
    if s.quantized:
        # QLoRA: every decoder Linear, k_proj (FrozenNF4Linear) included; the head stays bf16 (lora_llama3_1)
        assert len(nf4) == 7 * SPEC.num_layers and measured["lm_head.weight"]["dtype"] == "bf16"
        for n, e in nf4.items():
            assert e["quant_state_dtype"] == s.compute_dtype
            assert [e["nf4_parts"][k] for k in NF4_PARTS] == [b for _, b in by_name[n].parts], n
    else:
        assert not nf4


@pytest.mark.parametrize("name", CASES)
def test_weight_and_adapter_components(name):
    """The estimate's weights/* and adapters/lora: the measured storages, each rounded as the CUDA caching allocator
    rounds it (512 B)."""
    measured = DATA["cases"][name]["params"]
    s, _ = _structure(name)
    comps = {c.name: c.bytes for c in estimate(SPEC, s).components}
    frozen = sum(sum(alloc(b) for b in e["nf4_parts"].values()) if e["dtype"] == "nf4" else alloc(e["bytes"])
                 for e in measured.values() if not e["trainable"])
    assert sum(b for k, b in comps.items() if k.startswith("weights/")) == frozen
    assert comps["adapters/lora"] == sum(alloc(e["bytes"]) for e in measured.values() if e["trainable"])


def _loss_saves() -> tuple[Counter, Counter]:
    """What CEWithChunkedOutputLoss saves: (modelled) each chunk's fp32 log-probs (``logits.float()`` ->
    ``log_softmax``), (pinned) each chunk's int64 labels and nll_loss's 0-dim fp32 total weight, and the 0-dim
    int64 ``total_elements`` its final division saves (torchtune 0.6.1 modules/loss/ce_chunked_output_loss.py:
    37-43, :66-83). ``labels.chunk(8, dim=1)[i].reshape(-1)`` copies at batch > 1 (a non-contiguous view)."""
    rows = ceil_div(S, CHUNKS)
    assert S % rows == 0, "the tiny case has equal chunks"
    logprobs = Counter({(B * rows * V * 4, "fp32"): S // rows})
    pinned = Counter({(4, "fp32"): S // rows, (8, "int64"): 1})
    pinned[(B * rows * 8, "int64")] += S // rows if B > 1 else 0
    return logprobs, pinned


def test_chunked_log_probs_are_the_loss_model():
    logprobs, _ = _loss_saves()
    lb = loss_bytes(T, V, SPEC.hidden_size, 2, 2, loss_code("torchtune-chunked"), False, seq=S)
    assert sum(alloc(n) * k for (n, _), k in logprobs.items()) == lb.saved == 65_536


def _head(st) -> Counter:
    logprobs, pinned = _loss_saves()
    return Counter((x.nbytes(T, BSS), x.dtype) for x in st.head.saved) + logprobs + pinned


@pytest.mark.parametrize("name", CASES)
def test_saved_per_layer_exact(name):
    """Without checkpointing each layer's saved storages as a multiset equal its trace; with it each layer keeps its
    input only (torchtune 0.6.1 training/memory.py:26-45 set_activation_checkpointing: torch's
    apply_activation_checkpointing, a CheckpointWrapper per TransformerSelfAttentionLayer, non-reentrant by
    default); the head region is the head trace + the loss's saves."""
    case = DATA["cases"][name]
    s, st = _structure(name)
    assert set(case["saved_per_layer"]) == {"-1", *map(str, range(SPEC.num_layers))}
    resid = T * SPEC.hidden_size * BYTES[st.resid_dtype]
    for i, tr in enumerate(st.layer_traces):
        got = Counter(tuple(x) for x in case["saved_per_layer"][str(i)])
        if s.grad_ckpt:
            want = Counter({(resid, st.resid_dtype): 1})
        else:
            want = Counter((x.nbytes(T, BSS), x.dtype) for x in tr.saved)
        assert got == want, (i, sorted((got - want).items()), sorted((want - got).items()))
    got = Counter(tuple(x) for x in case["saved_per_layer"]["-1"])
    assert got == _head(st), (sorted((got - _head(st)).items()), sorted((_head(st) - got).items()))
    if s.grad_ckpt:
        assert estimate(SPEC, s).component("activations/checkpoint_inputs") == SPEC.num_layers * alloc(resid)


@pytest.mark.parametrize("name", CASES)
def test_whole_forward_saved_bytes(name):
    """Every storage saved in the forward: the per-layer saves (or the checkpointed inputs), the head and loss, and
    outside every layer the recipe's ``current_num_tokens`` (recipes/lora_finetune_single_device.py:704 ``current_loss =
    self._loss_step(batch) * current_num_tokens``) and, without checkpointing, the RoPE cache buffer."""
    case = DATA["cases"][name]
    s, st = _structure(name)
    outside = Counter((n, d) for n, d, _ in case["saved_all"]["outside_layers"])
    want_outside = Counter({(8, "int64"): 1})
    if not s.grad_ckpt:
        n, d, shape = case["rope_cache"]
        head_dim = SPEC.hidden_size // SPEC.config["num_attention_heads"]
        assert (n, d, shape) == (S * head_dim * 4, "fp32", [S, head_dim // 2, 2])
        want_outside[(n, d)] += 1
    assert outside == want_outside
    if s.grad_ckpt:
        layers = Counter({(T * SPEC.hidden_size * BYTES[st.resid_dtype], st.resid_dtype): SPEC.num_layers})
    else:
        layers = Counter((x.nbytes(T, BSS), x.dtype) for tr in st.layer_traces for x in tr.saved)
    want = layers + _head(st) + outside
    assert case["saved_all"]["bytes"] == sum(n * k for (n, _), k in want.items())
    assert case["saved_all"]["count"] == sum(want.values())


@pytest.mark.parametrize("name", CASES)
def test_gradients(name):
    """One bf16 gradient per trainable adapter tensor (torchtune builds its adapters in the model's dtype):
    59,392 x 2 = 118,784 B, exact."""
    _, st = _structure(name)
    want: Counter = Counter()
    for t in st.trainables:
        if not t.frozen:
            want[t.dtype] += t.numel * BYTES[t.dtype]
    assert DATA["cases"][name]["grads"] == dict(want) == {"bf16": 118_784}


# ------------------------------------------------------------------ the resident RoPE cache (not modelled yet)
#: the rope classes whose cache is cat([cos, sin]) of cat([theta, theta]): (max_seq_len, 2 x dim) (torchtune 0.6.1
#: models/qwen2/_positional_embeddings.py:51-66, models/phi3/_position_embeddings.py); the others stack cos and sin
#: of (max_seq_len, dim // 2): (max_seq_len, dim // 2, 2) (modules/position_embeddings.py:56-67,
#: models/llama3_1/_position_embeddings.py:88-101)
_DOUBLED = ("Qwen2RotaryPositionalEmbeddings", "Phi3RotaryPositionalEmbeddings")


def _rope_cache_bytes(profile: str, cls: str) -> int:
    """First principles from the bundled profile: the builder's ``max_seq_len`` is the checkpoint's
    ``max_position_embeddings``, its rope ``dim`` the head dimension; fp32 (``theta`` is ``.float()``)."""
    from vramplan.profiles import resolve_model
    spec = resolve_model(profile).spec
    return spec.max_position_embeddings * spec.head_dim * 4 * (2 if cls in _DOUBLED else 1)


@pytest.mark.parametrize("builder", sorted(DATA["rope_caches"]))
def test_rope_cache_is_one_fp32_table_per_model(builder):
    """Each real-size builder registers one cos/sin table (a non-persistent buffer shared by every layer) on the
    device at init, fp32 under ``dtype: bf16``: 64 MiB for Llama-3.1-8B, 128 MiB for Qwen2.5-7B."""
    r = DATA["rope_caches"][builder]
    assert r["ropes"] == 1 and r["dtype"] == "fp32"
    assert r["bytes"] == _rope_cache_bytes(r["profile"], r["class"])


@pytest.mark.parametrize("name", CASES)
def test_estimate_counts_the_rope_cache(name):
    n, _, _ = DATA["cases"][name]["rope_cache"]
    comps = {c.name: c.bytes for c in estimate(SPEC, _setup(name)).components}
    assert [b for k, b in comps.items() if "rope" in k] == [alloc(n)]


@pytest.mark.parametrize("builder", sorted(DATA["rope_caches"]))
def test_estimate_counts_the_real_size_rope_cache(builder):
    """The real-size builders' measured tables are the estimate's ``buffers/rope_cache`` for their profiles."""
    from vramplan.profiles import resolve_model
    r = DATA["rope_caches"][builder]
    spec = resolve_model(r["profile"]).spec
    e = estimate(spec, Setup.create(method="lora", stack="torchtune", batch=1, seq=512))
    assert e.component("buffers/rope_cache") == alloc(r["bytes"])


# ---------------------------------------------------------------------------------- full fine-tuning
# torchtune 0.6.1 recipes/full_finetune_single_device.py (FullFinetuneRecipeSingleDevice) on the shipped
# llama3_1/8B_full_single_device.yaml, the same tiny llama3_1 (torchtune_step.py run_full, FULL_CASES)
FULL = sorted(DATA["full_cases"])
#: case -> (grad_ckpt, optimizer_in_bwd, vramplan's name of the optimizer the case ran)
FULL_RUN = {"full-gc-bwd": (True, True, "paged-adamw-8bit"), "full-nogc-bwd": (False, True, "paged-adamw-8bit"),
            "full-gc-nobwd": (True, False, "paged-adamw-8bit"), "full-nogc-nobwd": (False, False, "paged-adamw-8bit"),
            "full-gc-bwd-paged-adamw": (True, True, "paged-adamw"), "full-nogc-nobwd-adamw": (False, False, "adamw")}
#: the optimizer classes as the configs name them (bitsandbytes.optim.*, torch.optim.AdamW with fused: True)
FULL_CLASS = {"paged-adamw-8bit": "PagedAdamW8bit", "paged-adamw": "PagedAdamW", "adamw": "AdamW"}


def _full_setup(name: str) -> Setup:
    """The setup vramplan's torchtune reader gives for the config the full recipe ran (``vramplan check``'s path)."""
    r = read_torchtune(DATA["full_cases"][name]["recipe_config"], recipe="full_finetune_single_device",
                       text="#   tune download meta-llama/Meta-Llama-3.1-8B-Instruct\n")  # the shipped usage line
    assert not r.ignored and not r.undecided
    return setup_from_options(normalize_plan_keys(r.setup_options(), "torchtune.json", 1, 1))


def _full_structure(name: str):
    s = _full_setup(name)
    return s, static_structure(SPEC, structural_setup(s))


def test_full_cases_ran_as_the_shipped_config():
    """The shipped 8B full single-device config: bf16, ``optimizer_in_bwd: True``, checkpointing on,
    ``bitsandbytes.optim.PagedAdamW8bit`` (bitsandbytes 0.50.2: on CPU its paged buffers fall back to ordinary ones,
    optim/optimizer.py:374-382 get_state_buffer), ``CEWithChunkedOutputLoss``, batch 2, no clipping (which
    optimizer_in_bwd refuses: recipes/full_finetune_single_device.py:146-157). Each case's recipe.train() ran its
    loop once; with optimizer_in_bwd one optimizer per parameter (:468-473)."""
    assert set(FULL) == set(FULL_RUN)
    assert DATA["versions"]["bitsandbytes"] == "0.50.2"
    for name in FULL:
        case = DATA["full_cases"][name]
        c = case["setup"]
        sh = c["shipped"]
        assert sh["optimizer"]["_component_"] == "bitsandbytes.optim.PagedAdamW8bit" and sh["optimizer_in_bwd"] is True
        assert sh["enable_activation_checkpointing"] is True and sh["dtype"] == "bf16" and sh["batch_size"] == B
        assert sh["loss"]["_component_"].endswith("CEWithChunkedOutputLoss") and sh["clip_grad_norm"] is None
        assert sh["model"]["_component_"] == "torchtune.models.llama3_1.llama3_1_8b" and c["dtype"] == "bf16"
        gc, bwd, optim = FULL_RUN[name]
        assert (c["grad_ckpt"], c["optimizer_in_bwd"]) == (gc, bwd)
        assert case["optimizer"] == [FULL_CLASS[optim]] and case["optimizer_fused"] == [optim == "adamw"]
        assert case["optimizers"] == (len(case["params"]) if bwd else 1)
        assert case["train_steps_run"] == 1
        assert case["loss_fn"] == "CEWithChunkedOutputLoss" and case["logits_chunks"] == CHUNKS
        assert case["loss_dtype"] == "fp32" and case["sdpa_cpu_flash"]
        assert case["layers"] == (["CheckpointWrapper"] if gc else ["TransformerSelfAttentionLayer"])


@pytest.mark.parametrize("name", FULL)
def test_full_reader_gives_what_the_recipe_ran(name):
    case = DATA["full_cases"][name]
    s = _full_setup(name)
    gc, bwd, optim = FULL_RUN[name]
    assert s.stack == "torchtune" and s.method == "full" and s.lora is None
    assert (s.grad_ckpt, s.optim_in_bwd, s.optim) == (gc, bwd, optim)
    assert s.precision == "bf16-true" and not s.autocast and s.loss == "torchtune-chunked"
    assert (s.batch, s.seq) == (B, S) and s.gpus == 1
    assert case["recipe_config"]["optimizer_in_bwd"] is bwd


def test_full_stack_defaults_are_the_shipped_config():
    """``--stack torchtune --method full`` alone: bf16 without autocast, checkpointing and optimizer_in_bwd on, the
    chunked loss — what the shipped 8B full single-device config sets, and what most of the 17 configs that run
    ``full_finetune_single_device`` set (``full_configs``: every one bf16 with CEWithChunkedOutputLoss; 15
    checkpoint; 14 step in backward, each with a paged bitsandbytes AdamW). Its optimizer is the one most of them
    name: PagedAdamW (10; PagedAdamW8bit 5, fused torch AdamW 2)."""
    s = Setup.create(method="full", stack="torchtune", batch=B, seq=S)
    sh = DATA["full_cases"]["full-gc-bwd"]["setup"]["shipped"]
    assert s.grad_ckpt is sh["enable_activation_checkpointing"] is True
    assert s.optim_in_bwd is sh["optimizer_in_bwd"] is True
    assert s.precision == "bf16-true" and not s.autocast and s.loss == "torchtune-chunked"
    configs = DATA["full_configs"].values()
    assert len(configs) == 17 and "llama3_1/8B_full_single_device.yaml" in DATA["full_configs"]
    assert {c["dtype"] for c in configs} == {"bf16"}
    assert {c["loss"] for c in configs} == {"torchtune.modules.loss.CEWithChunkedOutputLoss"}
    assert sum(c["enable_activation_checkpointing"] is True for c in configs) == 15
    assert sum(c["optimizer_in_bwd"] is True for c in configs) == 14
    assert {c["optimizer"] for c in configs if c["optimizer_in_bwd"]} == {"bitsandbytes.optim.PagedAdamW",
                                                                           "bitsandbytes.optim.PagedAdamW8bit"}
    assert Counter((c["optimizer"], c["fused"]) for c in configs) == {
        ("bitsandbytes.optim.PagedAdamW", False): 10, ("bitsandbytes.optim.PagedAdamW8bit", False): 5,
        ("torch.optim.AdamW", True): 2}
    (most, _), = Counter(c["optimizer"] for c in configs).most_common(1)
    assert most == "bitsandbytes.optim.PagedAdamW" and s.optim == "paged-adamw"
    # bitsandbytes' PagedAdamW is 32-bit (optim_bits=32): vramplan's paged-adamw; a LoRA run keeps fused AdamW
    assert Setup.create(method="lora", stack="torchtune").optim == "adamw"


@pytest.mark.parametrize("name", FULL)
def test_full_parameters_as_built(name):
    """Every parameter bf16 and trainable (set_default_dtype(bf16), validate_expected_param_dtype): exact, and the
    estimate's weights/* are their storages, each rounded to 512 B."""
    measured = DATA["full_cases"][name]["params"]
    s, st = _full_structure(name)
    assert {e["dtype"] for e in measured.values()} == {"bf16"} and all(e["trainable"] for e in measured.values())
    assert assert_params_as_built(measured, st) == st.params_trainable == SPEC.params_total == 1_312_000
    comps = {c.name: c.bytes for c in estimate(SPEC, s).components}
    assert sum(b for k, b in comps.items() if k.startswith("weights/")) == sum(alloc(e["bytes"])
                                                                             for e in measured.values())


def _saved(saved) -> Counter:
    """A trace's saved storages by (bytes, dtype). torchtune's RMSNorm, ``F.rms_norm(x.float(), weight=self.scale,
    eps).to(x.dtype)`` (torchtune 0.6.1 modules/rms_norm.py:38-43), multiplies the bf16 scale into the fp32
    normalized rows (torch 2.13 runs the composite: fp32 input and bf16 weight "Cannot dispatch to fused
    implementation", aten layer_norm.cpp:346) and casts after, so a trainable scale's multiply saves the fp32
    normalized tensor (T x H x 4 B) where LlamaRMSNorm saves its bf16 cast: ``Stack.rms_norm_fp32_scale``, which the
    trace follows (measured here: the per-layer and head comparisons below)."""
    return Counter((x.nbytes(T, BSS), x.dtype) for x in saved)


def _full_head(st) -> Counter:
    """The head region: the head trace (torchtune's final norm, :func:`_saved`), its trainable
    output Linear's saved input as ``chunked_output`` makes it — ``self.output(chunk) for chunk in
    h.chunk(8, dim=1)`` (modules/transformer.py:498-501): a dim-1 chunk of (B, S, H) is not contiguous at B > 1,
    so ``F.linear`` folds each to 2-D with a copy that mm saves for the weight's gradient: 8 storages of T/8 rows,
    the same bytes as the one T x H bf16 tensor the trace saves (pinned: a count, not bytes) — and the loss's saves
    (:func:`_loss_saves`, as for LoRA)."""
    logprobs, pinned = _loss_saves()
    head = _saved(st.head.saved)
    head_in = [x for x in st.head.saved if x.label == "final norm output"]
    assert len(head_in) == 1 and head_in[0].saved_by == ["linear saves final norm output"]
    n = head_in[0].nbytes(T, BSS)
    assert B > 1 and n == T * SPEC.hidden_size * 2
    head[(n, "bf16")] -= 1
    head[(n // CHUNKS, "bf16")] += CHUNKS
    return +head + logprobs + pinned


@pytest.mark.parametrize("name", FULL)
def test_full_saved_per_layer_exact(name):
    """Without checkpointing each layer's saves equal its trace, torchtune's two RMSNorms saving fp32 normalized
    rows (:func:`_saved`); with it each layer keeps its bf16 input (set_activation_checkpointing, as for
    LoRA); the head region as :func:`_full_head`. The optimizer (in backward or not) changes no saved tensor."""
    case = DATA["full_cases"][name]
    s, st = _full_structure(name)
    assert set(case["saved_per_layer"]) == {"-1", *map(str, range(SPEC.num_layers))}
    resid = T * SPEC.hidden_size * BYTES[st.resid_dtype]
    assert st.resid_dtype == "bf16"
    for i, tr in enumerate(st.layer_traces):
        got = Counter(tuple(x) for x in case["saved_per_layer"][str(i)])
        want = Counter({(resid, "bf16"): 1}) if s.grad_ckpt else _saved(tr.saved)
        assert got == want, (i, sorted((got - want).items()), sorted((want - got).items()))
        if not s.grad_ckpt:   # torchtune's norms: two fp32 T x H normalized tensors per layer, none in bf16
            assert not any(x.label.endswith("normalized.to(bf16)") for x in tr.saved)
            assert want[(2 * resid, "fp32")] >= 2
    got = Counter(tuple(x) for x in case["saved_per_layer"]["-1"])
    assert got == _full_head(st), (sorted((got - _full_head(st)).items()), sorted((_full_head(st) - got).items()))
    if s.grad_ckpt and s.optim_in_bwd:   # its peak is in backward (layers), the checkpointed inputs all alive
        assert estimate(SPEC, s).component("activations/checkpoint_inputs") == SPEC.num_layers * alloc(resid)


@pytest.mark.parametrize("name", FULL)
def test_full_whole_forward_saved_bytes(name):
    """Every storage saved in the forward: the layers (or their checkpointed inputs), the head region, and outside
    every layer the recipe's 0-dim ``current_num_tokens`` (recipes/full_finetune_single_device.py:699), the
    trainable embedding's int64 token ids (``embedding`` saves its indices for the weight's gradient, torch
    derivatives.yaml; pinned, not modelled, as for axolotl's full fine-tuning) and, without checkpointing, the RoPE
    cache buffer."""
    case = DATA["full_cases"][name]
    s, st = _full_structure(name)
    outside = Counter((n, d) for n, d, _ in case["saved_all"]["outside_layers"])
    want_outside = Counter({(8, "int64"): 1, (T * 8, "int64"): 1})
    if not s.grad_ckpt:
        n, d, shape = case["rope_cache"]
        assert (n, d, shape) == (S * 64 * 4, "fp32", [S, 32, 2])
        want_outside[(n, d)] += 1
    assert outside == want_outside
    if s.grad_ckpt:
        layers = Counter({(T * SPEC.hidden_size * 2, "bf16"): SPEC.num_layers})
    else:
        layers = sum((_saved(tr.saved) for tr in st.layer_traces), Counter())
    want = layers + _full_head(st) + outside
    assert case["saved_all"]["bytes"] == sum(n * k for (n, _), k in want.items())
    assert case["saved_all"]["count"] == sum(want.values())


@pytest.mark.parametrize("name", FULL)
def test_full_gradients(name):
    """Without optimizer_in_bwd: one bf16 gradient per parameter after backward, 1,312,000 x 2 B, the estimate's
    gradients. With it: none left (training/memory.py:236-238 optim_step: step() then zero_grad(), set_to_none),
    one step per parameter, and at each step only that parameter's gradient alive — the most at once is the largest
    parameter's (w1/w2/w3, 131,072 x 2 B): the estimate's gradients/trainable in ``backward (layers)``."""
    case = DATA["full_cases"][name]
    s, st = _full_structure(name)
    ms = model_states(SPEC, structural_setup(s))
    total = sum(e["bytes"] for e in case["params"].values())
    assert ms.grads == total == 2_624_000
    e = estimate(SPEC, s)
    if s.optim_in_bwd:
        assert case["grads"] == {}
        assert case["in_bwd_steps"] == len(case["params"]) and case["in_bwd_only_own_grad"]
        biggest = max(p["bytes"] for p in case["params"].values())
        assert case["in_bwd_grad_alive_max"] == biggest == largest_gradient(st.trainables) == 262_144
        assert e.component("gradients/trainable") == alloc(biggest)
    else:
        assert case["grads"] == {"bf16": total} and case["in_bwd_steps"] == 0
        assert e.component("gradients/trainable") == sum(alloc(p["bytes"]) for p in case["params"].values())


def _first_principles_states(optim: str, numel: int, shape: list[int]) -> dict[str, list]:
    """One bf16 parameter's optimizer state tensors, from the optimizers' source: bitsandbytes 0.50.2
    optim/optimizer.py:492-533 Optimizer2State.init_state (8-bit: uint8 state1/state2 shaped as the parameter, fp32
    absmax1/absmax2 per 256-value block, the optimizer's fp32 256-entry qmap1/qmap2; below min_8bit_size 4096
    elements, and always for the 32-bit PagedAdamW, two fp32 states); torch 2.13 optim/adam.py:165-185 _init_group
    (exp_avg/exp_avg_sq in the parameter's dtype, fused: a 0-dim fp32 ``step`` on the parameter's device)."""
    if optim == "adamw":
        return {"exp_avg": [numel * 2, "bf16", shape], "exp_avg_sq": [numel * 2, "bf16", shape], "step": [4, "fp32", []]}
    if optim == "paged-adamw" or numel < 4096:
        return {"state1": [numel * 4, "fp32", shape], "state2": [numel * 4, "fp32", shape]}
    blocks = ceil_div(numel, 256)
    return {"state1": [numel, "uint8", shape], "state2": [numel, "uint8", shape],
            "absmax1": [blocks * 4, "fp32", [blocks]], "absmax2": [blocks * 4, "fp32", [blocks]],
            "qmap1": [256 * 4, "fp32", [256]], "qmap2": [256 * 4, "fp32", [256]]}


@pytest.mark.parametrize("name", FULL)
def test_full_optimizer_states(name):
    """After one step every parameter's state tensors are what the optimizer's source says (exact), and their
    distinct storages are the estimate's optimizer/states + optimizer/paged_states: on a GPU bitsandbytes pages
    (cudaMallocManaged, outside the torch allocator) the state1/state2 of tensors with at least 1e5 elements
    (get_state_buffer, :383-390; unpaged on this CPU), the rest are allocator blocks of 512 B. The quantization maps
    are one pair per optimizer instance (``self.name2qmap``, :134, :510-519): one pair in all without
    optimizer_in_bwd, a pair per 8-bit parameter with it (one optimizer each)."""
    case = DATA["full_cases"][name]
    s, _ = _full_structure(name)
    opt = case["optimizer_states"]
    assert set(opt["per_param"]) == set(case["params"])
    for n, p in case["params"].items():
        assert opt["per_param"][n] == _first_principles_states(s.optim, p["numel"], opt["per_param"][n]
                                                                ["state1" if s.optim != "adamw" else "exp_avg"][2]), n
    eight_bit = sum(1 for p in case["params"].values() if p["numel"] >= 4096) if s.optim == "paged-adamw-8bit" else 0
    qmaps = [[b, d, k, c] for b, d, k, c in opt["storages"] if k.startswith("qmap")]
    assert sorted(qmaps) == ([] if not eight_bit else
                             [[1024, "fp32", "qmap1", eight_bit if s.optim_in_bwd else 1],
                              [1024, "fp32", "qmap2", eight_bit if s.optim_in_bwd else 1]])
    paged = gpu = raw = 0
    for n, states in opt["per_param"].items():
        for k, (b, _, _) in states.items():
            if k.startswith("qmap"):
                continue
            raw += b
            if s.optim.startswith("paged") and k in ("state1", "state2") and case["params"][n]["numel"] >= 100_000:
                paged += b
            else:
                gpu += alloc(b)
    gpu += sum(alloc(b) * c for b, _, _, c in qmaps)
    assert opt["bytes"] == raw + sum(b * c for b, _, _, c in qmaps), "every other state tensor has its own storage"
    ms = model_states(SPEC, structural_setup(s))
    assert (ms.opt_gpu, ms.opt_paged) == (gpu, paged)
    comps = {c.name: c.bytes for c in estimate(SPEC, s).components}
    assert comps["optimizer/states"] == gpu and comps.get("optimizer/paged_states", 0) == paged
