"""``--stack trl`` against TRL's real SFTTrainer step on CPU (issue 14 § 4).

``benchmarks/frameworks/results/trl.json`` was measured by ``benchmarks/frameworks/trl_step.py`` in a private venv
(trl 1.16.0, transformers 5.24.0, peft 0.21.2, accelerate 1.16.0, bitsandbytes 0.50.2, torch 2.13.0 CPU): the tiny
Llama of ``tests/estimate/test_activations_vs_torch.py`` (2 layers, hidden 64, vocab 128; batch 2 × 32 tokens;
LoRA r = alpha = 4 on all linear layers) through ``SFTTrainer(model=<folder>, args=SFTConfig(...),
peft_config=LoraConfig(...))`` — TRL's own load, PEFT wrap, QLoRA cast to bf16, its default checkpointing and its
fused LM head — and one ``training_step`` inside ``trainer.train()``, measured as ``test_activations_vs_torch.py``
measures (saved storages per decoder layer, over the whole forward, live CPU bytes, gradients).

Cases: ``lora``/``qlora`` × ``bf16`` (``model_init_kwargs={"dtype": "bfloat16"}``, TRL's documented recipe) or
``fp32load`` (no ``dtype``: TRL's own default, float32: trl 1.16.0 trainer/utils.py:1332
``create_model_from_path``) × ``gc`` (TRL's default ``gradient_checkpointing=True``, not passed) or ``nogc``.
The ``fp32load`` cases are planned with ``frozen_dtype="fp32"`` and the ``bf16`` ones with ``"compute"``, given
explicitly (``test_trl_default_load_is_float32``: what TRL does when ``dtype`` is not given).

This test imports no framework: it compares the committed measurement with vramplan's estimate.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from vramplan.dtypes import BYTES, alloc
from vramplan.estimate.estimator import estimate
from vramplan.estimate.logits import TRL, loss_bytes
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.lora import LoraConfig
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config
from vramplan.stacks import STACKS

RESULTS = pathlib.Path(__file__).parents[2] / "benchmarks" / "frameworks" / "results" / "trl.json"
DATA = json.loads(RESULTS.read_text())
CASES = sorted(DATA["cases"])
B, S, R = DATA["batch"], DATA["seq"], DATA["rank"]
T, BSS = B * S, B * S * S
N = B * (S - 1)                 # the label positions the fused head scores (every one valid here)
SPEC = spec_from_config(DATA["config"], name="tiny-llama")
H, V = SPEC.hidden_size, SPEC.vocab_size
#: trl 1.16.0 kernels/chunked_logprob.py:347 mm_buf (min(N, 4096) x chunk_size) and trainer/utils.py:1506
TILE_COLS = 32768


def _setup(case: str) -> Setup:
    method, load, gc = case.split("-")
    kw = dict(method=method, stack="trl", lora=LoraConfig(r=R, alpha=R, targets=("all-linear",)), batch=B, seq=S)
    if gc == "nogc":
        kw["grad_ckpt"] = False          # gc: the stack's own default
    # TRL's float32 load of the frozen base, or the bfloat16 one model_init_kwargs asks for
    kw["frozen_dtype"] = "fp32" if load == "fp32load" else "compute"
    return Setup.create(**kw)


def _structure(case: str):
    s = _setup(case)
    return s, static_structure(SPEC, structural_setup(s))


def test_measured_at_the_release_the_stack_cites():
    assert DATA["versions"]["trl"] == STACKS["trl"].release.split()[-1] == "1.16.0"
    assert (DATA["batch"], DATA["seq"], DATA["rank"]) == (2, 32, 4)


@pytest.mark.parametrize("case", CASES)
def test_trainer_setup_matches_the_stack_defaults(case):
    """What SFTTrainer decided, against the trl stack's defaults: checkpointing on unless turned off
    (base_config.py:62-67, enabled by Trainer.train, non-reentrant), bf16 autocast (base_config.py:69-76,
    :112: bf16 = not fp16), the fused head running (its torch path on this CPU)."""
    c, s = DATA["cases"][case], _setup(case)
    assert c["gradient_checkpointing"] is s.grad_ckpt is case.endswith("-gc")
    assert c["args"]["bf16"] is True and c["native_amp"] is True and c["mixed_precision"] == "bf16"
    assert s.precision == "bf16-mixed" and s.autocast
    assert s.loss == "trl-fused" and c["fused_lm_head_triton"] is False
    assert c["loss_dtype"] == "fp32"
    assert c["inputs"]["input_ids"] == [[B, S], "int64"]


@pytest.mark.parametrize("case", CASES)
def test_parameter_dtypes_and_trainable_counts_exact(case):
    """Every parameter's dtype and trainability, by name: PEFT's fp32 adapters on LoRA (autocast_adapter_dtype),
    bf16 adapters on QLoRA (sft_trainer.py:902-911), no kbit preparation (norms, embeddings and head stay in the
    load dtype), nf4 storage bytes of every quantized Linear."""
    c = DATA["cases"][case]
    s, st = _structure(case)
    placed = {p.tensor.name: p for p in st.placements}
    adapters = {a.name: a for a in st.adapters}
    assert set(c["params"]) == set(placed) | set(adapters)
    for name, p in c["params"].items():
        if name in adapters:
            a = adapters[name]
            assert (p["dtype"], p["trainable"], p["numel"]) == (a.dtype, True, a.numel), name
        else:
            q = placed[name]
            assert (p["dtype"], p["trainable"]) == (q.dtype, q.trainable), name
            if q.quant == "nf4":
                assert p["bytes"] == dict(q.parts)["weights/quantized"], name
            else:
                assert p["bytes"] == q.numel * BYTES[q.dtype], name
    trainable = sum(p["numel"] for p in c["params"].values() if p["trainable"])
    assert trainable == st.params_trainable == 8960
    assert {p["dtype"] for n, p in c["params"].items() if p["trainable"]} == \
        {"bf16" if s.quantized else "fp32"} == {s.adapter_weight_dtype}


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("qlora")])
def test_quant_state_dtype(case):
    """bitsandbytes QuantState.dtype is the dtype the base was loaded in: bf16 with dtype=bfloat16 (vramplan's
    quant_state_dtype 'compute'); float32 under TRL's default load, which vramplan's --quant-state-dtype cannot
    state (compute or fp16): each dequantization then returns an fp32 weight that autocast casts to bf16, a
    transient the CPU peaks below cannot isolate (the fused head's tile dominates them)."""
    c = DATA["cases"][case]
    got = {p["quant_state_dtype"] for p in c["params"].values() if p["dtype"] == "nf4"}
    s = _setup(case)
    if "-bf16-" in case:
        assert got == {s.compute_dtype} and s.quant_state_dtype == "compute"
    else:
        assert got == {"fp32"}
        assert "fp32" not in {"compute", "fp16"}     # the option's choices: not representable today


@pytest.mark.parametrize("case", CASES)
def test_saved_activations_per_layer_exact(case):
    """Per decoder layer, the un-rounded bytes and the number of saved storages: without checkpointing the whole
    layer trace; with TRL's checkpointing the layer input only (the residual stream's dtype: bf16, or fp32 under
    the float32 load), and ``activations/checkpoint_inputs`` is their 512-B-rounded sum."""
    c = DATA["cases"][case]
    s, st = _structure(case)
    resid = T * H * BYTES[st.resid_dtype]
    for i, tr in enumerate(st.layer_traces):
        got = c["saved_per_layer"][str(i)]
        if s.grad_ckpt:
            assert got == [[resid, st.resid_dtype]], f"layer {i}: {got}"
        else:
            est = [s_.nbytes(T, BSS) for s_ in tr.saved]
            assert (sum(n for n, _ in got), len(got)) == (sum(est), len(est)), f"layer {i}"
            assert sum(alloc(n) for n, _ in got) == sum(alloc(n) for n in est)
    if s.grad_ckpt:
        e = estimate(SPEC, s)
        assert e.component("activations/checkpoint_inputs") == SPEC.num_layers * alloc(resid)


def _loss_saved_first_principles(hidden_bytes: int = 2) -> int:
    """What TRL's fused head saves (chunked_logprob.py:386; logits.py loss_bytes, TRL): int64 targets, fp32 log_z
    and entropy, the bool label mask, the compacted hidden states (N x H in the residual dtype); un-rounded."""
    return 8 * N + 4 * N + 4 * N + N + N * H * hidden_bytes


def _head_saved(st) -> list:
    """The head trace's saves that the fused head leaves (activations.py: only the final norm's; the matmul runs
    inside ChunkedLogProbFunction, which saves the weight by reference)."""
    return [x for x in st.head.saved if x.category == "norms"]


def test_loss_saved_is_the_documented_set():
    lb = loss_bytes(T, V, H, 2, 2, TRL, False, True, 2, 2, False, seq=S)
    assert lb.saved == alloc(8 * N) + 2 * alloc(4 * N) + alloc(N) + alloc(N * H * 2)


@pytest.mark.parametrize("case", CASES)
def test_whole_forward_saved_bytes_with_the_pinned_difference(case):
    """Every storage autograd saved over the forward against the estimate's layers + head trace + loss saves.
    The difference is pinned, each term explained:

    * ``+ N + 12``: the second bool mask (``masked_fill(~mask)`` of the entropy output, utils.py:1660), the int64
      ``num_tokens`` and fp32 scalar of the loss division (not modelled, small);
    * without checkpointing, ``+ 2·S·head_dim·b``: the rotary cos/sin, made once outside every layer and saved
      (not modelled: O(seq));

    The estimate counts ``ChunkedLogProbFunction``'s saved ``hidden`` (chunked_logprob.py:386, the copy
    ``hidden_states.reshape`` (CPU) or ``hidden_states[mask]`` (CUDA) makes, trainer/utils.py:1640-1654) and no
    bf16 copy of an fp32 ``lm_head`` weight (the fused head casts weight tiles inside its Function,
    chunked_logprob.py:354-356, and saves the fp32 weight by reference).
    """
    c = DATA["cases"][case]
    s, st = _structure(case)
    rb = BYTES[st.resid_dtype]
    layers = (SPEC.num_layers * T * H * rb if s.grad_ckpt
              else sum(x.nbytes(T, BSS) for tr in st.layer_traces for x in tr.saved))
    head = sum(x.nbytes(T, BSS) for x in _head_saved(st))
    estimated = layers + head + _loss_saved_first_principles(rb)
    head_dim = H // DATA["config"]["num_attention_heads"]
    diff = N + 12
    if not s.grad_ckpt:
        diff += 2 * S * head_dim * rb
    assert c["saved_all"]["bytes"] - estimated == diff, (c["saved_all"]["bytes"], estimated)
    # the head region's saved storages, one by one (the fused head's own set)
    got = sorted(c["saved_per_layer"]["-1"], reverse=True)
    expect = [[N * H * rb, st.resid_dtype], [8 * N, "int64"], [4 * N, "fp32"], [4 * N, "fp32"], [N, "bool"],
              [N, "bool"], [8, "int64"], [4, "fp32"], [T * 4, "fp32"]]    # ... and the final norm's rsqrt
    if rb == 2:     # the final norm's hidden.to(fp32), made in the head region (fp32 load: the layer's output)
        expect.append([T * H * 4, "fp32"])
    assert got == sorted(expect, reverse=True)


@pytest.mark.parametrize("case", CASES)
def test_gradient_bytes(case):
    """Only the adapters get gradients, in their own dtype: fp32 on LoRA, bf16 on QLoRA (TRL's cast)."""
    c = DATA["cases"][case]
    s, st = _structure(case)
    want: dict[str, int] = {}
    for a in st.trainables:
        want[a.dtype] = want.get(a.dtype, 0) + a.numel * BYTES[a.dtype]
    assert c["grads"] == want == {("bf16" if s.quantized else "fp32"): 8960 * (2 if s.quantized else 4)}


# The loss path's peak: measured live CPU bytes above the step's start (un-rounded) against the estimate's terms
# for the same moment (512-B rounded). CPU runs the fused head's torch fold (chunked_logprob.py:211-293), whose
# fp32 temporaries are N × (tile columns) each — here N × V, since V < 32,768 — where CUDA's Triton kernels
# fold in registers: the excess is bounded by them. The tile buffer itself, min(N, 4096) × 32,768 bf16 (4 MiB),
# dominates both peaks and is what the bounds test.
CPU_TILE = N * min(V, TILE_COLS) * 4
CPU_BOOL_TILE = N * min(V, TILE_COLS)


def _moment_terms(case: str) -> tuple[int, int]:
    """(forward, backward) of the estimate at the fused head: the saved activations (layers, head, loss) plus the
    loss's forward or backward temporaries (timeline.phase_peaks, less the weights, states and buffers)."""
    s, st = _structure(case)
    rb = BYTES[st.resid_dtype]
    acts = (SPEC.num_layers * alloc(T * H * rb) if s.grad_ckpt
            else sum(tr.saved_at(T, BSS) for tr in st.layer_traces))
    head = sum(alloc(x.nbytes(T, BSS)) for x in _head_saved(st))
    lb = loss_bytes(T, V, H, BYTES[st.logits_dtype], BYTES[s.compute_dtype], TRL, False, s.autocast, rb, rb
                    if st.resid_dtype == "bf16" else 4, False, seq=S)
    base = acts + head + lb.saved
    return base + lb.forward_tmp, base + lb.backward_tmp


@pytest.mark.parametrize("case", CASES)
def test_fused_head_peaks_within_the_cpu_fold_temporaries(case):
    c = DATA["cases"][case]
    fwd_est, bwd_est = _moment_terms(case)
    fwd = c["peaks"]["forward_peak"]
    bwd = c["peaks"]["forward_end"] + c["peaks"]["backward_peak"]
    tile = min(N, 4096) * TILE_COLS * 2
    assert fwd > tile and bwd > tile
    # forward: _forward_tile keeps at most four fp32 tiles and two bool tiles at once (z, the masked copy or e,
    # e * z) and small fp32 vectors (T·H·4 covers them); backward: _backward_tile at most eight fp32 tiles and one
    # bool tile (y, z, log_p, p, grad, is_target.float(), the difference, the product)
    assert 0 <= fwd - fwd_est <= 4 * CPU_TILE + 2 * CPU_BOOL_TILE + T * H * 4, (fwd, fwd_est)
    assert 0 <= bwd - bwd_est <= 8 * CPU_TILE + CPU_BOOL_TILE + T * H * 4, (bwd, bwd_est)


def test_trl_default_load_is_float32():
    """TRL's float32 load (no ``dtype`` given: trl 1.16.0 trainer/utils.py:1332, the SFTTrainer docstring
    sft_trainer.py:541-547; ``trl sft``'s ModelConfig.dtype defaults to "float32", trainer/model_config.py:89-95,
    scripts/sft.py:76-84) against bfloat16: twice the frozen base, an fp32 residual stream, fp32 layer inputs
    under checkpointing, QLoRA's quant state in fp32 — what ``frozen_dtype='fp32'`` plans (all but the quant
    state), the same storages one by one as the tests above show."""
    lo, hi = DATA["cases"]["lora-bf16-gc"], DATA["cases"]["lora-fp32load-gc"]
    frozen = [n for n, p in lo["params"].items() if not p["trainable"]]
    assert sum(hi["params"][n]["bytes"] for n in frozen) == 2 * sum(lo["params"][n]["bytes"] for n in frozen)
    assert hi["saved_per_layer"]["0"] == [[T * H * 4, "fp32"]] and lo["saved_per_layer"]["0"] == [[T * H * 2, "bf16"]]
    assert hi["model_dtype_arg"] is None and lo["model_dtype_arg"] == "bfloat16"
    q = DATA["cases"]["qlora-fp32load-gc"]["params"]
    assert {p["dtype"] for p in q.values() if not p["trainable"]} == {"nf4", "fp32"}
