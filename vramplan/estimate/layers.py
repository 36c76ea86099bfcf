"""Decoder-layer forward programs, replayed on the symbolic tracer (``graph.py``).

One program covers the families vramplan knows, switched by what the spec contains (fused q/k/v, gated
MLP, MoE experts, q/k norms, sandwich norms, parallel residual, rotary or learned positions). Each op
follows the installed library code (transformers 5.23, peft 0.21.2, bitsandbytes 0.50.2, torch 2.13):

* norms — ``LlamaRMSNorm.forward`` (``hidden_states.to(float32)``, ``pow(2)``, ``rsqrt``, then
  ``weight * hidden_states.to(input_dtype)``: the weight is a parameter, only the normalized input is
  saved for the weight's gradient); ``GemmaRMSNorm`` (``x.float()``, ``* (1 + weight.float())`` — a new
  fp32 vector —, ``type_as``); ``nn.LayerNorm`` (``native_layer_norm`` saves its input and the fp32
  ``mean``/``rstd`` per row; CUDA autocast runs ``layer_norm`` in fp32, so the saved input is an fp32 copy).
* linear layers — frozen 16-bit (``F.linear``), trainable, ``bnb.nn.Linear4bit.forward`` (input cast to
  the compute dtype, ``MatMul4Bit`` keeps only the packed weight, output cast back to the input dtype),
  ``Linear8bitLt``; wrapped by ``peft.tuners.lora.layer.Linear.forward`` (input cast to the adapter dtype
  by ``_cast_input_dtype``) or ``peft.tuners.lora.bnb.Linear4bit.forward`` (``result.clone()``; no input
  cast under (CUDA) autocast). Under autocast the fp32 adapter weights are cast to the autocast dtype
  (``cached_cast``) and those copies are saved by the adapter matmuls.
* attention — ``transformers/integrations/sdpa_attention.py`` (no ``repeat_kv`` when GQA can be passed to
  SDPA: no mask, head_dim <= 256) and the flash / memory-efficient kernels, which save q, k, v, the output
  and a per-row logsumexp (``aten/src/ATen/native/transformers``: O(seq), not O(seq^2)). The flash output
  is laid out like q: for q made by elementwise rope on a ``transpose(1, 2)`` view it is (B, S, H, D) in
  memory and the model's ``transpose(1, 2).reshape().contiguous()`` is a view; for families whose rope ends
  in ``torch.cat`` (phi, phi3, gpt_neox partial rotary) q is contiguous (B, H, S, D) and the output is
  copied. Eager attention (``eager_attention_forward``) materializes the scores and saves the fp32
  softmax output; gemma2's ``attn_logit_softcapping`` adds ``tanh`` (saves its output) and makes
  transformers refuse sdpa (``_supports_sdpa = False``), so ``--attn sdpa`` runs eager there.
* KV cache — with ``config.use_cache`` (the default) the model builds a ``DynamicCache`` even in training
  (``LlamaModel.forward``) and ``DynamicCache.update`` returns ``torch.cat`` copies of k and v: those
  copies are what attention sees and saves. ``GradientCheckpointingLayer`` drops the cache.
* MLP — ``act_fn(gate_proj(x)) * up_proj(x)`` then ``down_proj``; ``gelu_new`` (``NewGELUActivation``) is
  a Python composite that saves four tensors of the input's size. MoE: transformers 5 routers
  (``*TopKRouter``: fp32 softmax, ``topk``, in-place renormalization) and fused experts through
  ``integrations/moe.py::grouped_mm_experts_forward`` (tokens sorted by expert, ``_grouped_mm`` — not
  autocast-enabled, it runs in the expert weights' dtype —, routing-weight multiply, unsort, sum).
  LoRA on expert parameters (``peft.tuners.lora.layer.ParamWrapper``) folds ``W + scaling * lhs @ rhs`` with
  one ``baddbmm`` per forward (``_LoraFactorsProxy``): a new tensor the size of the whole expert stack,
  saved by ``_grouped_mm`` for the input gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..dtypes import BYTES, torchao_nf4_dequant_bytes
from ..lora import LoraPlan
from ..quantized import CHECKPOINT_QUANTS
from ..setup import Setup
from ..shapes.spec import ModelSpec
from ..stacks import STACKS
from ..versions import runs_before
from .graph import Size, Sym, Tracer, tok
from .weights import Placement, nf4_kernel

GATED_ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_new": "gelu_new",
              "gelu_fast": "gelu", "gelu_tanh": "gelu", "relu": "relu", "quick_gelu": "gelu"}

#: config keys of residual / hidden dropout per family (active in training when > 0)
RESID_DROPOUT_KEYS = ("resid_pdrop", "hidden_dropout", "dropout")

#: families whose rotary embedding ends in ``torch.cat([rotated, passthrough])`` (partial rotary): q comes out
#: contiguous (B, H, S, D) and the flash output, laid out like q, needs a copy before ``o_proj``
CAT_ROPE_FAMILIES = ("phi", "phi3", "gpt_neox")

#: families that route MoE tokens with a renormalized top-k always (Mixtral) or by ``norm_topk_prob``
ALWAYS_NORM_TOPK = ("mixtral",)


def quant_state_dtype(setup: Setup) -> str:
    """The dtype bitsandbytes' ``QuantState`` records for a 4-bit weight, which ``dequantize_4bit`` returns: the
    dtype the weight was quantized from (bitsandbytes 0.50.2 functional.py ``quantize_4bit``: ``QuantState(...,
    dtype=A.dtype)``; ``dequantize_4bit``: ``out`` in ``quant_state.dtype``).

    transformers quantizes each weight as loaded, in the compute dtype. Lightning's ``_Linear4bit.quantize`` casts
    to fp16 first whatever the precision (lightning 2.6.6 fabric/plugins/precision/bitsandbytes.py:336-351
    ``weight.contiguous().to(device=device, dtype=torch.half)``; ``to_empty``/``reset_parameters`` :352-382), so
    under LitGPT's bf16-true every dequantized weight is an fp16 copy, then a bf16 cast (its CUDA path; on CPU the
    plugin leaves the weight's own dtype). ``--quant-state-dtype`` states it (``--stack litgpt``: fp16).
    """
    return "fp16" if setup.quant_state_dtype == "fp16" else setup.compute_dtype


class UnknownLayout(Exception):
    """A decoder layer whose modules the replay cannot map onto a known program (a family outside the tables):
    the structure falls back to coefficients calibrated by simulation (``structure.py``). Raised only where
    the layout is checked — any other exception from the replay is a bug and propagates."""


@dataclass
class Lin:
    """A linear (or Conv1D, or fused expert) weight as it runs: storage, trainability, LoRA adapter."""

    name: str
    in_f: int
    out_f: int
    wdtype: str                      # "fp32"/"bf16"/"fp16", or "nf4"/"fp4"/"int8"
    trainable: bool
    lora_r: int = 0                  # rank of lora_A/lora_B (for a ParamWrapper: r_eff * num_experts)
    lora_dtype: str = "fp32"
    dropout: float = 0.0
    dora: bool = False
    param_lora: bool = False         # LoRA through peft's ParamWrapper (a parameter, not a module)

    @property
    def quantized(self) -> bool:
        return self.wdtype in ("nf4", "fp4", "int8", *CHECKPOINT_QUANTS)

    def key(self) -> tuple:
        return (self.in_f, self.out_f, self.wdtype, self.trainable, self.lora_r, self.lora_dtype, self.dropout,
                self.dora, self.param_lora)


@dataclass
class Norm:
    name: str
    dim: int
    wdtype: str
    trainable: bool


@dataclass
class LayerInfo:
    index: int
    lin: dict[str, Lin] = field(default_factory=dict)      # by role
    norms: dict[str, Norm] = field(default_factory=dict)   # by module leaf name
    experts: Lin | None = None                             # fused experts gate_up [E, 2I, H] (per expert in/out)
    experts_down: Lin | None = None                        # fused experts down [E, H, I]
    expert_wdtype: str = "bf16"
    router: Lin | None = None

    def role(self, role: str, what: str) -> Lin:
        """The linear of ``role``; :class:`UnknownLayout` when this layer has none (a family the replay does not
        know names its modules otherwise)."""
        lin = self.lin.get(role)
        if lin is None:
            raise UnknownLayout(f"layer {self.index} has no {role!r} linear ({what}); its roles: "
                                f"{', '.join(sorted(self.lin)) or 'none'}")
        return lin

    def key(self) -> tuple:
        """Everything the traced program depends on: layers with equal keys share one trace."""
        lin = tuple(sorted((r, *v.key()) for r, v in self.lin.items()))
        norms = tuple(sorted((k, n.dim, n.wdtype, n.trainable) for k, n in self.norms.items()))
        moe = tuple(None if x is None else x.key() for x in (self.experts, self.experts_down, self.router))
        return lin, norms, moe


def build_layers(spec: ModelSpec, placements: list[Placement], plan: LoraPlan | None,
                 setup: Setup) -> list[LayerInfo]:
    """Per-layer module facts needed by the forward program."""
    layers = [LayerInfo(i) for i in range(spec.num_layers)]
    adapters = {a.module: a for a in plan.adapters if a.parameter is None and not a.frozen} \
        if plan is not None else {}
    # ParamWrapper adapters (MoE expert stacks, router weights), keyed by the full parameter name
    param_adapters = {a.name: a for a in plan.adapters if a.parameter is not None and not a.frozen} \
        if plan is not None else {}
    lcfg = plan.config if plan is not None else None
    for p in placements:
        t = p.tensor
        if t.layer is None or t.layer >= spec.num_layers:
            continue
        layer = layers[t.layer]
        leaf = t.module.rpartition(".")[2]
        if t.module_type == "norm" and t.param_name == "weight":
            layer.norms[leaf] = Norm(t.module, t.shape[0], p.dtype, p.trainable)
        elif t.module_type in ("linear", "conv1d") and t.param_name == "weight" and t.role not in ("bias",):
            in_f, out_f = (t.shape[1], t.shape[0]) if t.module_type == "linear" else (t.shape[0], t.shape[1])
            a = adapters.get(t.module)
            lin = Lin(t.module, in_f, out_f, p.dtype if p.quant == "none" else p.quant, p.trainable)
            if a is not None and lcfg is not None:
                lin.lora_r, lin.lora_dtype = a.rank, setup.adapter_weight_dtype
                lin.dropout, lin.dora = lcfg.dropout, lcfg.dora
            role = t.role
            if role in layer.lin:              # two modules with one role (e.g. gpt2 cross-attn): keep both
                role = f"{role}#{t.module}"
            layer.lin[role] = lin
        elif t.module_type == "experts" and t.role in ("moe_experts_gate_up", "moe_experts_down") \
                and len(t.shape) == 3:
            lin = Lin(t.name, t.shape[2], t.shape[1], p.dtype, p.trainable)
            a = param_adapters.get(t.name)
            if a is not None:
                lin.lora_r, lin.lora_dtype, lin.param_lora = a.rank, _param_lora_dtype(p, setup), True
            if t.role == "moe_experts_gate_up":
                layer.experts, layer.expert_wdtype = lin, p.dtype
            else:
                layer.experts_down = lin
        elif t.role == "moe_router":
            lin = Lin(t.module, t.shape[1], t.shape[0], p.dtype, p.trainable)
            a = param_adapters.get(t.name)
            if a is not None:
                lin.lora_r, lin.lora_dtype, lin.param_lora = a.rank, _param_lora_dtype(p, setup), True
            layer.router = lin
    return layers


def _param_lora_dtype(p: Placement, setup: Setup) -> str:
    """dtype of a ParamWrapper's lora_A/lora_B: ``_move_adapter_to_device_of_base_layer`` gives them the wrapped
    parameter's dtype (fp32 after ``prepare_model_for_kbit_training``), and ``autocast_adapter_dtype`` (mixed
    precision, or ``--adapter-dtype fp32``) upcasts 16-bit adapters to fp32 — measured on peft 0.21.2
    (tests/estimate)."""
    return "fp32" if setup.adapter_weight_dtype == "fp32" else p.dtype


class Program:
    """Replays one decoder layer on a :class:`Tracer` for a given spec and setup."""

    def __init__(self, spec: ModelSpec, setup: Setup, kernel: str | None = None) -> None:
        """``kernel``: the library running the nf4 weights (:func:`vramplan.estimate.weights.nf4_kernel`, the
        default): ``"bnb"`` (``MatMul4Bit``) or ``"torchao"`` (``linear_nf4``, torchtune)."""
        self.spec = spec
        self.setup = setup
        self.nf4_kernel = nf4_kernel(setup) if kernel is None else kernel
        self.c = setup.compute_dtype
        mt = spec.model_type
        self.gemma_norm = mt.startswith("gemma")
        self.litgpt_model = STACKS[setup.stack].litgpt_model
        self.fp32_scale_norm = STACKS[setup.stack].rms_norm_fp32_scale
        self.rotary = mt not in ("gpt2", "opt", "bloom") and not (mt == "falcon" and spec.config.get("alibi"))
        self.cat_rope = mt in CAT_ROPE_FAMILIES
        self.parallel = (mt == "phi" or (mt == "gpt_neox" and spec.config.get("use_parallel_residual", True))
                         or (mt == "falcon" and (spec.config.get("parallel_attn", True)
                                                 or spec.config.get("new_decoder_architecture"))))
        act_name = str(spec.hidden_act).lower()
        self.act = GATED_ACTS.get(act_name, "gelu" if "gelu" in act_name else "silu")
        p = 0.0
        for k in RESID_DROPOUT_KEYS:
            v = spec.config.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                p = float(v)
                break
        self.resid_dropout = p if setup.training else 0.0
        softcap = spec.config.get("attn_logit_softcapping")
        self.softcap = bool(softcap) and mt in ("gemma2", "gemma3", "gemma3_text")
        # gemma2: `_supports_sdpa = False` (sdpa cannot softcap): the model runs eager unless asked for flash
        self.eager = setup.attn == "eager" or mt == "bloom" or (mt == "gemma2" and setup.attn == "sdpa")
        # DynamicCache in the training forward (config.use_cache, default True); checkpointed layers drop it
        self.kv_cache = (setup.training and not setup.grad_ckpt
                         and bool(spec.config.get("use_cache", True)))
        # inference (no_grad): what the cache's update does to the new K/V (vramplan/estimate/inference.py)
        self.infer_cache = None
        self.attn_locals: tuple[Sym, ...] = ()
        # --kv-expand: K and V repeated to every query head before SDPA (torchtune 0.6.1 modules/attention.py:285-300
        # expand + flatten; litgpt 0.5.13 model.py:533-539 repeat_interleave), which then saves the expanded copies
        self.kv_expand = setup.kv_expand
        # bitsandbytes 4-bit matmul by release (versions.CHANGES): <= 0.43.1 MatMul4Bit.forward saves its input
        # (0.43.1 autograd/_functions.py:515-516 ctx.tensors = (A, B); 0.43.2 :516 (None, B), PR #1270); <= 0.49.2
        # the forward dequantizes in the quant-state dtype, then casts to A.dtype (0.49.2 :315
        # dequantize_4bit(B, quant_state).to(A.dtype)); 0.50.0 goes through gemm_4bit, one copy in A.dtype
        # (0.50.0 :324-343; 0.50.2 backends/cuda/ops.py:904-916 _dequant_linear_fallback)
        self.bnb_saves_input = runs_before(setup.versions, "bitsandbytes", "0.43.2")
        self.bnb_fwd_cast = runs_before(setup.versions, "bitsandbytes", "0.50.0")
        self.qs = quant_state_dtype(setup)

    # ---------------------------------------------------------------------------------------- pieces
    def norm(self, tr: Tracer, x: Sym, n: Norm | None, name: str) -> Sym:
        if n is None:
            return x
        with tr.in_section("norms"):
            return self._norm(tr, x, n, name)

    def _norm(self, tr: Tracer, x: Sym, n: Norm, name: str) -> Sym:
        rows = max(1, x.size.per_token // max(n.dim, 1))
        if self.spec.norm_type == "layernorm":
            # native_layer_norm saves input, weight, bias, mean and rstd (derivatives.yaml); mean/rstd are
            # the accumulate type (fp32) on CUDA (layer_norm_kernel.cu). CUDA autocast runs layer_norm in
            # fp32: the input and 16-bit weight/bias become fp32 copies (not cached: only leaves that
            # require grad are).
            x_in = tr.cast(x, "fp32", f"{name} input (fp32 autocast copy)") if tr.autocast else x
            if tr.autocast and n.wdtype != "fp32":
                wc = tr.new(f"{name} weight+bias (fp32 autocast copies)", Size(2 * n.dim), "fp32", False)
                tr.save("layer_norm", wc)
            out = tr.new(f"{name} output", x.size, x_in.dtype, x.rg or n.trainable)
            mean = tr.new(f"{name} mean (fp32)", tok(rows), "fp32", False)
            rstd = tr.new(f"{name} rstd (fp32)", tok(rows), "fp32", False)
            tr.op("layer_norm", (x_in,), (out, mean, rstd))
            if x.rg or n.trainable:      # nothing to differentiate: autograd records no node
                tr.save("layer_norm", x_in, mean, rstd)
            return out
        x32 = tr.cast(x, "fp32", f"{name} input.to(fp32)")
        rs = tr.new(f"{name} rsqrt", tok(rows), "fp32", x.rg)
        tr.op("pow/mean/rsqrt", (x32,), (rs,))
        if x.rg:    # pow/rsqrt/mul save for the input's gradient only (the first layer's input may need none)
            tr.save("pow", x32)
            tr.save("rsqrt", rs)
        h = tr.new(f"{name} normalized (fp32)", x.size, "fp32", x.rg)
        tr.op("mul", (x32, rs), (h,))
        if self.gemma_norm:
            # output * (1.0 + self.weight.float()): a new fp32 vector, saved for the input's gradient
            w = tr.new(f"{name} 1 + weight.float()", Size(n.dim), "fp32", n.trainable)
            out = tr.mul(h, w, f"{name} scaled")
            return tr.cast(out, x.dtype, f"{name} output")
        if self.litgpt_model:
            # litgpt 0.5.13 model.py:1322 (x_normed * weight.float()).to(dtype): the product in fp32; a 16-bit
            # weight's .float() is a new fp32 vector, saved for the input's gradient (an fp32 weight is itself)
            w = tr.new(f"{name} weight.float()", Size(n.dim), "fp32", n.trainable) if n.wdtype != "fp32" else \
                tr.param(f"{name}.weight", Size(n.dim), n.wdtype, n.trainable)
            out = tr.mul(h, w, f"{name} scaled")
            return tr.cast(out, x.dtype, f"{name} output")
        if self.fp32_scale_norm:
            # F.rms_norm(x.float(), weight=scale).to(x.dtype) (torchtune 0.6.1 modules/rms_norm.py:38-43): torch runs
            # the composite (fp32 input, 16-bit weight), the scale multiplies the fp32 rows, the cast comes after
            w = tr.param(f"{name}.weight", Size(n.dim), n.wdtype, n.trainable)
            return tr.cast(tr.mul(h, w, f"{name} scaled (fp32)"), x.dtype, f"{name} output")
        h2 = tr.cast(h, x.dtype, f"{name} normalized.to({x.dtype})")
        w = tr.param(f"{name}.weight", Size(n.dim), n.wdtype, n.trainable)
        return tr.mul(w, h2, f"{name} output")

    def linear(self, tr: Tracer, x: Sym, lin: Lin) -> Sym:
        rows = x.size.per_token // max(lin.in_f, 1)
        out_size = Size(0, rows * lin.out_f, 0)
        name = lin.name.rpartition(".")[2]
        if lin.wdtype == "gptq" and self.setup.training:
            # gptqmodel 7.7.0 TritonV2Linear in train mode runs TorchLinear.forward (tritonv2.py:179-180):
            # weights = dequantize_weight() then torch.matmul(x, weights) (torch.py:369-376), and mm saves its
            # second operand for the input's gradient: the dequantized weight (in x out, input dtype) is a saved
            # tensor of the layer, not a transient (measured on CPU: tests/estimate/test_quant_kernel_workspaces.py)
            w = tr.new(f"{name} dequantized weight (saved by mm)", Size(lin.in_f * lin.out_f), x.dtype, False)
            tr.op("dequantize_gptq", (), (w,))
            out = tr.new(f"{name} output", out_size, x.dtype, True)
            tr.op("matmul_gptq", (x, w), (out,))
            if x.rg:
                tr.save("mm", w)
        elif lin.wdtype in CHECKPOINT_QUANTS:
            # gptqmodel AwqGemmFn, transformers FP8LinearFunction: output in the input's dtype, only the quantized
            # buffers saved; in training the weight is dequantized (in x out) as a transient in forward and
            # backward; the inference kernels fuse it (vramplan/estimate/quant_kernels.py: their own buffers)
            out = tr.new(f"{name} output", out_size, x.dtype, True)
            tr.op(f"matmul_{lin.wdtype}", (x,), (out,))
            if self.setup.training:
                # AwqGemmFn dequantizes to fp16 (the model's dtype: quantizer_awq casts bf16 to fp16) and then
                # .to(x.dtype): a second, fp32 copy when kbit preparation made the stream fp32 (gemm_awq.py)
                per = (2 + (4 if x.dtype == "fp32" else 0)) if lin.wdtype == "awq" else BYTES[x.dtype]
                tr.constants.append((f"{name} dequantized weight", lin.in_f * lin.out_f * per))
        elif lin.wdtype == "nf4" and self.nf4_kernel == "torchao":
            out = self._linear_nf4(tr, x, lin, name, out_size)
        elif lin.quantized:
            xq = tr.cast(x, self.c, f"{name} input.to({self.c})")
            # no_grad: the dequantized weight as a storage, alive while the matmul runs (bitsandbytes MatMul4Bit)
            wq = (tr.new(f"{name} dequantized weight", Size(lin.in_f * lin.out_f), self.c, False),) \
                if tr.no_grad else ()
            out = tr.new(f"{name} output", out_size, self.c, True)
            tr.op("matmul_4bit" if lin.wdtype != "int8" else "matmul_8bit", (xq, *wq), (out,))
            if lin.wdtype == "int8":
                # MatMul8bitLt keeps the int8 weight; its 16-bit dequantized copy is a transient
                tr.constants.append((f"{name} dequantized weight", lin.in_f * lin.out_f * 2))
            else:
                self._dequant_4bit(tr, xq, lin, name)
            out = tr.cast(out, x.dtype, f"{name} output.to({x.dtype})")
        else:
            xi = tr.autocast_in(x)
            odt = tr.autocast or promote_w(x.dtype, lin.wdtype)
            out = tr.new(f"{name} output", out_size, odt, True)
            tr.op("linear", (xi,), (out,))
            if lin.trainable:
                tr.save("linear", xi)
                # a trainable fp32 weight under autocast: its cached copy is counted once per weight in
                # buffers/autocast_weight_casts (estimator.py)
            elif tr.autocast and lin.wdtype != tr.autocast:
                # a frozen weight is not in autocast's cache (cached_cast caches leaves that require grad only,
                # aten/src/ATen/autocast_mode.cpp): its cast copy is made at every call and saved for grad_input
                # (a frozen fp32 base: kbit prep's head, --frozen-dtype fp32); a transient when no grad flows
                wc = tr.new(f"{name}.weight ({tr.autocast} autocast copy)", Size(lin.in_f * lin.out_f), tr.autocast,
                            False)
                if xi.rg:
                    tr.save("linear", wc)
        if lin.lora_r:
            out = self.lora(tr, x, out, lin, rows)
        return out

    def _linear_nf4(self, tr: Tracer, x: Sym, lin: Lin, name: str, out_size: Size) -> Sym:
        """torchao ``linear_nf4`` (torchtune's ``LoRALinear(quantize_base=True)`` and ``FrozenNF4Linear``):
        ``LinearNF4.forward`` saves the NF4 weight only, never the input, and returns ``F.linear(input,
        weight.to(input.dtype))`` — no input cast, the output in the input's dtype; backward is
        ``grad_output @ weight.to(grad_output.dtype)`` (torchao 0.10.0 dtypes/nf4tensor.py:964-975, 0.17.0 alike).
        Each ``.to`` dequantizes through ``get_original_weight``, whose int64 code indices make the transient
        :func:`vramplan.dtypes.torchao_nf4_dequant_bytes` (about 14 B per weight in bf16), in forward and backward.
        The weight was quantized in the compute dtype (torchtune builds under ``set_default_dtype``)."""
        wq = (tr.new(f"{name} dequantized weight", Size(lin.in_f * lin.out_f), x.dtype, False),) \
            if tr.no_grad else ()
        out = tr.new(f"{name} output", out_size, x.dtype, True)
        tr.op("linear_nf4", (x, *wq), (out,))
        n = lin.in_f * lin.out_f
        how = f"torchao NF4Tensor.get_original_weight, {self.c}" + (f", then .to({x.dtype})" if x.dtype != self.c else "")
        deq = torchao_nf4_dequant_bytes(n, self.c, x.dtype, self.setup.quant_blocksize)
        tr.constants.append((f"{name} dequantized weight ({how})", deq))
        tr.bwd_constants.append((f"{name} dequantized weight in backward ({how})", deq))
        return out

    def _dequant_4bit(self, tr: Tracer, xq: Sym, lin: Lin, name: str) -> None:
        """What ``MatMul4Bit`` keeps and dequantizes (bitsandbytes ``autograd/_functions.py``, by release; see
        ``__init__``): the input ``A`` when <= 0.43.1 saves it; in forward, ``dequantize_4bit`` in the quant-state
        dtype then ``.to(A.dtype)`` (both alive at the cast) before 0.50.0, one ``A.dtype`` copy from 0.50.0 on
        (an upper bound where the fused kernel takes small batches: no copy); in backward, always
        ``dequantize_4bit(B, ctx.state).to(grad_output.dtype)`` (0.43.1 :540, 0.50.0 :384)."""
        if self.bnb_saves_input and xq.rg:
            tr.save("MatMul4Bit (bitsandbytes <= 0.43.1)", xq)
        n = lin.in_f * lin.out_f
        qs, cast = n * BYTES[self.qs], n * BYTES[self.c] if self.qs != self.c else 0
        how = f"{self.qs}" + (f", then .to({self.c})" if cast else "")
        tr.constants.append((f"{name} dequantized weight ({how})", qs + cast if self.bnb_fwd_cast else n * BYTES[self.c]))
        tr.bwd_constants.append((f"{name} dequantized weight in backward ({how})", qs + cast))

    def lora(self, tr: Tracer, x: Sym, result: Sym, lin: Lin, rows: int) -> Sym:
        with tr.in_section("lora_inputs"):
            return self._lora(tr, x, result, lin, rows)

    def _adapter_weight(self, tr: Tracer, label: str, numel: int, lora_dtype: str, needed: bool) -> None:
        """An adapter weight as a matmul operand: under autocast its cached copy in the autocast dtype is a
        new tensor, saved when the other operand requires grad; otherwise the parameter itself."""
        if tr.autocast and lora_dtype != tr.autocast and needed:
            w = tr.new(f"{label} ({tr.autocast} autocast copy)", Size(numel), tr.autocast, False)
            tr.save("linear", w)

    def _lora(self, tr: Tracer, x: Sym, result: Sym, lin: Lin, rows: int) -> Sym:
        name = lin.name.rpartition(".")[2]
        r = lin.lora_r
        # peft's 4-bit LoRA layers (lora/bnb.py, lora/awq.py); torchtune's LoRALinear adds lora_b(lora_a(x)) to
        # linear_nf4's output as its plain Linear does (torchtune 0.6.1 modules/peft/lora.py:120-140)
        four_bit = lin.wdtype in ("nf4", "fp4", "awq") and not (lin.wdtype == "nf4" and self.nf4_kernel == "torchao")
        convert = True
        if four_bit:
            if lin.wdtype != "awq":       # peft lora/awq.py AwqLoraLinear.forward has no clone
                result = tr.fresh("clone", result, f"{name} result.clone()")       # peft lora/bnb.py
            convert = not tr.autocast         # `requires_conversion = not torch.is_autocast_enabled()`
            xa = tr.cast(x, lin.lora_dtype, f"{name} input.to({lin.lora_dtype})") if convert else x
        elif self.litgpt_model:
            xa = x      # LitGPT's LoRALinear feeds lora_A its input as it comes (litgpt 0.5.13 lora.py:165-172, :405)
        else:
            xa = tr.cast(x, lin.lora_dtype, f"{name} input.to({lin.lora_dtype}) (peft _cast_input_dtype)")
        if lin.dropout > 0:
            # native_dropout (CUDA) saves a bool mask, only when its input requires grad (layer 0's q/k/v input,
            # a frozen embedding's output, does not: then nothing is saved and lora_A's input needs no grad either;
            # measured on LLaMA-Factory's and ms-swift's real steps, tests/estimate/test_stack_frameworks_cpu.py)
            mask = tr.new(f"{name} lora_dropout mask", xa.size, "bool", False)
            d = tr.new(f"{name} lora_dropout output", xa.size, xa.dtype, xa.rg)
            tr.op("dropout", (xa,), (d, mask))
            if xa.rg:
                tr.save("dropout", mask)
            xa = d
        xi = tr.autocast_in(xa)
        self._adapter_weight(tr, f"{name}.lora_A.weight", r * lin.in_f, lin.lora_dtype, xi.rg)
        a_out = tr.new(f"{name} lora_A output", Size(0, rows * r, 0), tr.autocast or lin.lora_dtype, True)
        tr.op("linear", (xi,), (a_out,))
        tr.save("lora_A", xi)                       # lora_A.weight requires grad -> its input is saved
        ai = tr.autocast_in(a_out)
        self._adapter_weight(tr, f"{name}.lora_B.weight", lin.out_f * r, lin.lora_dtype, True)
        b_out = tr.new(f"{name} lora_B output", Size(0, rows * lin.out_f, 0), tr.autocast or lin.lora_dtype, True)
        tr.op("linear", (ai,), (b_out,))
        tr.save("lora_B", ai)
        scaled = tr.fresh("mul", b_out, f"{name} lora output * scaling")
        if lin.dora:
            # DoRA (peft/tuners/lora/dora.py): (mag/norm - 1) * base_result + mag/norm * lora_result * scaling
            tr.save("dora", result, scaled)
            tr.constants.append((f"{name} DoRA weight norm (fp32 W + BA)", lin.in_f * lin.out_f * 4 * 2))
            if lin.dropout > 0:
                # with dropout, DoraLinearLayer.forward recomputes the base result as F.linear(x, weight.to(x.dtype)):
                # the 16-bit copy of the whole base weight is saved for the input's gradient
                wc = tr.new(f"{name} base weight copy (DoRA + dropout)", Size(lin.in_f * lin.out_f), self.c, False)
                tr.save("dora", wc)
        if four_bit:
            if convert:
                scaled = tr.cast(scaled, result.dtype, f"{name} lora output.to({result.dtype})")
            return tr.add(result, scaled, f"{name} result + lora")
        summed = tr.add(result, scaled, f"{name} result + lora")
        return tr.cast(summed, result.dtype, f"{name} result.to({result.dtype})")

    def act_fn(self, tr: Tracer, x: Sym, label: str) -> Sym:
        if self.act == "relu":
            out = tr.new(label, x.size, x.dtype, x.rg)
            tr.op("relu", (x,), (out,))
            tr.save("relu", out)                     # threshold_backward uses the result
            return out
        if self.act == "gelu_new":
            # NewGELUActivation: 0.5 * x * (1 + tanh(c * (x + 0.044715 * pow(x, 3)))) in Python ops:
            # pow saves x, tanh saves its output, the final mul saves 0.5*x and (1 + tanh)
            if x.rg:
                tr.save("pow", x)
            inner = tr.fresh("mul/add", x, f"{label} tanh input")
            t = tr.new(f"{label} tanh output", x.size, x.dtype, x.rg)
            tr.op("tanh", (inner,), (t,))
            half = tr.fresh("mul", x, f"{label} 0.5 * x")
            one_t = tr.fresh("add", t, f"{label} 1 + tanh")
            if x.rg:
                tr.save("tanh", t)
            return tr.mul(half, one_t, label)
        return tr.unary_saving_input(self.act, x, label)

    def dropout(self, tr: Tracer, x: Sym, label: str) -> Sym:
        if self.resid_dropout <= 0:
            return x
        mask = tr.new(f"{label} mask", x.size, "bool", False)
        out = tr.new(label, x.size, x.dtype, x.rg)
        tr.op("dropout", (x,), (out, mask))
        tr.save("dropout", mask)
        return out

    def attention(self, tr: Tracer, layer: LayerInfo, h: Sym) -> Sym:
        with tr.in_section("attention"):
            out = self._attention(tr, layer, h)
        # no_grad: the module's input and its query/key/value locals live until forward returns (after o_proj)
        self.attn_locals = (h, *self.attn_locals)
        return out

    def _attention(self, tr: Tracer, layer: LayerInfo, h: Sym) -> Sym:
        s = self.spec
        nh, kv = s.num_heads, s.num_kv_heads
        rows = h.size.per_token // max(s.hidden_size, 1)
        qkv = layer.lin.get("attn_qkv")
        if qkv is not None:
            fused = self.linear(tr, h, qkv)
            per = qkv.out_f // max(nh + 2 * kv, 1)
            q = tr.view(fused, tok(rows * nh * per), "q (view of fused qkv)")
            k = tr.view(fused, tok(rows * kv * per), "k (view of fused qkv)")
            v = tr.view(fused, tok(rows * kv * per), "v (view of fused qkv)")
        else:
            q = self.linear(tr, h, layer.role("attn_q", "a q projection (or a fused qkv)"))
            k = self.linear(tr, h, layer.lin["attn_k"]) if "attn_k" in layer.lin else q
            v = self.linear(tr, h, layer.lin["attn_v"]) if "attn_v" in layer.lin else q
            adapted = [lin for lin in (layer.lin.get(role) for role in ("attn_q", "attn_k", "attn_v"))
                       if lin is not None and lin.lora_r]
            if self.litgpt_model and 0 < len(adapted) < 3:
                # LitGPT's fused qkv with LoRA on some of q/k/v (its default: query and value): zero_pad's
                # result.index_copy_(-1, lora_ind, after_B) saves its index (int64, one per adapted output row)
                # and its source, tokens x the adapted rows (litgpt 0.5.13 lora.py:288-326, :411)
                out_rows = sum(lin.out_f for lin in adapted)
                src = tr.new("qkv lora after_B (zero_pad source)", Size(0, rows * out_rows, 0),
                             tr.autocast or adapted[0].lora_dtype, True)
                idx = tr.new("qkv lora_ind (zero_pad index, int64)", Size(out_rows), "int64", False)
                tr.op("index_copy", (), (src, idx))
                tr.save("index_copy", src, idx)
        for key, sym_name in (("q_norm", "q"), ("k_norm", "k")):
            n = layer.norms.get(key) or layer.norms.get(key.replace("_norm", "_layernorm"))
            if n is not None:
                if sym_name == "q":
                    q = self.norm(tr, q, n, "q_norm")
                else:
                    k = self.norm(tr, k, n, "k_norm")
        if self.rotary:
            # q*cos + rotate_half(q)*sin: cos/sin are shared by all layers (saved by mul, no per-layer cost)
            rq = tr.fresh("rotate_half", q, "rotate_half(q)")
            q = tr.add(tr.fresh("mul", q, "q*cos"), tr.fresh("mul", rq, "rotate_half(q)*sin"), "q (rope)")
            rk = tr.fresh("rotate_half", k, "rotate_half(k)")
            k = tr.add(tr.fresh("mul", k, "k*cos"), tr.fresh("mul", rk, "rotate_half(k)*sin"), "k (rope)")
            if self.cat_rope:    # torch.cat([rotated, passthrough], dim=-1): contiguous (B, H, S, D) copies
                q = tr.fresh("cat", q, "q (cat rotary + pass)")
                k = tr.fresh("cat", k, "k (cat rotary + pass)")
        if self.kv_cache:
            # DynamicCache.update: torch.cat([empty, k]) — copies, which attention then uses
            k = tr.fresh("cat", k, "k (DynamicCache copy)")
            v = tr.fresh("cat", v, "v (DynamicCache copy)")
        elif self.infer_cache is not None:
            k, v = self.infer_cache(tr, k, v)
        q_hd = q.size.per_token // max(rows * nh, 1)
        out_size = tok(rows * nh * q_hd)
        if not self.eager and self.kv_expand and kv != nh:
            # torchtune k.unsqueeze(2).expand(...).flatten(1, 2) / litgpt k.repeat_interleave(q_per_kv, dim=1): new
            # tensors with every query head, which SDPA saves in place of the n_kv-head k and v
            k = tr.fresh("repeat_interleave", k, "k expanded to every query head (--kv-expand)")
            k.size = k.storage.size = out_size
            v = tr.fresh("repeat_interleave", v, "v expanded to every query head (--kv-expand)")
            v.size = v.storage.size = out_size
        self.attn_locals = (q, k, v)
        if not self.eager:
            qc, kc, vc = tr.autocast_in(q), tr.autocast_in(k), tr.autocast_in(v)
            o = tr.new("attention output", out_size, qc.dtype, True)
            lse = tr.new("attention logsumexp (fp32)", tok(nh), "fp32", True)
            tr.op("sdpa_flash", (qc, kc, vc), (o, lse))
            tr.save("flash/efficient attention", qc, kc, vc, o, lse)
            if self.cat_rope:   # output laid out like q (B, H, S, D): transpose(1, 2).contiguous() copies
                return tr.fresh("contiguous", o, "attention output transpose(1,2).contiguous()")
            # output (B, S, H, D) in memory: transpose(1, 2).reshape(...).contiguous() is a view
            return tr.view(o, out_size, "attention output (B, S, H*D view)")
        # torch.matmul on 4-D tensors reshapes each operand to 3-D for bmm, which saves the 3-D tensors: a
        # contiguous (B, H, S, D) operand (cat rope, cache copy, repeat_kv) is viewed, anything else — a
        # transposed projection or rope output, a slice of a fused qkv — is copied (and the copy is saved)
        k_contig = v_contig = self.kv_cache
        if kv != nh:                          # repeat_kv materializes expanded k and v
            k = tr.fresh("repeat_kv", k, "k (repeat_kv)")
            k.size = k.storage.size = tok(rows * nh * q_hd)
            v = tr.fresh("repeat_kv", v, "v (repeat_kv)")
            v.size = v.storage.size = tok(rows * nh * q_hd)
            k_contig = v_contig = True
        qc, kc = tr.autocast_in(q), tr.autocast_in(k)
        if not self.cat_rope:
            qc = tr.fresh("reshape", qc, "q reshaped for bmm (copy)")
        if not (k_contig or self.cat_rope):
            kc = tr.fresh("reshape", kc, "k^T reshaped for bmm (copy)")
        scores_size = Size(0, 0, nh)
        sdt = qc.dtype
        scores = tr.new("attention scores q@k^T", scores_size, sdt, True)
        tr.op("matmul", (qc, kc), (scores,))
        tr.save("matmul", qc, kc)
        scaled = tr.fresh("mul", scores, "scores * scaling")
        if self.softcap:
            # gemma2 eager_attention_forward: scores / softcap -> tanh (saves its output) -> * softcap
            div = tr.fresh("div", scaled, "scores / softcap")
            th = tr.new("tanh(scores / softcap)", scores_size, sdt, True)
            tr.op("tanh", (div,), (th,))
            tr.save("tanh", th)
            scaled = tr.fresh("mul", th, "tanh(...) * softcap")
        masked = tr.fresh("add", scaled, "scores + causal mask")
        # softmax(dim=-1, dtype=float32) everywhere but gpt2, whose plain softmax runs in the scores' dtype
        # (fp32 under CUDA autocast's fp32_set_opt_dtype policy) and `.type(value.dtype)` after it
        sm_dt = "fp32" if (self.spec.model_type != "gpt2" or tr.autocast) else sdt
        s_in = tr.cast(masked, sm_dt, f"scores ({sm_dt} for softmax)")
        probs_sm = tr.new(f"softmax output ({sm_dt})", scores_size, sm_dt, True)
        tr.op("softmax", (s_in,), (probs_sm,))
        if tr.no_grad:      # attn_weights (the masked scores) is rebound only when softmax returns
            tr.op("softmax returns", (masked,), ())
        tr.save("softmax", probs_sm)
        probs = tr.cast(probs_sm, v.dtype if self.spec.model_type == "gpt2" else q.dtype, "probs.to(dtype)")
        pc, vc = tr.autocast_in(probs), tr.autocast_in(v)
        if not v_contig:
            vc = tr.fresh("reshape", vc, "v reshaped for bmm (copy)")
        o = tr.new("attention output", out_size, pc.dtype, True)
        tr.op("matmul", (pc, vc), (o,))
        tr.save("matmul", pc, vc)
        return tr.fresh("contiguous", o, "attention output transpose(1,2).contiguous()")

    def mlp(self, tr: Tracer, layer: LayerInfo, h: Sym) -> Sym:
        with tr.in_section("mlp"):
            out = self._mlp(tr, layer, h)
        if tr.no_grad:      # the module's input (its ``x``) lives until forward returns
            tr.op("mlp returns", (h,), ())
        return out

    def _mlp(self, tr: Tracer, layer: LayerInfo, h: Sym) -> Sym:
        s = self.spec
        rows = h.size.per_token // max(s.hidden_size, 1)
        if layer.experts is not None:
            return self.moe(tr, layer, h, rows)
        if "mlp_gate_up" in layer.lin:
            gu = self.linear(tr, h, layer.lin["mlp_gate_up"])
            half = gu.size.per_token // 2
            gate = tr.view(gu, tok(half), "gate (view of gate_up)")
            up = tr.view(gu, tok(half), "up (view of gate_up)")
            a = self.act_fn(tr, gate, "act(gate)")
            m = tr.mul(a, up, "act(gate)*up")
        elif "mlp_gate" in layer.lin:
            gate = self.linear(tr, h, layer.lin["mlp_gate"])
            up = self.linear(tr, h, layer.role("mlp_up", "the up projection beside a gate projection"))
            a = self.act_fn(tr, gate, "act(gate)")
            m = tr.mul(a, up, "act(gate)*up")
        elif "mlp_up" in layer.lin:
            up = self.linear(tr, h, layer.lin["mlp_up"])
            m = self.act_fn(tr, up, "act(fc_in)")
        else:
            return h
        down = layer.lin.get("mlp_down")
        out = self.linear(tr, m, down) if down is not None else m
        if "shared_expert_up" in layer.lin:
            out = tr.add(out, self.shared_expert(tr, layer, h), "moe + shared expert")
        return out

    def shared_expert(self, tr: Tracer, layer: LayerInfo, h: Sym) -> Sym:
        gate = self.linear(tr, h, layer.role("shared_expert_gate", "the shared expert's gate projection"))
        up = self.linear(tr, h, layer.lin["shared_expert_up"])
        m = tr.mul(self.act_fn(tr, gate, "shared act(gate)"), up, "shared act*up")
        out = self.linear(tr, m, layer.role("shared_expert_down", "the shared expert's down projection"))
        if "shared_expert_router" in layer.lin:
            g = self.linear(tr, h, layer.lin["shared_expert_router"])
            sg = tr.unary_saving_input("sigmoid", g, "sigmoid(shared_expert_gate)")
            out = tr.mul(sg, out, "shared expert * gate")
        return out

    def _expert_weight(self, tr: Tracer, ex: Lin, E: int, label: str) -> Sym:
        """The expert stack ``_grouped_mm`` multiplies with: the parameter, or with LoRA on it (peft
        ``ParamWrapper._activate_lora`` -> ``_LoraFactorsProxy``) ``baddbmm(W, lhs, rhs)`` — a new tensor of
        the stack's size in W's dtype, autocast disabled — whose factors are ``.to(W.dtype)`` copies of
        lora_A/lora_B (saved by baddbmm) when the adapter dtype differs."""
        size = Size(E * ex.in_f * ex.out_f)
        if not ex.param_lora:
            return tr.param(label, size, ex.wdtype, ex.trainable)
        if ex.lora_dtype != ex.wdtype:
            f = tr.new(f"{label} LoRA factors .to({ex.wdtype})", Size(ex.lora_r * (ex.in_f + ex.out_f)), ex.wdtype,
                       True)
            tr.save("baddbmm", f)
        return tr.new(f"{label} + LoRA (baddbmm, ParamWrapper)", size, ex.wdtype, True)

    def moe(self, tr: Tracer, layer: LayerInfo, h: Sym, rows: int) -> Sym:
        """transformers 5 sparse MoE: ``*TopKRouter`` then ``grouped_mm_experts_forward``."""
        s = self.spec
        E, k, H = max(s.num_experts, 1), max(s.experts_per_token, 1), s.hidden_size
        S = rows * k                       # sorted (token, expert) rows per token
        # ---- router: F.linear(hidden, self.weight); softmax in fp32; topk; optional renormalization
        rt = layer.router
        hi = tr.autocast_in(h)
        rdt = rt.wdtype if rt is not None else h.dtype
        w_rg = rt is not None and (rt.trainable or rt.param_lora)
        if rt is not None and rt.param_lora:
            # ParamWrapper on a 2-D weight: W + (B @ A) * scaling -> a new (E, H) tensor (_LoraParameterProxy)
            w = tr.new("router weight + LoRA delta", Size(E * H), rdt, True)
            self._adapter_weight(tr, "router lora_A/lora_B", rt.lora_r * (rt.in_f + rt.out_f), rt.lora_dtype, True)
            if tr.autocast and rdt != tr.autocast:
                w = tr.cast(w, tr.autocast, "router weight + LoRA delta (autocast copy)")
            if hi.rg:
                tr.save("router", w)
        elif rt is not None and tr.autocast and rdt != tr.autocast and hi.rg and not rt.trainable:
            w = tr.new("router weight (autocast copy)", Size(E * H), tr.autocast, False)
            tr.save("router", w)
        logits = tr.new("router logits", tok(rows * E), tr.autocast or promote_w(h.dtype, rdt), True)
        tr.op("linear", (hi,), (logits,))
        if w_rg:
            tr.save("router", hi)
        l32 = tr.cast(logits, "fp32", "router logits.float()")
        probs = tr.new("router softmax (fp32)", tok(rows * E), "fp32", True)
        tr.op("softmax", (l32,), (probs,))
        tr.save("softmax", probs)
        topv = tr.new("top-k router probabilities", tok(S), "fp32", True)
        topi = tr.new("top-k expert indices (int64)", tok(S), "int64", False)
        tr.op("topk", (probs,), (topv, topi))
        tr.save("topk", topi)
        if s.model_type in ALWAYS_NORM_TOPK or s.config.get("norm_topk_prob"):
            # router_top_value /= sum(...): the in-place div keeps a clone of the original and the sum
            ssum = tr.new("top-k sum", tok(rows), "fp32", True)
            if tr.no_grad:       # no autograd: the in-place div keeps no clone
                tr.op("div_", (topv, ssum), ())
            else:
                orig = tr.new("top-k probabilities (clone kept by in-place div)", tok(S), "fp32", False)
                tr.op("div_", (topv, ssum), (orig,))
                tr.save("div_", orig, ssum)
        if s.model_type not in ALWAYS_NORM_TOPK:     # qwen*_moe: router_top_value.to(router_logits.dtype)
            topv = tr.cast(topv, logits.dtype, "routing weights.to(logits dtype)")
        # ---- experts: sort by expert, gather, two _grouped_mm, weight, unsort, sum over k
        ex, exd = layer.experts, layer.experts_down
        assert ex is not None
        if exd is None:
            exd = Lin(ex.name, ex.out_f // 2, H, ex.wdtype, ex.trainable)
        perm = tr.new("sort permutation (int64)", tok(S), "int64", False)
        tok_idx = tr.new("perm // top_k (int64)", tok(S), "int64", False)
        x_e = tr.new("tokens gathered per expert", tok(S * H), h.dtype, h.rg)
        tr.op("index", (h, tok_idx), (x_e,))
        if h.rg:
            tr.save("index", tok_idx)
        sw = tr.new("routing weights gathered", tok(S), topv.dtype, True)
        tr.op("index", (topv, perm), (sw,))
        tr.save("index", perm)
        held: tuple[Sym, ...] = ()
        if tr.no_grad:
            # histc's input (expert_ids_g.float() on CPU, .int() on CUDA: 4 B each) and its counts
            held = (tr.new("histc input (4 B per row)", tok(4 * S), "uint8", False),
                    tr.new("tokens per expert (histc)", Size(4 * E), "uint8", False))
        offs = tr.new("expert offsets (int32: E x 4 B)", Size(4 * E), "uint8", False)
        w_gu = self._expert_weight(tr, ex, E, "experts.gate_up_proj")
        xi = tr.cast(x_e, ex.wdtype, f"gathered tokens.to({ex.wdtype})")   # _grouped_mm is not autocast-enabled
        gu = tr.new("experts gate_up output", tok(S * ex.out_f), ex.wdtype, True)
        tr.op("grouped_mm", (xi, w_gu), (gu,))
        if w_gu.rg:
            tr.save("grouped_mm", xi, offs)
        if xi.rg:
            tr.save("grouped_mm", w_gu, offs)
        inter = ex.out_f // 2
        gate = tr.view(gu, tok(S * inter), "expert gate")
        up = tr.view(gu, tok(S * inter), "expert up")
        m = tr.mul(self.act_fn(tr, gate, "expert act(gate)"), up, "expert act*up")
        w_d = self._expert_weight(tr, exd, E, "experts.down_proj")
        mi = tr.cast(m, exd.wdtype, f"expert act*up.to({exd.wdtype})")
        d = tr.new("experts down output", tok(S * H), exd.wdtype, True)
        tr.op("grouped_mm", (mi, w_d), (d,))
        if w_d.rg:
            tr.save("grouped_mm", mi, offs)
        if mi.rg:
            tr.save("grouped_mm", w_d, offs)
        weighted = tr.mul(d, sw, "expert output * routing weight")
        inv = tr.new("inverse permutation (int64)", tok(S), "int64", False)
        unsorted = tr.new("expert outputs in token order", weighted.size, weighted.dtype, True)
        tr.op("index", (weighted, inv), (unsorted,))
        tr.save("index", inv)
        summed = tr.new("sum over top-k", tok(rows * H), weighted.dtype, True)
        tr.op("sum", (unsorted,), (summed,))
        out = tr.cast(summed, h.dtype, f"moe output.to({h.dtype})")
        if tr.no_grad:      # grouped_mm_experts_forward's locals and the router outputs live until the block returns
            tr.op("experts return", (logits, topv, topi, perm, tok_idx, x_e, sw, offs, *held), ())
        return out

    # ------------------------------------------------------------------------------------------ layer
    def layer(self, tr: Tracer, x: Sym, layer: LayerInfo) -> Sym:
        n = layer.norms
        n1 = n.get("input_layernorm") or n.get("ln_1") or n.get("self_attn_layer_norm") or n.get("ln_attn")
        h = self.norm(tr, x, n1, "input_layernorm")
        a = self.attention(tr, layer, h)
        o_lin = layer.lin.get("attn_o")
        with tr.in_section("attention"):
            o = self.linear(tr, a, o_lin) if o_lin is not None else a
        if tr.no_grad:
            tr.op("attention returns", self.attn_locals, ())
        if self.gemma_norm and "pre_feedforward_layernorm" in n:
            o = self.norm(tr, o, n.get("post_attention_layernorm"), "post_attention_layernorm")
        o = self.dropout(tr, o, "attention residual dropout")
        if self.parallel:
            n2 = n.get("post_attention_layernorm") or n.get("ln_mlp")
            h2 = self.norm(tr, x, n2, "mlp_layernorm") if n2 is not None else h
            m = self.dropout(tr, self.mlp(tr, layer, h2), "mlp residual dropout")
            return tr.add(tr.add(x, o, "x + attention"), m, "layer output")
        x1 = tr.add(x, o, "residual + attention")
        if self.gemma_norm and "pre_feedforward_layernorm" in n:
            h2 = self.norm(tr, x1, n.get("pre_feedforward_layernorm"), "pre_feedforward_layernorm")
        else:
            n2 = n.get("post_attention_layernorm") or n.get("ln_2") or n.get("final_layer_norm")
            h2 = self.norm(tr, x1, n2, "post_attention_layernorm")
        m = self.mlp(tr, layer, h2)
        if self.gemma_norm and "post_feedforward_layernorm" in n:
            m = self.norm(tr, m, n.get("post_feedforward_layernorm"), "post_feedforward_layernorm")
        m = self.dropout(tr, m, "mlp residual dropout")
        return tr.add(x1, m, "layer output")


def promote_w(x_dtype: str, w_dtype: str) -> str:
    if w_dtype in ("nf4", "fp4", "int8"):
        return x_dtype
    order = {"fp32": 3, "bf16": 2, "fp16": 2}
    return x_dtype if order.get(x_dtype, 0) >= order.get(w_dtype, 0) else w_dtype
