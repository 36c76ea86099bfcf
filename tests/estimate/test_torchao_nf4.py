"""torchtune QLoRA's nf4 weights are torchao ``NF4Tensor`` s (issue 14): their stored bytes, what ``linear_nf4`` saves
and dequantizes, and the torchtune stack's estimate built from them.

The pinned numbers were measured on CPU with torch 2.13.0, torchtune 0.6.1 and torchao 0.10.0 (the same with
torchao 0.17.0, the newest release that still has ``torchao.dtypes.nf4tensor``) by
``benchmarks/frameworks/torchtune_nf4.py``: storages from ``untyped_storage().nbytes()`` of each inner tensor, peaks
from ``torch.profiler`` allocator events (``profile_memory=True``) summed in time order. The reproductions at the
end run the real torchao/torchtune and skip when they are not installed (CI installs neither).
"""

from __future__ import annotations

import pytest

from vramplan.dtypes import alloc, bnb_4bit_parts, torchao_nf4_dequant_bytes, torchao_nf4_parts
from vramplan.errors import SetupError
from vramplan.estimate.estimator import estimate
from vramplan.estimate.graph import Tracer, tok
from vramplan.estimate.layers import Program, build_layers
from vramplan.estimate.structure import static_structure, structural_setup, trace_layer
from vramplan.estimate.weights import nf4_kernel, place_weights
from vramplan.lora import LoraConfig, plan_lora
from vramplan.profiles import resolve_model
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

#: to_nf4(torch.randn(out, in, dtype)) inner storages, bytes (benchmarks/frameworks/torchtune_nf4.py, torchao 0.10.0)
MEASURED_STORAGE = {
    ((4096, 4096), "bf16"): {"quantized_data": 8388608, "quantized_scalers": 262144, "quantization_factor": 2048,
                             "scaler_mean": 2, "nf4": 32},
    ((4096, 4096), "fp32"): {"quantized_data": 8388608, "quantized_scalers": 262144, "quantization_factor": 4096,
                             "scaler_mean": 4, "nf4": 64},
    ((14336, 4096), "bf16"): {"quantized_data": 29360128, "quantized_scalers": 917504, "quantization_factor": 7168,
                              "scaler_mean": 2, "nf4": 32},
    ((1024, 4096), "bf16"): {"quantized_data": 2097152, "quantized_scalers": 65536, "quantization_factor": 512,
                             "scaler_mean": 2, "nf4": 32},
    ((128, 256), "fp32"): {"quantized_data": 16384, "quantized_scalers": 512, "quantization_factor": 8,
                           "scaler_mean": 4, "nf4": 64},
    ((512, 1024), "bf16"): {"quantized_data": 262144, "quantized_scalers": 8192, "quantization_factor": 64,
                            "scaler_mean": 2, "nf4": 32},
}
#: peak live CPU bytes of NF4Tensor.to(torch.bfloat16) on a bf16-quantized (out, in) weight (same script)
MEASURED_DEQUANT_PEAK = {(1024, 4096): 58851328, (128, 256): 459776, (512, 1024): 7356416}
#: LoRALinear(1024, 512, rank=8, alpha=16, quantize_base=True), bf16, x (64, 1024) requiring grad: what its forward
#: saves besides the NF4 weight, x itself and the two adapter weights — lora_a's output, 64 x 8 x 2 B
MEASURED_LORA_LINEAR_SAVED_NEW = 1024

H, I_DIM = 512, 1024
TINY = dict(model_type="llama", hidden_size=H, intermediate_size=I_DIM, num_attention_heads=8, num_key_value_heads=4,
            head_dim=64, num_hidden_layers=2, vocab_size=512, max_position_embeddings=256, tie_word_embeddings=False,
            hidden_act="silu")


def _setup(stack: str = "torchtune", **kw) -> Setup:
    s = Setup(**{"method": "qlora", "quant": "nf4", "precision": "bf16-true", "kbit_prep": False, "stack": stack,
                 "lora": LoraConfig(r=8, alpha=16, targets=("q_proj", "v_proj")), "batch": 1, "seq": 64,
                 "grad_ckpt": False, **kw})
    s.validate()
    return s


@pytest.mark.parametrize("shape, dtype", sorted(MEASURED_STORAGE))
def test_nf4tensor_storage_matches_torchao_tensor_by_tensor(shape, dtype):
    assert torchao_nf4_parts(shape[0] * shape[1], dtype) == MEASURED_STORAGE[(shape, dtype)]


def test_nf4tensor_4096_square_total_and_against_bitsandbytes():
    """8,652,834 B (4.1260 bits/param, docs/stacks.md § measured 4) vs bitsandbytes nf4 + double quant 8,655,940 B."""
    n = 4096 * 4096
    assert sum(torchao_nf4_parts(n).values()) == 8_652_834
    assert sum(bnb_4bit_parts(n).values()) == 8_655_940


@pytest.mark.parametrize("shape", sorted(MEASURED_DEQUANT_PEAK))
def test_dequantization_peak_matches_torchao(shape):
    # every piece of these sizes is a multiple of 512 B, so the allocator rounding changes nothing
    assert torchao_nf4_dequant_bytes(shape[0] * shape[1], "bf16", "bf16") == MEASURED_DEQUANT_PEAK[shape]


def test_dequantization_is_about_seven_bf16_copies():
    n = 14336 * 4096                 # Llama-3-8B's MLP weight
    assert torchao_nf4_dequant_bytes(n) == 823_918_592
    assert 7 * n * 2 < torchao_nf4_dequant_bytes(n) < 7.02 * n * 2


def test_nf4_kernel_is_the_torchtune_stacks():
    assert nf4_kernel(_setup("torchtune")) == "torchao"
    assert nf4_kernel(_setup("hf")) == "bnb"
    assert nf4_kernel(_setup("litgpt")) == "bnb"
    with pytest.raises(SetupError, match="to_nf4 only"):      # torchtune has no FP4 path (tests/test_stacks.py)
        _setup("torchtune", quant="fp4")


def test_place_weights_stores_the_torchao_layout():
    spec = resolve_model("llama-3-8b").spec
    s = _setup("hf")
    by_kernel = {k: {p.tensor.name: p for p in place_weights(spec, s, kernel=k)} for k in ("bnb", "torchao")}
    q = by_kernel["torchao"]["model.layers.0.self_attn.q_proj.weight"]
    m = MEASURED_STORAGE[((4096, 4096), "bf16")]
    assert q.quant == "nf4"
    assert [b for _, b in q.parts] == [m["quantized_data"], m["quantized_scalers"], m["quantization_factor"],
                                       m["scaler_mean"], m["nf4"]]
    assert [c for c, _ in q.parts] == ["weights/quantized"] + ["weights/quant_constants"] * 4
    # the unquantized tensors (embedding, norms, head) are the same for both kernels
    assert {n for n, p in by_kernel["torchao"].items() if p.quant == "none"} == \
        {n for n, p in by_kernel["bnb"].items() if p.quant == "none"}
    # the torchtune stack picks it by itself
    tt = {p.tensor.name: p for p in place_weights(spec, _setup("torchtune"))}
    assert tt["model.layers.0.self_attn.q_proj.weight"].parts == q.parts


def _program(kernel: str):
    spec = spec_from_config(TINY, name="tiny")
    s = _setup("torchtune")          # bf16 adapters (torchtune builds its own); the kernel is the argument
    placements = place_weights(spec, s, kernel=kernel)
    layer = build_layers(spec, placements, plan_lora(spec, s.lora), s)[1]
    return Program(spec, s, kernel=kernel), layer


def _trace(kernel: str):
    program, layer = _program(kernel)
    return trace_layer(program, layer, "bf16")


def _tracer(kernel: str) -> Tracer:
    program, layer = _program(kernel)
    tr = Tracer(None)
    program.layer(tr, tr.external("layer input", tok(H), "bf16", True), layer)
    return tr


def test_linear_nf4_dequantizes_as_torchao_in_forward_and_backward():
    tr = _trace("torchao")
    consts = dict(tr.constants)
    # up_proj (512 -> 1024) has the measured 512 x 1024 weight
    up = next(b for k, b in consts.items() if k.startswith("up_proj"))
    assert up == MEASURED_DEQUANT_PEAK[(512, 1024)]
    assert tr.max_constant == MEASURED_DEQUANT_PEAK[(512, 1024)]       # gate/up/down are the largest weights
    assert tr.max_bwd_constant == MEASURED_DEQUANT_PEAK[(512, 1024)]   # backward's weight.to(grad dtype) alike
    assert len(tr.constants) == 7 and len(tr.bwd_constants) == 7       # q, k, v, o, gate, up, down


def test_linear_nf4_saves_what_torchtune_lora_linear_saves():
    """torchao's linear_nf4 saves the NF4 weight only; torchtune's LoRALinear adds lora_a's input (x itself) and
    output: the same saved bytes as bitsandbytes >= 0.43.2 for this bf16 stream, but no peft result.clone()."""
    ao, bnb = _trace("torchao"), _trace("bnb")
    T = 64
    assert sum(x.nbytes(T, T * T) for x in ao.saved) == sum(x.nbytes(T, T * T) for x in bnb.saved)
    lora_out = [x for x in ao.saved if "lora_A output" in x.label]
    assert sorted(x.nbytes(T, T * T) for x in lora_out) == [alloc(MEASURED_LORA_LINEAR_SAVED_NEW)] * 2
    made = {k: {st.label for ev, st in _tracer(k).events if ev == "alloc"} for k in ("torchao", "bnb")}
    assert any("clone" in lab for lab in made["bnb"])                  # peft lora/bnb.py result.clone()
    assert not any("clone" in lab for lab in made["torchao"])          # torchtune lora.py:129-140: out + lora_out


def test_torchtune_llama3_8b_qlora_peak_follows_the_dequantization():
    """Llama-3-8B, 1 x 2048, the torchtune stack's defaults: the forward peak is the layer working set with one MLP
    weight's torchao dequantization (823,918,592 B) instead of bitsandbytes' one bf16 copy (117,440,512 B)."""
    spec = resolve_model("llama-3-8b").spec
    tt = Setup.create(method="qlora", stack="torchtune", seq=2048)
    e = estimate(spec, tt)
    comps = {c.name: c.bytes for c in e.components}
    mlp = 14336 * 4096
    assert comps["buffers/layer_temporaries"] >= torchao_nf4_dequant_bytes(mlp)
    # the weights: 32 layers x (q, k, v, o, gate, up, down) NF4Tensors
    st = static_structure(spec, structural_setup(tt))
    quant = sum(alloc(b) for p in st.placements if p.quant == "nf4" for _, b in p.parts)
    per_layer = sum(sum(alloc(b) for b in torchao_nf4_parts(o * i).values())
                    for o, i in [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096),
                                 (14336, 4096), (4096, 14336)])
    assert quant == 32 * per_layer


# ------------------------------------------------------------------ reproductions (torchao/torchtune installed)
def test_reproduce_storage_and_dequant_peak_with_torchao():
    torch = pytest.importorskip("torch")
    nf4mod = pytest.importorskip("torchao.dtypes.nf4tensor")
    from torch.profiler import ProfilerActivity, profile
    for (shape, dtype) in [((512, 1024), "bf16"), ((128, 256), "fp32")]:
        dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        nf = nf4mod.to_nf4(torch.randn(*shape, dtype=dt))
        got = {a: getattr(nf, a).untyped_storage().nbytes() for a in MEASURED_STORAGE[(shape, dtype)]}
        assert got == torchao_nf4_parts(shape[0] * shape[1], dtype)
    nf = nf4mod.to_nf4(torch.randn(512, 1024, dtype=torch.bfloat16))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        nf.to(torch.bfloat16)
    cur = peak = 0
    for e in sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns()):
        cur += e.nbytes()
        peak = max(peak, cur)
    assert peak == torchao_nf4_dequant_bytes(512 * 1024)


def test_reproduce_lora_linear_saved_tensors_with_torchtune():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    lora = pytest.importorskip("torchtune.modules.peft")
    from torchao.dtypes.nf4tensor import NF4Tensor
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        m = lora.LoRALinear(1024, 512, rank=8, alpha=16, quantize_base=True)
    finally:
        torch.set_default_dtype(torch.float32)
    x = torch.randn(64, 1024, dtype=torch.bfloat16, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in (m.lora_a.weight, m.lora_b.weight)}
    new, nf4 = {}, []

    def pack(t):
        if isinstance(t, NF4Tensor):
            nf4.append(t)
        elif t.untyped_storage().data_ptr() not in params | {x.untyped_storage().data_ptr()}:
            new[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    assert len(nf4) == 1 and nf4[0] is m.weight                # LinearNF4: save_for_backward(weight)
    assert sum(new.values()) == MEASURED_LORA_LINEAR_SAVED_NEW
