"""The GPTQ and AWQ kernels a pre-quantized checkpoint runs with, and the device memory they add to its stored
tensors: workspaces, scratch, repacked indices, and the stored tensors their ``post_init`` frees.

transformers 5.24 loads GPTQ through optimum 2.3.0 (``GPTQQuantizer.convert_model`` then ``post_init_model``)
and AWQ through ``integrations/awq.py::replace_with_awq_linear`` then ``hf_gptqmodel_post_init``; both pick the
kernel with gptqmodel 7.7.0's ``utils/importer.py::hf_select_quant_linear_v2`` (backend ``auto`` unless the
config says otherwise): the highest ``SUPPORTS_FORMATS`` priority whose checks pass on the card. On CUDA,
GPTQ: Machete (100, compute 9.0 only, format ``gptq``), Marlin (90, compute >= 7.5, symmetric, 4/8 bits, group
-1/32/64/128), ExllamaV2 (80, 4 bits), TritonV2 (40); AWQ ``gemm``: Machete-AWQ (100, 9.0), Marlin-AWQ (90,
compute >= 8.0), ExllamaV2-AWQ (80, 4 bits), GEMM (60); AWQ ``gemv``: GEMV (40). ``torch_aten`` (110) is CPU
only. Training (``backend="auto_trainable"``, the only one that does not raise in ``model.train()``): GPTQ
TritonV2, whose train-mode forward is ``TorchLinear.forward`` (``tritonv2.py:179-180``), AWQ GEMM / GEMV.

What each allocates on the device (gptqmodel 7.7.0 file:line):

* Marlin (``nn_modules/qlinear/marlin.py::post_init``): a ``workspace`` of ``max(SMs, 128)`` int32 per layer
  (``:353``, ``utils/marlin.py:392-403``); without desc_act ``g_idx`` and ``qzeros`` become empty tensors
  (``:416-419``: their storage is freed); with desc_act ``g_idx`` is sorted in place of itself and
  ``g_idx_sort_indices`` (int32 ``[in]``) is new (``:411-414``); ``qweight``/``scales`` are repacked to the
  same element counts (``gptq_marlin_repack.cu:289-290``: ``[k/16, n·16/pack]``), zero-padded first when the
  shape is not a multiple of the 64x128 tile (``utils/marlin.py:420-440 marlin_padded_nk``). Per call
  (``gptqmodel_ext/marlin/gptq_marlin.cu:1160-1187``, ``marlin_scratch.cuh:45-73``): the fp32 reduction
  scratch ``c_tmp`` of ``SMs × min(round16(rows), 64) × 256`` floats (``use_fp32_reduce``: the default,
  ``GPTQMODEL_MARLIN_USE_FP32=1``, marlin.py:137), and for desc_act ``a_tmp`` = rows × in activations.
* Marlin-AWQ (``marlin_awq.py::post_init``): the same workspace per layer (``:271``); ``qweight``, ``scales``
  and ``qzeros`` repacked to the same sizes (``awq_marlin_repack``, ``awq_to_marlin_zero_points``); the same
  ``c_tmp`` per call (``apply_awq_marlin_linear``: ``use_fp32_reduce=True``).
* ExllamaV2 (``utils/model.py:1395-1422 gptqmodel_post_init``): one fp16 scratch per device of the largest
  ``scratch_space_fixed()`` = ``in·out·2 + 128 + out·2048·8·4 + 128`` (``exllamav2.py:177-184``, defaults
  ``max_input_len=2048, max_batch_size=8``); per layer whose ``g_idx`` is not all zero (more than one group)
  ``q_perm`` and ``q_invperm``, int16 ``[in]`` each (``exllamav2.py:222-228``). Per call on a bf16 model, the
  fp16 input copy and the fp16 output before its cast back (``:153-175``); above 50 rows the weight is
  reconstructed into the scratch (``q_gemm.cu`` ``MAX_Q_GEMM_ROWS``), no new allocation.
* ExllamaV2-AWQ (``exllamav2_awq.py``): the scratch of ``in·out·2 + 128 + out·2048·AWQ_BATCH_SIZE(1)·4 + 128``
  (``utils/model.py:1404-1411``).
* Machete (``machete.py::post_init``): ``qweight`` prepacked to the same size; symmetric: ``qzeros`` emptied
  (``:258-267``), asymmetric: fp16 zero points ``[groups, out]`` in its place (``:269-280``); desc_act: an int32
  ``input_perm`` ``[in]``. Per call: the scales cast to a bf16 input's dtype (``:305-307``), the permuted input
  (desc_act), and CUTLASS's ``get_workspace_size`` (not modelled). Machete-AWQ (``machete_awq.py``): fp16 zero
  points ``[groups, out]`` replace the int32 ``qzeros``.
* TritonV2 / Torch in training (``PackableQuantLinear._init_wf_unsqueeze_buffers``, ``__init__.py:985-1020``):
  two int32 shift tables per layer (``[1, 1, 32/bits]`` and ``[1, 32/bits, 1]``); the dequantized weight of
  every call is ``torch.matmul``'s saved operand (measured, see ``tests/estimate/test_quant_kernel_workspaces.py``),
  which ``layers.py`` counts as a saved activation.
* AWQ GEMM (``gemm_awq.py:72-77``): above 1,024 rows the whole weight is dequantized (fp16 ``[in, out]``).

No torch here: sizes are formulas of the shapes, the checkpoint's scheme and the card's SM count.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..dtypes import BYTES, alloc
from ..quantized import Scheme
from ..units import ceil_div

#: the library whose kernels are read
SOURCE = "gptqmodel 7.7.0"
#: ``marlin_make_workspace_new``: ``max(sms * max_blocks_per_sm, 128)`` int32 (utils/marlin.py:392-403)
MARLIN_MIN_WORKSPACE = 128
#: ``marlin.cuh:29 max_thread_n``; ``marlin_scratch.cuh:56-60``: split-M tiles of at most 64 rows
MARLIN_MAX_THREAD_N, MARLIN_MAX_M_BLOCK = 256, 64
#: ``ExllamaV2Linear.scratch_space_fixed(max_input_len=2048, max_batch_size=8)`` defaults (exllamav2.py:183)
EXLLAMA_INPUT_LEN, EXLLAMA_BATCH = 2048, 8
#: ``gptqmodel_post_init``: ``max_batch_size=int(os.getenv("AWQ_BATCH_SIZE", 1))`` for the AWQ ExllamaV2 layers
AWQ_EXLLAMA_BATCH = 1
#: ``AwqGemmFn.forward``: ``rows > 1024`` dequantizes the whole weight (gemm_awq.py:72)
AWQ_DENSE_ROWS = 1024
#: the SM count assumed when no card is named: Marlin's workspace floor, exact for every card of <= 128 SMs
DEFAULT_SMS = 128


@dataclass(frozen=True)
class Linear:
    """One quantized Linear: its module name and ``in``/``out`` features."""

    module: str
    in_f: int
    out_f: int


@dataclass(frozen=True)
class KernelMemory:
    """The device memory a GPTQ/AWQ kernel adds to the checkpoint's stored tensors.

    Attributes:
        kernel: ``marlin``, ``machete``, ``exllamav2``, ``tritonv2``, ``awq_marlin``, ``awq_machete``,
            ``awq_exllamav2``, ``awq_gemm``, ``awq_gemv`` or ``torch``.
        why: how gptqmodel's auto selection reaches it on this card.
        persistent: allocator bytes ``post_init`` adds for the whole run (workspaces, scratch, indices).
        persistent_formula: its formula, with the source lines.
        replaced: ``{component: signed allocator bytes}``: what ``post_init`` frees or grows of the stored
            tensors (``weights/quant_constants`` less the emptied ``qzeros``/``g_idx``, ...).
        replaced_formula: its formula.
        sms: the SM count used, and whether it is the card's (``sms_known``).
        unmodelled: what this kernel allocates that is not counted (warnings).
    """

    kernel: str
    why: str
    persistent: int = 0
    persistent_formula: str = ""
    replaced: dict[str, int] = field(default_factory=dict)
    replaced_formula: str = ""
    sms: int = DEFAULT_SMS
    sms_known: bool = False
    linears: tuple[Linear, ...] = ()
    scheme: Scheme | None = None
    act_dtype: str = "bf16"
    unmodelled: tuple[str, ...] = ()

    def scratch(self, rows: int) -> tuple[int, str]:
        """The largest temporary one quantized matmul allocates at ``rows`` activation rows (batch × tokens),
        and its formula: counted as alive at the inference peak (an upper bound: the peak op is not always a
        quantized matmul)."""
        return call_scratch(self, rows)


# ---------------------------------------------------------------------------------------------- the card
def _capability(gpu: Any) -> tuple[int, int] | None:
    cc = str(getattr(gpu, "compute_capability", "") or "") if gpu is not None else ""
    parts = [int(x) for x in cc.split(".")[:2] if x.isdigit()]
    return (parts[0], parts[1] if len(parts) > 1 else 0) if parts else None


def card_sms(gpu: Any) -> tuple[int, bool]:
    """The card's SM count (``profiles/gpus.yaml sm_count``) and whether it is known; else Marlin's floor."""
    n = int(getattr(gpu, "sm_count", 0) or 0) if gpu is not None else 0
    return (n, True) if n > 0 else (DEFAULT_SMS, False)


# ---------------------------------------------------------------------------------------------- selection
def select_kernel(scheme: Scheme, gpu: Any, training: bool, linears: tuple[Linear, ...] = ()) -> tuple[str, str]:
    """The kernel gptqmodel 7.7.0's auto selection (``auto_trainable`` in training) gives ``scheme`` on ``gpu``,
    and why. A card without a compute capability (none named, or a size) is taken as Ampere/Ada (compute 8.x)."""
    cc = _capability(gpu)
    named = cc is not None
    cc = cc or (8, 0)
    vendor = str(getattr(gpu, "vendor", "") or "") if gpu is not None else ""
    where = (f"{getattr(gpu, 'name', 'the card')} (compute {cc[0]}.{cc[1]})" if named
             else "no card named: taken as compute 8.x (Ampere/Ada)")
    if vendor == "amd":
        return "torch", (f"{where}: ROCm has neither Marlin, Machete nor the CUDA ExllamaV2 / AWQ kernels "
                         "(SUPPORTS_DEVICES, validate_device): the Torch kernels")
    if scheme.quant == "gptq":
        if training:
            return "tritonv2", (f"{where}: auto_trainable skips SUPPORTS_TRAINING = False kernels (Machete, "
                                "Marlin, ExllamaV2): TritonV2Linear (priority 40), whose train-mode forward is "
                                "TorchLinear.forward (tritonv2.py:179-180)")
        g, bits = scheme.group_size, scheme.bits
        if cc == (9, 0) and (scheme.fmt or "gptq") == "gptq" and bits in (4, 8) and g in (-1, 64, 128) \
                and all(lin.in_f % 64 == 0 and lin.out_f % 128 == 0 for lin in linears):
            return "machete", (f"{where}: Machete (priority 100; compute 9.0 exactly, format gptq, "
                               "utils/machete.py:56) when its extension builds (a CUTLASS checkout, fetched on "
                               "first use), else Marlin")
        if cc >= (7, 5) and scheme.sym and bits in (4, 8) and g in (-1, 32, 64, 128):
            return "marlin", f"{where}: Marlin (priority 90; compute >= 7.5, symmetric, 4/8 bits, group -1/32/64/128)"
        if bits == 4 and g in (-1, 32, 64, 128) and all(lin.in_f % 32 == 0 and lin.out_f % 32 == 0 for lin in linears):
            return "exllamav2", (f"{where}: ExllamaV2 (priority 80; 4 bits, group -1/32/64/128"
                                 + ("" if scheme.sym else "; Marlin takes symmetric weights only")
                                 + ("" if cc >= (7, 5) else "; Marlin needs compute >= 7.5") + ")")
        return "tritonv2", f"{where}: TritonV2 (priority 40): no fused kernel takes {bits} bits, group {g}"
    fmt = scheme.fmt or "gemm"
    if fmt == "gemv":
        return "awq_gemv", f"{where}: AWQ GEMV (the only CUDA kernel of the gemv format, priority 40)"
    if training:
        return "awq_gemm", (f"{where}: auto_trainable skips Machete-AWQ, Marlin-AWQ and ExllamaV2-AWQ "
                            "(SUPPORTS_TRAINING = False): AwqGEMMLinear (priority 60)")
    if cc == (9, 0) and all(lin.in_f % 64 == 0 and lin.out_f % 128 == 0 for lin in linears) \
            and scheme.group_size in (-1, 32, 64, 128):
        return "awq_machete", (f"{where}: Machete-AWQ (priority 100; compute 9.0) when its extension builds, "
                               "else Marlin-AWQ")
    if cc >= (8, 0) and scheme.group_size in (-1, 32, 64, 128):
        return "awq_marlin", f"{where}: Marlin-AWQ (priority 90; compute >= 8.0, marlin_awq.py:45)"
    if scheme.group_size in (-1, 32, 64, 128) and all(lin.in_f % 32 == 0 and lin.out_f % 32 == 0 for lin in linears):
        return "awq_exllamav2", f"{where}: ExllamaV2-AWQ (priority 80; Marlin-AWQ needs compute >= 8.0)"
    return "awq_gemm", f"{where}: AWQ GEMM (priority 60)"


# ---------------------------------------------------------------------------------------------- persistent
def _groups(lin: Linear, g: int) -> int:
    return ceil_div(lin.in_f, lin.in_f if g == -1 else g)


def exllama_scratch_bytes(linears: tuple[Linear, ...], awq: bool = False) -> int:
    """``ScratchSpace(max(scratch_space_fixed()))``: fp16 ``scratch_bytes // 2`` elements (utils/exllamav2.py:23-30);
    GPTQ's ``max_batch_size=8``, AWQ's ``AWQ_BATCH_SIZE`` (1), ``max_input_len`` 2048 both (utils/model.py:1398-1411)."""
    batch = AWQ_EXLLAMA_BATCH if awq else EXLLAMA_BATCH
    fixed = max((lin.in_f * lin.out_f * 2 + 128 + lin.out_f * EXLLAMA_INPUT_LEN * batch * 4 + 128
                 for lin in linears), default=0)
    return (fixed // 2) * 2


def marlin_workspace_bytes(sms: int) -> int:
    """One layer's Marlin workspace: ``max(sms, 128)`` int32 (``marlin_make_workspace_new``)."""
    return max(sms, MARLIN_MIN_WORKSPACE) * 4


def marlin_padded_nk(n: int, k: int, group: int) -> tuple[int, int]:
    """``utils/marlin.py:420-440 marlin_padded_nk``: the smaller of the two tile orientations (64 x 128, 128 x 64)."""
    from math import lcm

    g = group if group > 0 else 1
    a = (ceil_div(n, 64) * 64, ceil_div(k, lcm(128, g)) * lcm(128, g))
    b = (ceil_div(n, 128) * 128, ceil_div(k, lcm(64, g)) * lcm(64, g))
    return min((a, b), key=lambda nk: (nk[0] * nk[1], nk[0] + nk[1]))


def kernel_memory(scheme: Scheme, linears: tuple[Linear, ...], gpu: Any, *, training: bool,
                  act_dtype: str = "bf16") -> KernelMemory:
    """What the kernel that runs ``scheme`` on ``gpu`` allocates besides the stored tensors (``linears``: the
    quantized Linears, bias apart)."""
    kernel, why = select_kernel(scheme, gpu, training, linears)
    sms, known = card_sms(gpu)
    n = len(linears)
    g, bits = scheme.group_size, scheme.bits
    common = dict(kernel=kernel, why=why, sms=sms, sms_known=known, linears=linears, scheme=scheme,
                  act_dtype=act_dtype)
    sm_text = (f"{sms} SMs" if known else f"SM count unknown: {DEFAULT_SMS} (Marlin's floor; a card of more SMs "
               "gets max(SMs, 128))")
    if kernel in ("marlin", "awq_marlin"):
        ws = alloc(marlin_workspace_bytes(sms))
        persistent = n * ws
        pf = (f"{kernel}: a workspace per layer, torch.zeros(max(SMs, 128)) int32 = {marlin_workspace_bytes(sms):,} B "
              f"({alloc(marlin_workspace_bytes(sms)):,} B allocated; {sm_text}) × {n} quantized Linears = {persistent:,} B "
              f"({SOURCE} {'marlin.py:353' if kernel == 'marlin' else 'marlin_awq.py:271'}, "
              "utils/marlin.py:392-403)")
        replaced: dict[str, int] = {}
        notes = []
        desc = kernel == "marlin" and scheme.desc_act and g not in (-1,)
        pad_q = pad_s = 0
        for lin in linears:
            gg = -1 if g == lin.in_f else g
            if kernel == "marlin" and desc and gg != -1:
                pn, pk = lin.out_f, lin.in_f
            else:
                pn, pk = marlin_padded_nk(lin.out_f, lin.in_f, gg)
            if (pn, pk) != (lin.out_f, lin.in_f):
                word = 32 // bits
                if kernel == "marlin":
                    q0, q1 = ceil_div(lin.in_f * bits, 32) * lin.out_f * 4, (pk // word) * pn * 4
                else:
                    q0, q1 = lin.in_f * ceil_div(lin.out_f * bits, 32) * 4, pk * (pn // word) * 4
                gs0, gs1 = _groups(lin, g), (1 if gg == -1 else pk // gg)
                pad_q += alloc(q1) - alloc(q0)
                pad_s += alloc(gs1 * pn * 2) - alloc(gs0 * lin.out_f * 2)
                if kernel == "awq_marlin":
                    pad_s += alloc(gs1 * (pn // word) * 4) - alloc(gs0 * ceil_div(lin.out_f * bits, 32) * 4)
        if pad_q:
            replaced["weights/quantized"] = pad_q
            notes.append(f"tile padding of misaligned shapes (marlin_padded_nk): qweight {pad_q:+,} B, "
                         f"scales/zeros {pad_s:+,} B")
        freed = 0
        if kernel == "marlin":
            for lin in linears:
                qz = alloc(_groups(lin, g) * ceil_div(lin.out_f * bits, 32) * 4)
                gi = alloc(lin.in_f * 4)
                lin_desc = desc and g != lin.in_f
                freed += qz + (0 if lin_desc else gi)
                if lin_desc:
                    persistent += alloc(lin.in_f * 4)
            notes.append(f"post_init empties qzeros{'' if desc else ' and g_idx'} (marlin.py:416-419), "
                         f"{freed:,} B" + (" ; desc_act: g_idx_sort_indices int32 [in] per layer, added to the "
                                             "workspace (marlin.py:411-414)" if desc else ""))
            if desc:
                pf += "; + desc_act g_idx_sort_indices int32 [in] per layer (marlin.py:411-414)"
        replaced["weights/quant_constants"] = pad_s - freed
        return KernelMemory(persistent=persistent, persistent_formula=pf,
                            replaced={k: v for k, v in replaced.items() if v},
                            replaced_formula="; ".join(notes), **common)
    if kernel in ("exllamav2", "awq_exllamav2"):
        awq = kernel == "awq_exllamav2"
        scratch = exllama_scratch_bytes(linears, awq)
        big = max(linears, key=lambda lin: lin.in_f * lin.out_f * 2 + lin.out_f * EXLLAMA_INPUT_LEN
                  * (AWQ_EXLLAMA_BATCH if awq else EXLLAMA_BATCH) * 4, default=None)
        batch = AWQ_EXLLAMA_BATCH if awq else EXLLAMA_BATCH
        pf = (f"{kernel}: one fp16 scratch per device of the largest scratch_space_fixed() = in·out·2 + 128 + "
              f"out·{EXLLAMA_INPUT_LEN}·{batch}·4 + 128"
              + (f" ({big.module}: {big.in_f:,} × {big.out_f:,})" if big else "") + f" = {scratch:,} B ({SOURCE} "
              + ("exllamav2_awq.py:168-186" if awq else "exllamav2.py:177-184") + ", utils/model.py:1395-1422)")
        persistent = alloc(scratch)
        if not awq and g != -1:
            perms = sum(2 * alloc(lin.in_f * 2) for lin in linears if _groups(lin, g) > 1)
            persistent += perms
            pf += (f"; + q_perm and q_invperm int16 [in] per layer with more than one group ({perms:,} B; "
                   "exllamav2.py:222-228: g_idx = i // group is not all zero)")
        return KernelMemory(persistent=persistent, persistent_formula=pf, **common)
    if kernel in ("machete", "awq_machete"):
        delta, persistent = 0, 0
        for lin in linears:
            groups = _groups(lin, g)
            qz = alloc(groups * ceil_div(lin.out_f * bits, 32) * 4)
            if kernel == "awq_machete" or not scheme.sym:
                delta += alloc(groups * lin.out_f * 2) - qz       # fp16 zero points [groups, out] replace qzeros
            else:
                delta -= qz
            if kernel == "machete" and scheme.desc_act and g != -1:
                persistent += alloc(lin.in_f * 4)
        text = ("post_init replaces the int32 qzeros by fp16 zero points [groups, out] (machete_awq.py post_init)"
                if kernel == "awq_machete" or not scheme.sym else
                "post_init empties the symmetric checkpoint's qzeros (machete.py:258-267); g_idx is kept")
        pf = (f"desc_act: input_perm int32 [in] per layer = {persistent:,} B (machete.py:227)" if persistent else "")
        return KernelMemory(persistent=persistent, persistent_formula=pf,
                            replaced={"weights/quant_constants": delta} if delta else {},
                            replaced_formula=f"{text}: {delta:+,} B", **common,
                            unmodelled=("Machete's CUTLASS workspace per call (MacheteKernel::get_workspace_size, "
                                        "machete_mm_launcher.cuh:66-68) is not counted",))
    if kernel == "tritonv2" or (kernel == "torch" and scheme.quant == "gptq"):
        wf = ceil_div(32, bits) * 4 if bits in (2, 4, 8) else 36 * 4
        persistent = n * 2 * alloc(wf)
        pf = (f"{kernel}: two int32 shift tables per layer (wf_unsqueeze_zero [1, 1, {32 // bits if bits != 3 else 12}] "
              f"and wf_unsqueeze_neg_one, {wf} B each, {alloc(wf)} B allocated) × {n} quantized Linears = {persistent:,} B "
              f"({SOURCE} nn_modules/qlinear/__init__.py:985-1020 PackableQuantLinear.post_init)")
        return KernelMemory(persistent=persistent, persistent_formula=pf, **common)
    return KernelMemory(**common)


# ---------------------------------------------------------------------------------------------- per call
def call_scratch(km: KernelMemory, rows: int) -> tuple[int, str]:
    """The largest temporary of one quantized matmul at ``rows`` rows (see :meth:`KernelMemory.scratch`)."""
    s, lins, k = km.scheme, km.linears, km.kernel
    if not lins or s is None or rows <= 0:
        return 0, ""
    act = BYTES[km.act_dtype] if km.act_dtype in BYTES else 2
    if k in ("marlin", "awq_marlin"):
        m_block = min(ceil_div(rows, 16) * 16, MARLIN_MAX_M_BLOCK)
        c_tmp = km.sms * m_block * MARLIN_MAX_THREAD_N * 4
        a_tmp = 0
        if k == "marlin" and s.desc_act and s.group_size != -1:
            a_tmp = max(alloc(rows * lin.in_f * act) for lin in lins if lin.in_f != s.group_size)
        total = alloc(c_tmp) + a_tmp
        return total, (f"Marlin's fp32 reduction scratch c_tmp = SMs {km.sms} × min(round16(rows {rows:,}), 64) "
                       f"× 256 × 4 B = {c_tmp:,} B" + (f" + desc_act a_tmp rows × in × {act} B = {a_tmp:,} B"
                                                      if a_tmp else "")
                       + " per call (gptq_marlin.cu:1160-1187, marlin_scratch.cuh:45-73; use_fp32_reduce is the "
                       "default)")
    if k == "exllamav2" and km.act_dtype != "fp16":
        big = max(alloc(rows * lin.in_f * 2) + alloc(rows * lin.out_f * 2) for lin in lins)
        return big, (f"ExllamaV2 on a {km.act_dtype} model: the fp16 copy of the input and the fp16 output before "
                     f".to({km.act_dtype}), rows {rows:,} × (in + out) × 2 B for the largest layer = {big:,} B "
                     "(exllamav2.py:153-175)")
    if k == "machete":
        parts = []
        total = 0
        if km.act_dtype != "fp16":
            sc = max(alloc(_groups(lin, s.group_size) * lin.out_f * act) for lin in lins)
            total += sc
            parts.append(f"the scales cast to {km.act_dtype}, {sc:,} B (machete.py:305-307)")
        if s.desc_act and s.group_size != -1:
            pa = max(alloc(rows * lin.in_f * act) for lin in lins)
            total += pa
            parts.append(f"the permuted input, {pa:,} B (machete.py:299-303)")
        return total, ("Machete per call: " + "; ".join(parts)) if parts else ""
    if k == "awq_gemm" and rows > AWQ_DENSE_ROWS:
        big = max(alloc(lin.in_f * lin.out_f * 2) for lin in lins)
        return big, (f"AWQ GEMM above {AWQ_DENSE_ROWS:,} rows dequantizes the whole weight, fp16 in × out × 2 B "
                     f"for the largest layer = {big:,} B (gemm_awq.py:72-77)")
    if k in ("tritonv2", "torch") and s.quant == "gptq":
        big = max(alloc(lin.in_f * lin.out_f * 2) for lin in lins)
        return big, (f"{k} (inference): the dequantized weight of one call, in × out × 2 B for the largest layer = "
                     f"{big:,} B (triton_utils/dequant.py QuantLinearFunction: dequantize, then torch.matmul)")
    return 0, ""


# ---------------------------------------------------------------------------------------------- in a plan
def quantized_linears(placements: Any) -> tuple[Linear, ...]:
    """The GPTQ/AWQ Linears of a placement list (``weights.py``: a weight's shape is ``(out, in)``)."""
    return tuple(Linear(p.tensor.module, p.tensor.shape[1], p.tensor.shape[0]) for p in placements
                 if p.quant in ("gptq", "awq") and p.tensor.param_name == "weight")


def plan_kernel(spec: Any, setup: Any, structure: Any, gpu: Any) -> KernelMemory | None:
    """The kernel memory of ``setup`` on a GPTQ/AWQ base (``None`` otherwise). AWQ runs in fp16 on CUDA
    (``quantizer_awq.update_dtype``), GPTQ in the setup's compute dtype."""
    if not getattr(setup, "quantized", False) or setup.quant not in ("gptq", "awq"):
        return None
    from ..quantized import setup_scheme

    lins = quantized_linears(structure.placements)
    if not lins:
        return None
    act = "fp16" if setup.quant == "awq" else setup.compute_dtype
    km = kernel_memory(setup_scheme(setup, spec.config), lins, gpu, training=setup.training, act_dtype=act)
    if getattr(setup, "device_map", "none") != "none" and (km.replaced or km.persistent):
        # a split model: the stored tensors stay as transformers sizes them per device (device_map.py); the
        # kernel's buffers are counted whole, its post_init frees not at all
        km = replace(km, replaced={}, replaced_formula="", unmodelled=km.unmodelled + (
            f"--device-map {setup.device_map}: {km.kernel}'s buffers are counted whole (one ExllamaV2 scratch per "
            "device and the per-layer workspaces are not split by device) and what its post_init frees of the "
            "stored tensors is not subtracted",))
    return km


def inference_terms(km: KernelMemory | None, batch: int, prompt: int) -> tuple[int, int, int]:
    """``(after post_init, prefill scratch, decode scratch)`` bytes an inference run adds to the stored weights:
    the persistent buffers plus what ``post_init`` grew or freed, and the largest per-call scratch at the
    prefill's ``batch × prompt`` rows and the decode's ``batch`` rows."""
    if km is None:
        return 0, 0, 0
    return (km.persistent + sum(km.replaced.values()), km.scratch(batch * prompt)[0], km.scratch(batch)[0])


def kernel_notes(km: KernelMemory | None) -> tuple[list[str], list[str]]:
    """The assumption that names the kernel and what is counted for it, and the warnings for the rest."""
    if km is None:
        return [], []
    label = "GPTQ" if km.scheme is not None and km.scheme.quant == "gptq" else "AWQ"
    a = [f"{label} kernel ({SOURCE} selection): {km.why}; the model loaded with a GPU device_map "
         "(from_pretrained(device_map='cuda' or 'auto'): the kernel is chosen for the device_map's devices, and "
         "without one transformers loads a GPTQ model on the CPU, quantizer_gptq.py update_device_map)"]
    w = list(km.unmodelled)
    w.append("importing gptqmodel sets PYTORCH_ALLOC_CONF='expandable_segments:True,max_split_size_mb:256,"
             "garbage_collection_threshold:0.7' when it is unset (gptqmodel 7.7.0 models/auto.py:26-28): "
             "overhead/allocator assumes the default caching allocator")
    if not km.sms_known and km.kernel in ("marlin", "awq_marlin"):
        w.append(f"{km.kernel}: the card's SM count is unknown (no --gpu from the catalogue): its workspace and "
                 f"fp32 reduction scratch are sized for {DEFAULT_SMS} SMs (Marlin's workspace floor; exact for "
                 "cards of <= 128 SMs, low for H100/H200 132, B200 148)")
    if km.kernel == "awq_gemv":
        w.append("AWQ GEMV kernel temporaries are not counted (gemv_awq.py)")
    if km.kernel == "torch":
        w.append("the Torch GPTQ/AWQ kernels on ROCm dequantize per call: their temporaries are not counted")
    if km.kernel == "machete" and km.linears and km.scheme is not None:
        big = max(km.linears, key=lambda lin: lin.in_f * lin.out_f)
        q = ceil_div(big.in_f * km.scheme.bits, 32) * big.out_f * 4
        t = alloc(big.in_f * big.out_f * 4) + 2 * alloc(q)
        w.append(f"machete: post_init unpacks each qweight to int32 codes before prepacking (machete.py:231-244): "
                 f"while loading, the largest Linear ({big.in_f:,} x {big.out_f:,}) holds about {t:,} B beyond the "
                 "stored tensors (in x out x 4 B codes + two qweight-sized copies); not in the load phase")
    if km.kernel in ("machete", "awq_machete"):
        w.append(f"{km.kernel}: if its extension does not build (no CUTLASS checkout or nvcc), gptqmodel falls back "
                 "to Marlin, whose per-layer workspace and reduction scratch are not the figures counted here")
    return a, w
