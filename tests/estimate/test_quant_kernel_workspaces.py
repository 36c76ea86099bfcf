"""GPTQ/AWQ kernel buffers (issue 16): what gptqmodel 7.7.0's kernels allocate beyond the checkpoint's tensors.

Pinned numbers were measured with gptqmodel 7.7.0 (sdist, ``pip install --no-deps``) on torch 2.13.0+cpu in a
private venv, running the library's own sizing code on CPU/meta (no CUDA there, so the runtime checks were
patched out: ``validate`` returning ``(True, None)``, ``torch.cuda.get_device_properties`` returning a namespace
with ``multi_processor_count``):

* ``utils/marlin.py marlin_make_workspace_new(device)`` -> ``workspace.numel()`` for each SM count;
* ``ExllamaV2Linear(bits=4, group_size=128, desc_act=False, sym=True, in, out)`` on meta for Qwen2.5-7B's seven
  block Linears -> ``scratch_space_fixed()``, and ``ScratchSpace(max(...), "meta")`` -> scratch bytes, as
  ``utils/model.py gptqmodel_post_init`` sizes it; ``AwqExllamaV2Linear`` with ``max_input_len=2048,
  max_batch_size=1`` (``AWQ_BATCH_SIZE``' default);
* ``utils/marlin.py marlin_padded_nk(n, k, group)``;
* ``TorchLinear`` (TritonV2Linear's train-mode forward, tritonv2.py:179-180) in ``train()`` mode, input
  ``[3, 5, 256]`` bf16 requiring grad, ``in=256, out=512``: ``torch.autograd.graph.saved_tensors_hooks`` saw one
  saved tensor, ``(256, 512)`` bf16, 262,144 B — the dequantized weight ``torch.matmul`` keeps for backward.

The Marlin reduction scratch ``c_tmp`` is first principles from ``gptqmodel_ext/marlin/marlin_scratch.cuh:45-73``
(``sms × min(round16(m), 64) × max_thread_n``, ``max_thread_n = 256`` in ``marlin.cuh:29``): a CUDA-only op.
The last test re-measures with gptqmodel when it is installed and skips otherwise.
"""

from __future__ import annotations

import dataclasses

import pytest

from vramplan.dtypes import alloc
from vramplan.estimate import estimate
from vramplan.estimate.grid import estimate_counters
from vramplan.estimate.quant_kernels import (
    Linear,
    exllama_scratch_bytes,
    kernel_memory,
    marlin_padded_nk,
    marlin_workspace_bytes,
    plan_kernel,
    select_kernel,
)
from vramplan.estimate.states import model_states
from vramplan.profiles import resolve_gpu, resolve_model
from vramplan.quantized import checkpoint_setup, scheme_from_config
from vramplan.setup import Setup

QWEN_GPTQ = "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4"
QWEN_AWQ = "Qwen/Qwen2.5-7B-Instruct-AWQ"
H, FF, KV = 3584, 18944, 512
QWEN_LINEARS = (("q_proj", H, H), ("k_proj", H, KV), ("v_proj", H, KV), ("o_proj", H, H),
                ("gate_proj", H, FF), ("up_proj", H, FF), ("down_proj", FF, H))

#: SMs -> marlin_make_workspace_new(...).numel() (int32), measured
MARLIN_WORKSPACE_MEASURED = {28: 128, 108: 128, 114: 128, 128: 128, 132: 132, 142: 142, 148: 148, 170: 170}
#: ExllamaV2Linear.scratch_space_fixed() per Qwen2.5-7B Linear, measured
EXLLAMA_FIXED_MEASURED = {"q_proj": 260_571_392, "k_proj": 37_224_704, "v_proj": 37_224_704, "o_proj": 260_571_392,
                          "gate_proj": 1_377_304_832, "up_proj": 1_377_304_832, "down_proj": 370_671_872}
EXLLAMA_SCRATCH_MEASURED = 1_377_304_832          # ScratchSpace(max fixed).scratch: fp16, bytes
AWQ_EXLLAMA_SCRATCH_MEASURED = 290_980_096
#: (n, k, group) -> marlin_padded_nk, measured
MARLIN_PAD_MEASURED = {(4096, 4096, 128): (4096, 4096), (3584, 18944, 128): (3584, 18944),
                       (512, 3584, 128): (512, 3584), (1000, 4096, 128): (1024, 4096),
                       (4096, 1000, -1): (4096, 1024), (2736, 2048, 128): (2752, 2048)}


def _lins() -> tuple[Linear, ...]:
    return tuple(Linear(f"model.layers.{i}.{n}", a, b) for i in range(28) for n, a, b in QWEN_LINEARS)


def _qwen(name: str, **kw):
    spec = resolve_model(name).spec
    setup = checkpoint_setup(spec.config, Setup.create(**kw), spec.name)[0]
    return spec, setup


# -------------------------------------------------------------------------------------- the library's sizing
@pytest.mark.parametrize("sms", MARLIN_WORKSPACE_MEASURED)
def test_marlin_workspace_is_max_sms_128_int32(sms):
    assert marlin_workspace_bytes(sms) == MARLIN_WORKSPACE_MEASURED[sms] * 4


def test_exllamav2_scratch_matches_gptqmodel_post_init():
    for name, i, o in QWEN_LINEARS:
        assert exllama_scratch_bytes((Linear(name, i, o),)) == EXLLAMA_FIXED_MEASURED[name]
    assert exllama_scratch_bytes(_lins()) == EXLLAMA_SCRATCH_MEASURED
    assert exllama_scratch_bytes(_lins(), awq=True) == AWQ_EXLLAMA_SCRATCH_MEASURED


@pytest.mark.parametrize("key", MARLIN_PAD_MEASURED)
def test_marlin_tile_padding_matches(key):
    assert marlin_padded_nk(*key) == MARLIN_PAD_MEASURED[key]


@pytest.mark.parametrize(("sms", "rows", "c_tmp"), [
    (132, 1, 132 * 16 * 256 * 4),          # decode: one row rounds up to a 16-row tile
    (132, 1920, 132 * 64 * 256 * 4),       # prefill: at most 64 rows per split-M tile
    (108, 40, 108 * 48 * 256 * 4),
    (170, 64, 170 * 64 * 256 * 4),
])
def test_marlin_fp32_reduce_scratch(sms, rows, c_tmp):
    km = kernel_memory(scheme_from_config({"quant_method": "gptq", "bits": 4, "group_size": 128}), _lins(),
                       dataclasses.replace(resolve_gpu("a100-80gb"), sm_count=sms), training=False)
    assert km.kernel == "marlin"
    assert km.scratch(rows)[0] == alloc(c_tmp)


# ---------------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize(("gpu", "gptq", "awq"), [
    ("h100-80gb", "machete", "awq_machete"),
    ("h200", "machete", "awq_machete"),
    ("a100-80gb", "marlin", "awq_marlin"),
    ("rtx-4090", "marlin", "awq_marlin"),
    ("b200", "marlin", "awq_marlin"),          # Machete wants compute 9.0 exactly (utils/machete.py:56)
    ("t4", "marlin", "awq_exllamav2"),         # GPTQ Marlin from 7.5, AWQ Marlin from 8.0
    ("v100-32gb", "exllamav2", "awq_exllamav2"),
    ("mi300x", "torch", "torch"),
])
def test_auto_selection_per_card(gpu, gptq, awq):
    g = scheme_from_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True})
    a = scheme_from_config({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"})
    card = resolve_gpu(gpu)
    assert select_kernel(g, card, False, _lins())[0] == gptq
    assert select_kernel(a, card, False, _lins())[0] == awq


def test_selection_follows_the_kernels_limits():
    a100 = resolve_gpu("a100-80gb")
    asym = scheme_from_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": False})
    assert select_kernel(asym, a100, False, _lins())[0] == "exllamav2"            # Marlin: SUPPORTS_SYM [True]
    assert select_kernel(asym, resolve_gpu("h100-80gb"), False, _lins())[0] == "machete"
    three = scheme_from_config({"quant_method": "gptq", "bits": 3, "group_size": 128})
    assert select_kernel(three, a100, False, _lins())[0] == "tritonv2"
    v2 = scheme_from_config({"quant_method": "gptq", "bits": 4, "checkpoint_format": "gptq_v2"})
    assert select_kernel(v2, resolve_gpu("h100-80gb"), False, _lins())[0] == "marlin"   # Machete: format gptq only
    assert select_kernel(v2, a100, True, _lins())[0] == "tritonv2"                     # auto_trainable
    awq = scheme_from_config({"quant_method": "awq", "bits": 4, "group_size": 128})
    assert select_kernel(awq, a100, True, _lins())[0] == "awq_gemm"


# ------------------------------------------------------------------------------------------------ in plans
@pytest.mark.parametrize(("gpu", "sms"), [("a100-80gb", 108), ("rtx-4090", 128), ("b200", 148)])
def test_gptq_marlin_inference_plan(gpu, sms):
    spec, setup = _qwen(QWEN_GPTQ, method="inference", batch=1, seq=2048, new_tokens=128)
    card = resolve_gpu(gpu)
    e = estimate(spec, setup, card)
    n = 28 * 7
    # workspace: one torch.zeros(max(SMs, 128)) int32 per layer, in 512-B allocator blocks
    assert e.component("buffers/quant_kernel_workspace") == n * alloc(max(sms, 128) * 4)
    assert e.component("buffers/quant_kernel_scratch") == alloc(sms * 64 * 256 * 4)      # prefill: 1,920 rows
    # post_init empties qzeros and g_idx (marlin.py:416-419): int32 [groups, out/8] and [in] per Linear
    freed = 28 * sum(alloc(-(-i // 128) * (o // 8) * 4) + alloc(i * 4) for _, i, o in QWEN_LINEARS)
    assert freed == 30_019_584
    stored = estimate(spec, setup)          # no card: Marlin with 128 SMs, the same frees
    assert stored.component("weights/quant_constants") == e.component("weights/quant_constants")
    unfreed = model_states(spec, setup).weight_comps
    assert dict((c[0], c[1]) for c in unfreed)["weights/quant_constants"] - freed == \
        e.component("weights/quant_constants")
    assert e.phases[e.peak_phase] == e.peak_allocated_bytes
    assert any("Marlin" in a for a in e.assumptions)


def test_gptq_on_hopper_is_machete_and_on_volta_exllamav2():
    spec, setup = _qwen(QWEN_GPTQ, method="inference", batch=1, seq=2048, new_tokens=128)
    h = estimate(spec, setup, resolve_gpu("h100-80gb"))
    assert h.component("buffers/quant_kernel_workspace") == 0
    # the fp16 scales cast to the bf16 input's dtype per call: gate/up_proj's [28, 18944] is the largest
    assert h.component("buffers/quant_kernel_scratch") == alloc(28 * 18944 * 2)
    assert any("CUTLASS" in w for w in h.warnings)
    v = estimate(spec, setup, resolve_gpu("v100-32gb"))
    perms = 28 * sum(2 * alloc(i * 2) for _, i, _ in QWEN_LINEARS)      # q_perm, q_invperm int16 [in]
    assert v.component("buffers/quant_kernel_workspace") == alloc(EXLLAMA_SCRATCH_MEASURED) + perms
    # bf16 model: the fp16 input copy and fp16 output of gate/up_proj (in 3584, out 18944) at 1,920 prompt rows
    assert v.component("buffers/quant_kernel_scratch") == alloc(1920 * H * 2) + alloc(1920 * FF * 2)


def test_awq_plans_per_card():
    spec, setup = _qwen(QWEN_AWQ, method="inference", batch=1, seq=2048, new_tokens=128)
    a = estimate(spec, setup, resolve_gpu("a100-80gb"))
    assert a.component("buffers/quant_kernel_workspace") == 196 * 512
    v = estimate(spec, setup, resolve_gpu("v100-32gb"))
    assert v.component("buffers/quant_kernel_workspace") == alloc(AWQ_EXLLAMA_SCRATCH_MEASURED)
    h = estimate(spec, setup, resolve_gpu("h100-80gb"))
    # Machete-AWQ: fp16 zero points [groups, out] replace the int32 qzeros [groups, out/8]
    grow = 28 * sum(alloc((i // 128) * o * 2) - alloc((i // 128) * (o // 8) * 4) for _, i, o in QWEN_LINEARS)
    assert h.component("weights/quant_constants") - a.component("weights/quant_constants") == grow


@pytest.mark.parametrize("gpu", ["a100-80gb", "h100-80gb", "v100-32gb", None])
def test_sweep_counters_equal_the_estimate(gpu):
    spec, setup = _qwen(QWEN_GPTQ, method="inference", batch=1, seq=1024, new_tokens=64)
    card = resolve_gpu(gpu) if gpu else None
    points = [(1, 1024), (4, 512), (2, 4096)]
    got = estimate_counters(spec, setup, points, card)
    for (b, s), c in zip(points, got, strict=True):
        e = estimate(spec, setup.with_(batch=b, seq=s), card)
        assert (c.peak_allocated_bytes, c.peak_phase) == (e.peak_allocated_bytes, e.peak_phase)


def test_gptq_training_saves_each_dequantized_weight():
    """TorchLinear in train mode saves torch.matmul's second operand: in x out in the input's dtype (measured
    262,144 B for in=256, out=512 bf16), once per quantized Linear of the layer."""
    spec = resolve_model("llama-3-8b").spec
    setup = Setup.create(method="qlora", quant="gptq", grad_ckpt=False)
    tr = model_states(spec, setup).compute.layer_traces[-1]
    deq = sorted(st.size.const for st in tr.saved if "dequantized weight" in st.label)
    assert deq == sorted([4096 * 4096, 4096 * 1024, 4096 * 1024, 4096 * 4096, 4096 * 14336, 4096 * 14336,
                          14336 * 4096])
    assert all(st.dtype == "bf16" for st in tr.saved if "dequantized weight" in st.label)
    e = estimate(spec, setup)
    # TritonV2's shift tables: two int32 [32/bits] tensors per layer (PackableQuantLinear.post_init)
    assert e.component("buffers/quant_kernel_workspace") == 32 * 7 * 2 * 512
    assert any("TritonV2Linear" in a for a in e.assumptions)


def test_device_map_keeps_the_stored_tensors():
    spec, setup = _qwen(QWEN_GPTQ, method="inference", batch=1, seq=1024, new_tokens=64)
    km = plan_kernel(spec, setup.with_(device_map="auto", gpus=2), model_states(spec, setup).structure,
                     resolve_gpu("a100-80gb"))
    assert km is not None and km.replaced == {} and km.persistent == 196 * 512
    assert any("--device-map" in w for w in km.unmodelled)


# --------------------------------------------------------------------------------------- the real library
def test_gptqmodel_sizing_when_installed():
    torch = pytest.importorskip("torch")
    pytest.importorskip("gptqmodel")
    import types

    from gptqmodel.nn_modules.qlinear.exllamav2 import ExllamaV2Linear
    from gptqmodel.utils import marlin as mu
    from gptqmodel.utils.exllamav2 import ScratchSpace

    orig = torch.cuda.get_device_properties
    try:
        for sms, numel in MARLIN_WORKSPACE_MEASURED.items():
            torch.cuda.get_device_properties = lambda d, s=sms: types.SimpleNamespace(multi_processor_count=s)
            assert mu.marlin_make_workspace_new("cpu").numel() == numel
    finally:
        torch.cuda.get_device_properties = orig
    for key, want in MARLIN_PAD_MEASURED.items():
        assert mu.marlin_padded_nk(*key) == want
    saved = ExllamaV2Linear.validate
    ExllamaV2Linear.validate = classmethod(lambda cls, **a: (True, None))
    try:
        with torch.device("meta"):
            mods = [ExllamaV2Linear(bits=4, group_size=128, desc_act=False, sym=True, in_features=i, out_features=o)
                    for _, i, o in QWEN_LINEARS]
    finally:
        ExllamaV2Linear.validate = saved
    fixed = max(m.scratch_space_fixed() for m in mods)
    ss = ScratchSpace(scratch_bytes=fixed, dev="meta")
    assert ss.scratch.numel() * ss.scratch.element_size() == EXLLAMA_SCRATCH_MEASURED


def test_torchlinear_train_mode_saves_the_dequantized_weight_when_installed():
    torch = pytest.importorskip("torch")
    pytest.importorskip("gptqmodel")
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear

    i, o = 256, 512
    m = TorchLinear(bits=4, group_size=128, sym=True, desc_act=False, in_features=i, out_features=o, bias=False,
                    register_buffers=True)
    with torch.no_grad():
        m.qweight.random_(-2**31, 2**31 - 1)
        m.qzeros.random_(-2**31, 2**31 - 1)
        m.g_idx.copy_(torch.arange(i, dtype=torch.int32) // 128)
    m.scales.data = torch.rand(m.scales.shape).to(torch.bfloat16)
    m._init_wf_unsqueeze_buffers()
    m.train()
    saved = []
    x = torch.randn(3, 5, i, dtype=torch.bfloat16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        m(x).sum().backward()
    assert [(tuple(t.shape), t.dtype) for t in saved] == [((i, o), torch.bfloat16)]
    assert m.wf_unsqueeze_zero.numel() * 4 == 32 and m.wf_unsqueeze_neg_one.numel() * 4 == 32


def test_marlin_desc_act_keeps_sorted_indices_and_stages_the_input():
    scheme = scheme_from_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True})
    lins = _lins()
    km = kernel_memory(scheme, lins, resolve_gpu("rtx-4090"), training=False)
    assert km.kernel == "marlin"
    # g_idx sorted in its own place, g_idx_sort_indices int32 [in] new (marlin.py:411-414), qzeros emptied
    assert km.persistent == len(lins) * 512 + sum(alloc(lin.in_f * 4) for lin in lins)
    assert km.replaced == {"weights/quant_constants": -28 * sum(alloc((i // 128) * (o // 8) * 4)
                                                               for _, i, o in QWEN_LINEARS)}
    # a_tmp: the permuted activations, rows x in in the input's dtype, the largest in being down_proj's 18,944
    assert km.scratch(100)[0] == alloc(128 * 64 * 256 * 4) + alloc(100 * FF * 2)


def test_awq_training_runs_gemm_without_buffers():
    spec, setup = _qwen(QWEN_AWQ, method="qlora", batch=1, seq=512, quant="awq")
    e = estimate(spec, setup.with_(lora=dataclasses.replace(setup.lora, targets=("q_proj", "v_proj"))))
    assert e.component("buffers/quant_kernel_workspace") == 0
    assert any("AwqGEMMLinear" in a for a in e.assumptions)
    assert any("auto_trainable" in w for w in e.warnings)
