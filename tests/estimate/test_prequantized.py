"""Pre-quantized checkpoints (issue 16): stored bytes per Linear against the real libraries' modules.

The pinned integers were measured on CPU, each module built with ``register_buffers=True`` (or as its library
builds it) and every buffer's ``numel() * element_size()`` read:

* GPTQ: gptqmodel 7.7.0 ``TorchLinear(bits, group_size, desc_act=False, sym=True, in_features, out_features,
  bias=False, pack_dtype=torch.int32, register_buffers=True)`` (``GPTQQuantLinear._register_gptq_buffers``,
  shared by every GPTQ kernel class);
* AWQ GEMM: AutoAWQ 0.2.9 ``WQLinear_GEMM(4, group, in, out, False, "cpu")`` (gptqmodel's ``AwqGEMMLinear``
  refuses to build without CUDA); AWQ GEMV: gptqmodel 7.7.0 ``AwqGEMVLinear(..., register_buffers=True)``;
* FP8: transformers 5.23.0 ``FP8Linear(in, out, block_size=...)`` (and ``activation_scheme="static"``);
* compressed-tensors 0.20.0 ``initialize_module_for_quantization`` on a bf16 ``nn.Linear(4096, 14336)`` with
  fp8 weight args (``num_bits=8, type="float"``) per tensor / channel / 128x128 block and static fp8 inputs.

The framework tests at the end re-measure with the installed libraries and skip without them.
"""

from __future__ import annotations

import pytest

from vramplan.errors import ConfigError, SetupError
from vramplan.estimate import estimate
from vramplan.estimate.weights import place_weights
from vramplan.profiles import resolve_model
from vramplan.quantized import (
    awq_parts,
    checkpoint_setup,
    fp8_parts,
    gptq_parts,
    scheme_from_config,
    skipped,
)
from vramplan.setup import Setup

# (in, out, bits, group) -> qweight, qzeros, scales, g_idx bytes (gptqmodel 7.7.0 TorchLinear on CPU)
GPTQ_MEASURED = {
    (4096, 4096, 4, 128): (8_388_608, 65_536, 262_144, 16_384),
    (4096, 14336, 4, 128): (29_360_128, 229_376, 917_504, 16_384),
    (14336, 4096, 4, 128): (29_360_128, 229_376, 917_504, 57_344),
    (4096, 1024, 8, 128): (4_194_304, 32_768, 65_536, 16_384),
    (4096, 4096, 3, 128): (6_291_456, 49_152, 262_144, 16_384),
    (4096, 4096, 2, 64): (4_194_304, 65_536, 524_288, 16_384),
    (4096, 4096, 4, -1): (8_388_608, 2_048, 8_192, 16_384),
    (3584, 18944, 4, 128): (33_947_648, 265_216, 1_060_864, 14_336),
    (18944, 3584, 8, 128): (67_895_296, 530_432, 1_060_864, 75_776),
}

# (in, out, group, version) -> qweight, qzeros, scales bytes (AutoAWQ 0.2.9 GEMM; gptqmodel 7.7.0 GEMV)
AWQ_MEASURED = {
    (4096, 4096, 128, "gemm"): (8_388_608, 65_536, 262_144),
    (3584, 18944, 128, "gemm"): (33_947_648, 265_216, 1_060_864),
    (18944, 3584, 128, "gemm"): (33_947_648, 265_216, 1_060_864),
    (4096, 14336, 64, "gemm"): (29_360_128, 458_752, 1_835_008),
    (4096, 4096, 128, "gemv"): (8_388_608, 65_536, 262_144),
    (3584, 18944, 128, "gemv"): (33_947_648, 303_104, 1_212_416),
    (18944, 3584, 128, "gemv"): (33_947_648, 272_384, 1_089_536),
    (4096, 14336, 64, "gemv"): (29_360_128, 458_752, 1_835_008),
}

# (in, out, block) -> weight, weight_scale_inv bytes (transformers 5.23.0 FP8Linear); static adds 4 B
FP8_MEASURED = {
    (4096, 4096, (128, 128)): (16_777_216, 4_096),
    (4096, 1024, (128, 128)): (4_194_304, 1_024),
    (3584, 18944, (128, 128)): (67_895_296, 16_576),
    (7168, 2112, (128, 128)): (15_138_816, 3_808),     # DeepSeek-V3 q_a_proj: ceil(2112/128) = 17 rows
    (4096, 4096, None): (16_777_216, 4),
}


@pytest.mark.parametrize("key", GPTQ_MEASURED)
def test_gptq_buffers_match_gptqmodel(key):
    i, o, bits, g = key
    p = gptq_parts(i, o, bits, g)
    assert (p["qweight"], p["qzeros"], p["scales"], p["g_idx"]) == GPTQ_MEASURED[key]


@pytest.mark.parametrize("key", AWQ_MEASURED)
def test_awq_buffers_match_autoawq_and_gptqmodel(key):
    i, o, g, version = key
    p = awq_parts(i, o, 4, g, version)
    assert (p["qweight"], p["qzeros"], p["scales"]) == AWQ_MEASURED[key]


@pytest.mark.parametrize("key", FP8_MEASURED)
def test_fp8_parameters_match_transformers_fp8linear(key):
    i, o, block = key
    p = fp8_parts(o, i, block, "block" if block else "tensor")
    assert (p["weight"], p["weight_scale"]) == FP8_MEASURED[key]
    ps = fp8_parts(o, i, block, "block" if block else "tensor", static_activations=True)
    assert ps["input_scale"] == 4


@pytest.mark.parametrize(("strategy", "block", "expected"), [
    # weight (fp8), weight_scale (bf16), weight_zero_point (fp8), input_scale, input_zero_point: measured bytes
    # less the weight, which initialize_module_for_quantization leaves in bf16 (the compressor stores fp8)
    ("tensor", None, (2, 1, 2, 1)),
    ("channel", None, (28_672, 14_336, 2, 1)),
    ("block", (128, 128), (7_168, 3_584, 2, 1)),
])
def test_compressed_tensors_fp8_qparams_match(strategy, block, expected):
    p = fp8_parts(14336, 4096, block, strategy, static_activations=True, compressed_tensors=True)
    assert p["weight"] == 14336 * 4096
    assert (p["weight_scale"], p["weight_zero_point"], p["input_scale"], p["input_zero_point"]) == expected


# ------------------------------------------------------------------------------------- quantization_config
QWEN_GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
             "damp_percent": 0.01, "true_sequential": True, "model_name_or_path": None}
UNSLOTH_BNB = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
               "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16",
               "llm_int8_skip_modules": None}
QWEN3_FP8 = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [128, 128]}


def test_reads_the_published_quantization_configs():
    g = scheme_from_config(QWEN_GPTQ)
    assert (g.quant, g.bits, g.group_size, g.desc_act, g.fmt) == ("gptq", 4, 128, False, "gptq")
    b = scheme_from_config(UNSLOTH_BNB)
    assert (b.quant, b.double_quant, b.skip) == ("nf4", True, ())
    f = scheme_from_config(QWEN3_FP8)
    assert (f.quant, f.block, f.static_activations) == ("fp8", (128, 128), False)
    a = scheme_from_config({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm",
                            "zero_point": True, "modules_to_not_convert": ["visual"]})
    assert (a.quant, a.fmt, a.skip) == ("awq", "gemm", ("visual",))


@pytest.mark.parametrize(("qc", "words"), [
    ({"quant_method": "hqq"}, "'hqq' is not planned"),
    ({"quant_method": "gptq", "bits": 5}, "'bits' must be one of 2, 3, 4, 8"),
    ({"quant_method": "awq", "version": "exllama"}, "AWQ version 'exllama'"),
    ({"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size must be two"),
    ({"bits": 4}, "no 'quant_method'"),
])
def test_bad_quantization_config_is_one_line(qc, words):
    with pytest.raises(ConfigError, match=words):
        scheme_from_config(qc, "x/config.json")


def test_skip_matches_as_transformers_should_convert_module():
    assert skipped("model.layers.0.mlp.gate", ("mlp.gate",))
    assert skipped("lm_head", ("lm_head",))
    assert not skipped("model.layers.0.mlp.gate_proj", ("mlp.gate",))


# ---------------------------------------------------------------------------------------------- in plans
def _quantized_spec(qc):
    import dataclasses

    spec = resolve_model("llama-3-8b").spec
    return dataclasses.replace(spec, config={**spec.config, "quantization_config": qc})


def test_gptq_checkpoint_weights_are_the_buffers_of_every_block_linear():
    spec = _quantized_spec(QWEN_GPTQ)
    s, assume, warn = checkpoint_setup(spec.config, Setup.create(method="inference"))
    assert s.quant == "gptq" and warn == [] and "used since --quant was not given" in assume[0]
    ps = place_weights(spec, s)
    q = [p for p in ps if p.quant == "gptq"]
    assert len(q) == 32 * 7                        # 7 Linear modules per layer, the head stays bf16
    # Llama-3-8B per layer: q/o 4096x4096, k/v 4096x1024, gate/up 4096x14336, down 14336x4096 (first principles
    # on the measured per-shape bytes above)
    per_layer = (2 * sum(GPTQ_MEASURED[(4096, 4096, 4, 128)]) + 2 * sum(gptq_parts(4096, 1024, 4, 128).values())
                 + 2 * sum(GPTQ_MEASURED[(4096, 14336, 4, 128)]) + sum(GPTQ_MEASURED[(14336, 4096, 4, 128)]))
    assert sum(b for p in q for _, b in p.parts) == 32 * per_layer
    head = next(p for p in ps if p.tensor.role == "lm_head")
    assert head.quant == "none" and head.dtype == "bf16"


def test_conflicting_quant_warns_and_the_checkpoint_wins():
    spec = _quantized_spec(QWEN_GPTQ)
    est = estimate(spec, Setup.create(method="qlora", quant="nf4"))
    assert est.setup.quant == "gptq"
    assert any(w.startswith("--quant nf4 (--method qlora's default) not used") for w in est.warnings)
    given = estimate(spec, Setup.create(method="inference", quant="int8"))
    assert given.setup.quant == "gptq" and any(w.startswith("--quant int8 not used") for w in given.warnings)
    with pytest.raises(SetupError, match="--method full cannot train the pre-quantized checkpoint"):
        estimate(spec, Setup.create(method="full"))


def test_gptq_lora_keeps_the_base_in_16_bits_and_awq_upcasts():
    """peft prepare_model_for_kbit_training skips the fp32 cast for GPTQ only (peft 0.21.2 utils/other.py)."""
    spec = resolve_model("llama-3-8b").spec
    g = {p.tensor.role: p.dtype for p in place_weights(spec, Setup.create(method="qlora", quant="gptq"))}
    a = {p.tensor.role: p.dtype for p in place_weights(spec, Setup.create(method="qlora", quant="awq"))}
    assert (g["embedding"], g["norm"], g["lm_head"]) == ("bf16", "bf16", "bf16")
    assert (a["embedding"], a["norm"], a["lm_head"]) == ("fp32", "fp32", "fp32")


def test_quant_skip_leaves_modules_unquantized_for_bitsandbytes_too():
    spec = resolve_model("llama-3-8b").spec
    ps = place_weights(spec, Setup.create(method="qlora", quant="nf4", quant_skip=("down_proj",)))
    down = [p for p in ps if p.tensor.name.endswith("mlp.down_proj.weight")]
    assert down and all(p.quant == "none" for p in down)
    assert any(p.quant == "nf4" for p in ps if p.tensor.name.endswith("mlp.up_proj.weight"))


def test_training_counts_a_dequantized_weight_and_inference_does_not():
    spec = resolve_model("llama-3-8b").spec
    train = estimate(spec, Setup.create(method="qlora", quant="gptq"))
    infer = estimate(spec, Setup.create(method="inference", quant="gptq"))
    assert any("TritonV2Linear" in a for a in train.assumptions)
    assert any("Marlin" in a for a in infer.assumptions)      # no --gpu: taken as compute 8.x, Marlin


# ------------------------------------------------------------------------------------ the real libraries
def test_gptqmodel_buffers_when_installed():
    torch = pytest.importorskip("torch")
    pytest.importorskip("gptqmodel")
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    for (i, o, bits, g), want in GPTQ_MEASURED.items():
        m = TorchLinear(bits=bits, group_size=g, desc_act=False, sym=True, in_features=i, out_features=o,
                        bias=False, pack_dtype=torch.int32, register_buffers=True)
        got = {k: v.numel() * v.element_size() for k, v in m.named_buffers()}
        assert (got["qweight"], got["qzeros"], got["scales"], got["g_idx"]) == want == \
            tuple(gptq_parts(i, o, bits, g).values())


def test_fp8linear_parameters_when_installed():
    pytest.importorskip("torch")
    fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")
    for (i, o, block), want in FP8_MEASURED.items():
        m = fp8.FP8Linear(i, o, block_size=block)
        got = {k: v.numel() * v.element_size() for k, v in m.named_parameters()}
        assert (got["weight"], got["weight_scale_inv"]) == want


# Whole models, every quantized module: optimum 2.3.0 ``GPTQQuantizer(..., backend="torch").convert_model`` with
# gptqmodel 7.7.0 on a meta-device transformers 5.23 model built from the bundled profile's config (qweight +
# qzeros + scales + g_idx of every QuantLinear), and transformers' ``replace_with_fp8_linear`` with
# ``FineGrainedFP8Config(weight_block_size=(128, 128))`` and ``modules_to_not_convert=["lm_head"]`` (weight +
# weight_scale_inv of every FP8Linear). Module sets equal vramplan's quantized placements in every case.
WHOLE_MODEL = {
    # (profile, quant, bits, group): (quantized modules, bytes)
    ("qwen2.5-0.5b", "gptq", 4, 128): (168, 186_885_120),
    ("qwen2.5-0.5b", "gptq", 3, -1): (168, 135_890_304),
    ("llama-3.2-1b", "gptq", 8, 64): (112, 1_020_002_304),
    ("qwen2.5-7b", "gptq", 4, 128): (196, 3_394_621_440),
    ("qwen2.5-7b", "gptq", 8, 128): (196, 6_682_755_072),
    ("qwen2.5-0.5b", "fp8", 8, 128): (168, 357_913_920),
    ("llama-3.2-1b", "fp8", 8, 128): (112, 973_316_096),
}


@pytest.mark.parametrize("key", WHOLE_MODEL)
def test_whole_model_quantized_bytes_match_optimum_and_transformers(key):
    profile, quant, bits, group = key
    spec = resolve_model(profile).spec
    kw = {"quant_bits": bits, "quant_group": group} if quant == "gptq" else {}
    q = [p for p in place_weights(spec, Setup.create(method="inference", quant=quant, **kw)) if p.quant == quant]
    assert (len(q), sum(b for p in q for _, b in p.parts)) == WHOLE_MODEL[key]


def test_optimum_convert_model_when_installed():
    torch = pytest.importorskip("torch")
    pytest.importorskip("gptqmodel")
    optimum_gptq = pytest.importorskip("optimum.gptq")
    import transformers

    cfg = dict(resolve_model("qwen2.5-0.5b").profile.config)
    c = transformers.AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items()
                                                                     if k != "architectures"})
    with torch.device("meta"):
        m = transformers.AutoModelForCausalLM.from_config(c, dtype=torch.bfloat16)
    optimum_gptq.GPTQQuantizer(bits=4, group_size=128, desc_act=False, sym=True, backend="torch").convert_model(
        m, device_map="cpu")
    theirs = [sum(b.numel() * b.element_size() for k, b in mod.named_buffers(recurse=False)
                  if k in ("qweight", "qzeros", "scales", "g_idx")) for _, mod in m.named_modules()
              if hasattr(mod, "qweight")]
    assert (len(theirs), sum(theirs)) == WHOLE_MODEL[("qwen2.5-0.5b", "gptq", 4, 128)]


def test_all_linear_lora_on_gptq_or_awq_is_refused_as_peft_does():
    """peft 0.21.2 get_peft_model(LoraConfig(target_modules="all-linear")) on a 2-layer Llama converted by optimum
    2.3.0 + gptqmodel 7.7.0 raised NoMatchingPeftModuleError; target_modules=["q_proj", "v_proj"] trained 14,336
    parameters, what r=8 on q (256 -> 256) and v (256 -> 128) gives on the 16-bit model: 2 x 8 x (512 + 384)."""
    from vramplan.lora import LoraConfig

    spec = resolve_model("llama-3-8b").spec
    for quant in ("gptq", "awq"):
        with pytest.raises(SetupError, match="all-linear on a --quant"):
            estimate(spec, Setup.create(method="qlora", quant=quant, lora=LoraConfig(targets=("all-linear",))))
    named = LoraConfig(targets=("q_proj", "v_proj"))
    assert estimate(spec, Setup.create(method="qlora", quant="gptq", lora=named)).params_trainable == \
        estimate(spec, Setup.create(method="lora", lora=named)).params_trainable
    fp8 = estimate(spec, Setup.create(method="qlora", quant="fp8", lora=LoraConfig(targets=("all-linear",))))
    assert fp8.params_trainable > 0          # FP8Linear is an nn.Linear: all-linear matches it


@pytest.mark.parametrize(("method", "quant", "largest"), [
    # Llama-3-8B's largest Linear is down_proj, 14336 x 4096 = 58,720,256 weights (first principles on the kernels'
    # code): GPTQ's dequantized weight is torch.matmul's saved operand in train mode (a saved tensor, not a
    # transient: tests/estimate/test_quant_kernel_workspaces.py); FP8 backward dequantizes in the gradient's dtype
    # (fp32 after kbit prep's upcast); AWQ dequantizes to fp16, then .to(fp32): both alive; inference kernels fuse
    # the dequantization
    ("qlora", "gptq", 0),
    ("qlora", "fp8", 58_720_256 * 4),
    ("qlora", "awq", 58_720_256 * 6),
    ("inference", "gptq", 0),
    ("inference", "awq", 0),
    ("inference", "fp8", 0),
])
def test_dequantized_weight_transient(method, quant, largest):
    from vramplan.estimate.states import model_states

    d = model_states(resolve_model("llama-3-8b").spec, Setup.create(method=method, quant=quant))
    assert d.compute.layer_traces[-1].max_constant == largest
