"""Properties every estimate must have, over random setups of a handful of bundled models (hypothesis).

* more batch, sequence or LoRA rank never lowers ``peak_allocated_bytes``;
* gradient checkpointing never raises it by more than one hidden-state tensor: at the end of the backward
  the checkpoint still holds layer 0's input (the embedding output), which without checkpointing is freed
  after the forward unless the first norm saved it — so a gradient-dominated peak (full fine-tuning at
  short sequences) can be one ``tokens x hidden`` tensor higher;
* QLoRA never needs more weight memory (the ``weights/*`` group) than LoRA with the same dtypes — that is,
  without ``prepare_model_for_kbit_training``, which upcasts every non-quantized parameter to fp32 and so
  can cost more than 4-bit saves (gpt2: its Conv1D layers are not ``nn.Linear``, nothing is quantized);
* inference never needs more than training the same model at the same batch, sequence and precision without
  checkpointing (with it, training keeps one hidden state per layer while the inference KV cache keeps K and
  V per layer — twice a hidden state for an MHA model: Phi-3 at 2 x 512 tokens, eager, needs 384 MiB of
  cache against 192 MiB of checkpointed inputs, and inference comes out 74 KB above a rank-1 LoRA step);
* every component is a non-negative ``int``, the components counted by the allocator sum exactly to
  ``peak_allocated_bytes``, and ``peak_allocated <= peak_reserved <= device_used``.
"""

from __future__ import annotations

from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vramplan.dtypes import alloc
from vramplan.estimate.estimator import estimate
from vramplan.lora import LoraConfig
from vramplan.profiles import resolve_model
from vramplan.setup import Setup

MODELS = ("llama-3-8b", "qwen3-14b", "gemma-2-2b", "phi-3-mini-4k", "mixtral-8x7b", "gpt2")
#: a non-default, attention-only target list per model (mixtral has no usable PEFT default: see lora.py)
ATTN_TARGETS = {"gpt2": ("c_attn",), "phi-3-mini-4k": ("qkv_proj", "o_proj")}
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@cache
def spec(name: str):
    return resolve_model(name).spec


@st.composite
def setups(draw, methods=("lora", "qlora", "full")) -> tuple[str, dict]:
    model = draw(st.sampled_from(MODELS))
    method = draw(st.sampled_from(methods))
    kw: dict = {
        "method": method,
        "precision": draw(st.sampled_from(("bf16-mixed", "bf16-true", "fp16-mixed"))),
        "batch": draw(st.integers(1, 8)),
        "seq": draw(st.sampled_from((128, 256, 512, 1000, 2048, 4096))),
        "grad_ckpt": draw(st.booleans()),
        "attn": draw(st.sampled_from(("sdpa", "eager"))),
        "optim": draw(st.sampled_from(("adamw", "adamw-8bit", "paged-adamw-8bit", "sgd"))),
    }
    if method in ("lora", "qlora"):
        targets = draw(st.sampled_from((("all-linear",), ATTN_TARGETS.get(model, ("q_proj", "v_proj")))))
        kw["lora"] = LoraConfig(r=draw(st.sampled_from((1, 4, 8, 16, 64, 128))), alpha=16, targets=targets)
    return model, kw


def run(model: str, **kw):
    return estimate(spec(model), Setup.create(**kw))


@SETTINGS
@given(setups(), st.sampled_from(("batch", "seq", "rank")), st.integers(1, 4))
def test_more_batch_seq_or_rank_never_lowers_the_peak(case, knob, factor):
    model, kw = case
    if knob == "rank" and "lora" not in kw:
        knob = "batch"
    bigger = dict(kw)
    if knob == "rank":
        lc = kw["lora"]
        bigger["lora"] = LoraConfig(r=lc.r * (factor + 1), alpha=lc.alpha, targets=lc.targets)
    else:
        bigger[knob] = kw[knob] * (factor + 1)
    small, large = run(model, **kw), run(model, **bigger)
    assert large.peak_allocated_bytes >= small.peak_allocated_bytes, (
        f"{model} {knob} x{factor + 1}: {small.peak_allocated_bytes:,} -> {large.peak_allocated_bytes:,} B "
        f"({small.peak_phase} -> {large.peak_phase})")


@SETTINGS
@given(setups())
def test_checkpointing_never_raises_the_peak(case):
    model, kw = case
    on, off = run(model, **dict(kw, grad_ckpt=True)), run(model, **dict(kw, grad_ckpt=False))
    sp = spec(model)
    resid = 4 * kw["batch"] * kw["seq"] * sp.hidden_size      # one hidden state (fp32 at most)
    # At the end of backward the checkpoint still holds layer 0's input, and the recomputed layer runs without
    # the DynamicCache (GradientCheckpointingLayer drops it): on fused-qkv models (phi3) its saved q/k/v views
    # keep the whole fused projection alive where the cached forward saved smaller k/v copies — at most one
    # more fused-qkv output (T × (h + 2·kv·d), 16-bit) than the layer saves without checkpointing.
    qkv = 2 * kw["batch"] * kw["seq"] * (sp.num_heads + 2 * sp.num_kv_heads) * sp.head_dim
    slack = alloc(resid) + alloc(qkv)
    assert on.peak_allocated_bytes <= off.peak_allocated_bytes + slack, (
        f"{model}: checkpointing {on.peak_allocated_bytes:,} B ({on.peak_phase}) > without "
        f"{off.peak_allocated_bytes:,} B ({off.peak_phase}) + layer 0's kept input and one fused q/k/v output "
        f"({slack:,} B)")


@SETTINGS
@given(setups(methods=("lora",)), st.sampled_from(("nf4", "fp4", "int8")), st.booleans())
def test_qlora_never_needs_more_weight_memory_than_lora(case, quant, double_quant):
    model, kw = case
    lora = run(model, **kw)
    qlora = run(model, **dict(kw, method="qlora", quant=quant, double_quant=double_quant, kbit_prep=False))
    assert qlora.group_bytes("weights") <= lora.group_bytes("weights"), (
        f"{model} {quant}: weights {qlora.group_bytes('weights'):,} B quantized > {lora.group_bytes('weights'):,} B")


@SETTINGS
@given(setups(methods=("lora", "full")))
def test_inference_never_needs_more_than_training(case):
    model, kw = case
    train = run(model, **dict(kw, grad_ckpt=False))
    infer = run(model, method="inference", precision=kw["precision"], batch=kw["batch"], seq=kw["seq"],
                attn=kw["attn"])
    assert infer.peak_allocated_bytes <= train.peak_allocated_bytes, (
        f"{model}: inference {infer.peak_allocated_bytes:,} B > {kw['method']} training "
        f"{train.peak_allocated_bytes:,} B")


@SETTINGS
@given(setups(methods=("lora", "qlora", "full", "inference")))
def test_components_are_consistent_with_the_counters(case):
    model, kw = case
    if kw["method"] == "inference":
        kw = {k: v for k, v in kw.items() if k in ("method", "precision", "batch", "seq", "attn")}
    e = run(model, **kw)
    for c in e.components:
        assert isinstance(c.bytes, int) and not isinstance(c.bytes, bool), f"{c.name}: {c.bytes!r} is not an int"
        assert c.bytes >= 0, f"{c.name} is negative: {c.bytes:,} B"
        assert c.counter in ("allocated", "reserved", "device"), f"{c.name}: counter {c.counter!r}"
    allocated = sum(c.bytes for c in e.components if c.counter == "allocated")
    assert allocated == e.peak_allocated_bytes, (
        f"allocated components sum to {allocated:,} B, peak_allocated_bytes is {e.peak_allocated_bytes:,} B")
    assert e.peak_allocated_bytes <= e.peak_reserved_bytes <= e.device_used_bytes
