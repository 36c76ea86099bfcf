"""Decoder-layer forward programs, replayed on the symbolic tracer (``graph.py``).

One program covers the families vramplan knows, switched by what the spec contains (fused q/k/v, gated
MLP, MoE experts, q/k norms, sandwich norms, parallel residual, rotary or learned positions). Each op
follows the installed library code:

* norms — ``LlamaRMSNorm.forward`` (``hidden_states.to(float32)``, ``pow(2)``, ``rsqrt``, then
  ``weight * hidden_states.to(input_dtype)``); ``GemmaRMSNorm`` (``x.float()``, ``* (1 + weight)``,
  ``type_as``); ``nn.LayerNorm`` (autocast runs ``layer_norm`` in fp32 and saves its fp32 input).
* linear layers — frozen 16-bit (``F.linear``), trainable, ``bnb.nn.Linear4bit.forward`` (input cast to
  the compute dtype, ``MatMul4Bit`` saves only the packed weight, output cast back to the input dtype),
  ``Linear8bitLt``; wrapped by ``peft.tuners.lora.layer.Linear.forward`` (input cast to the adapter dtype
  by ``_cast_input_dtype``) or ``peft.tuners.lora.bnb.Linear4bit.forward`` (``result.clone()``; no input
  cast under autocast).
* attention — ``transformers/integrations/sdpa_attention.py`` (no ``repeat_kv`` when GQA can be passed to
  SDPA: no mask, head_dim <= 256) and the flash / memory-efficient kernels, which save q, k, v, the output
  and a per-row logsumexp (``aten/src/ATen/native/transformers``: O(seq), not O(seq^2)); eager attention
  (``eager_attention_forward``) materializes the scores and saves the fp32 softmax output.
* MLP — ``act_fn(gate_proj(x)) * up_proj(x)`` then ``down_proj``; transformers 5 fused experts loop over
  the experts that receive tokens (``*Experts.forward``), ``top_k`` rows per token in all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..lora import LoraPlan
from ..setup import Setup
from ..spec.model import ModelSpec
from .graph import Size, Sym, Tracer, tok
from .weights import Placement

GATED_ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_new": "gelu",
              "gelu_fast": "gelu", "gelu_tanh": "gelu", "relu": "relu", "quick_gelu": "gelu"}

#: config keys of residual / hidden dropout per family (active in training when > 0)
RESID_DROPOUT_KEYS = ("resid_pdrop", "hidden_dropout", "dropout")


@dataclass
class Lin:
    """A linear (or Conv1D) module as it runs: weight storage, trainability, LoRA adapter."""

    name: str
    in_f: int
    out_f: int
    wdtype: str                      # "fp32"/"bf16"/"fp16", or "nf4"/"fp4"/"int8"
    trainable: bool
    lora_r: int = 0
    lora_dtype: str = "fp32"
    dropout: float = 0.0
    dora: bool = False

    @property
    def quantized(self) -> bool:
        return self.wdtype in ("nf4", "fp4", "int8")


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
    experts: Lin | None = None                             # fused experts summary (per expert in/out)
    expert_wdtype: str = "bf16"
    router: Lin | None = None


def build_layers(spec: ModelSpec, placements: list[Placement], plan: LoraPlan | None,
                 setup: Setup) -> list[LayerInfo]:
    """Per-layer module facts needed by the forward program."""
    layers = [LayerInfo(i) for i in range(spec.num_layers)]
    adapters = {a.module: a for a in plan.adapters} if plan is not None else {}
    lcfg = plan.config if plan is not None else None
    for p in placements:
        t = p.tensor
        if t.layer is None or t.layer >= spec.num_layers:
            continue
        L = layers[t.layer]
        leaf = t.module.rpartition(".")[2]
        if t.module_type == "norm" and t.param_name == "weight":
            L.norms[leaf] = Norm(t.module, t.shape[0], p.dtype, p.trainable)
        elif t.module_type in ("linear", "conv1d") and t.param_name == "weight" and t.role not in ("bias",):
            in_f, out_f = (t.shape[1], t.shape[0]) if t.module_type == "linear" else (t.shape[0], t.shape[1])
            a = adapters.get(t.module)
            lin = Lin(t.module, in_f, out_f, p.dtype if p.quant == "none" else p.quant, p.trainable)
            if a is not None and lcfg is not None:
                lin.lora_r, lin.lora_dtype = lcfg.r, setup.trainable_dtype
                lin.dropout, lin.dora = lcfg.dropout, lcfg.dora
            role = t.role
            if role in L.lin:              # two modules with one role (e.g. gpt2 cross-attn): keep both
                role = f"{role}#{t.module}"
            L.lin[role] = lin
        elif t.module_type == "experts" and t.role == "moe_experts_gate_up":
            L.experts = Lin(t.module, t.shape[2], t.shape[1], p.dtype, p.trainable)
            L.expert_wdtype = p.dtype
        elif t.role == "moe_router":
            L.router = Lin(t.module, t.shape[1], t.shape[0], p.dtype, p.trainable)
    return layers


class Program:
    """Replays one decoder layer on a :class:`Tracer` for a given spec and setup."""

    def __init__(self, spec: ModelSpec, setup: Setup) -> None:
        self.spec = spec
        self.setup = setup
        self.c = setup.compute_dtype
        mt = spec.model_type
        self.gemma_norm = mt.startswith("gemma")
        self.rotary = mt not in ("gpt2", "opt", "bloom") and not (mt == "falcon" and spec.config.get("alibi"))
        self.parallel = (mt == "phi" or (mt == "gpt_neox" and spec.config.get("use_parallel_residual", True))
                         or (mt == "falcon" and (spec.config.get("parallel_attn", True)
                                                 or spec.config.get("new_decoder_architecture"))))
        act = GATED_ACTS.get(str(spec.hidden_act).lower(), "gelu" if "gelu" in str(spec.hidden_act) else "silu")
        self.act = act
        p = 0.0
        for k in RESID_DROPOUT_KEYS:
            v = spec.config.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                p = float(v)
                break
        self.resid_dropout = p if setup.training else 0.0
        self.eager = setup.attn == "eager" or mt == "bloom"

    # ---------------------------------------------------------------------------------------- pieces
    def norm(self, tr: Tracer, x: Sym, n: Norm | None, name: str) -> Sym:
        if n is None:
            return x
        with tr.in_section("norms"):
            return self._norm(tr, x, n, name)

    def _norm(self, tr: Tracer, x: Sym, n: Norm, name: str) -> Sym:
        if self.spec.norm_type == "layernorm":
            # autocast runs layer_norm in fp32: its fp32 input is saved (native_layer_norm backward)
            x32 = tr.cast(x, "fp32", f"{name} input (fp32)") if tr.autocast else x
            out = tr.new(f"{name} output", x.size, "fp32" if tr.autocast else x.dtype, True)
            tr.op("layer_norm", (x32,), (out,))
            tr.save("layer_norm", x32)
            return out
        x32 = tr.cast(x, "fp32", f"{name} input.to(fp32)")
        rs = tr.new(f"{name} rsqrt", Size(0, 1, 0).times(max(1, x.size.per_token // max(n.dim, 1))), "fp32", True)
        tr.op("pow/mean/rsqrt", (x32,), (rs,))
        tr.save("pow", x32)
        tr.save("rsqrt", rs)
        h = tr.new(f"{name} normalized (fp32)", x.size, "fp32", True)
        tr.op("mul", (x32, rs), (h,))
        if self.gemma_norm:
            w = tr.external(f"{name} 1+weight", Size(n.dim), "fp32", n.trainable)
            out = tr.mul(h, w, f"{name} scaled")
            return tr.cast(out, x.dtype, f"{name} output")
        h2 = tr.cast(h, x.dtype, f"{name} normalized.to({x.dtype})")
        w = tr.external(f"{name}.weight", Size(n.dim), n.wdtype, n.trainable)
        return tr.mul(w, h2, f"{name} output")

    def linear(self, tr: Tracer, x: Sym, lin: Lin) -> Sym:
        rows = x.size.per_token // max(lin.in_f, 1)
        out_size = Size(0, rows * lin.out_f, 0)
        name = lin.name.rpartition(".")[2]
        if lin.quantized:
            xq = tr.cast(x, self.c, f"{name} input.to({self.c})")
            out = tr.new(f"{name} output", out_size, self.c, True)
            tr.op("matmul_4bit" if lin.wdtype != "int8" else "matmul_8bit", (xq,), (out,))
            # MatMul4Bit/MatMul8bitLt save the packed weight only; the dequantized weight is a transient
            tr.constants.append((f"{name} dequantized weight", lin.in_f * lin.out_f * 2))
            out = tr.cast(out, x.dtype, f"{name} output.to({x.dtype})")
        else:
            xi = tr.autocast_in(x)
            odt = tr.autocast or promote_w(x.dtype, lin.wdtype)
            out = tr.new(f"{name} output", out_size, odt, True)
            tr.op("linear", (xi,), (out,))
            if lin.trainable:
                tr.save("linear", xi)
                if tr.autocast and lin.wdtype != tr.autocast:
                    pass  # cached autocast weight copy: counted once per weight in buffers/autocast_weight_casts
            elif tr.autocast and lin.wdtype != tr.autocast:
                # a frozen weight is not in autocast's cache: its cast copy is made here and saved for grad_input
                wc = tr.new(f"{name}.weight ({tr.autocast} autocast copy)", Size(lin.in_f * lin.out_f), tr.autocast,
                            False)
                tr.save("linear", wc)
        if lin.lora_r:
            out = self.lora(tr, x, out, lin, rows)
        return out

    def lora(self, tr: Tracer, x: Sym, result: Sym, lin: Lin, rows: int) -> Sym:
        with tr.in_section("lora_inputs"):
            return self._lora(tr, x, result, lin, rows)

    def _lora(self, tr: Tracer, x: Sym, result: Sym, lin: Lin, rows: int) -> Sym:
        name = lin.name.rpartition(".")[2]
        r = lin.lora_r
        if lin.quantized and lin.wdtype != "int8":
            result = tr.fresh("clone", result, f"{name} result.clone()")       # peft lora/bnb.py
            xa = x if tr.autocast else tr.cast(x, lin.lora_dtype, f"{name} input.to({lin.lora_dtype})")
        else:
            xa = tr.cast(x, lin.lora_dtype, f"{name} input.to({lin.lora_dtype}) (peft _cast_input_dtype)")
        if lin.dropout > 0:
            mask = tr.new(f"{name} lora_dropout mask", xa.size, "bool", False)
            d = tr.new(f"{name} lora_dropout output", xa.size, xa.dtype, True)
            tr.op("dropout", (xa,), (d, mask))
            tr.save("dropout", mask)
            xa = d
        xi = tr.autocast_in(xa)
        a_out = tr.new(f"{name} lora_A output", Size(0, rows * r, 0), tr.autocast or lin.lora_dtype, True)
        tr.op("linear", (xi,), (a_out,))
        tr.save("lora_A", xi)                       # lora_A.weight requires grad -> its input is saved
        ai = tr.autocast_in(a_out)
        b_out = tr.new(f"{name} lora_B output", Size(0, rows * lin.out_f, 0), tr.autocast or lin.lora_dtype, True)
        tr.op("linear", (ai,), (b_out,))
        tr.save("lora_B", ai)
        scaled = tr.fresh("mul", b_out, f"{name} lora output * scaling")
        if lin.dora:
            # DoRA (peft/tuners/lora/dora.py): (mag/norm - 1) * base_result + mag/norm * lora_result * scaling
            tr.save("dora", result, scaled)
            tr.constants.append((f"{name} DoRA weight norm (fp32 W + BA)", lin.in_f * lin.out_f * 4 * 2))
        summed = tr.add(result, scaled, f"{name} result + lora")
        return tr.cast(summed, result.dtype, f"{name} result.to({result.dtype})")

    def act_fn(self, tr: Tracer, x: Sym, label: str) -> Sym:
        if self.act == "relu":
            out = tr.new(label, x.size, x.dtype, x.rg)
            tr.op("relu", (x,), (out,))
            tr.save("relu", out)                     # threshold_backward uses the result
            return out
        return tr.unary_saving_input(self.act, x, label)

    def dropout(self, tr: Tracer, x: Sym, label: str) -> Sym:
        if self.resid_dropout <= 0:
            return x
        mask = tr.new(f"{label} mask", x.size, "bool", False)
        out = tr.new(label, x.size, x.dtype, x.rg)
        tr.op("dropout", (x,), (out, mask))
        tr.save("dropout", mask)
        return out

    def attention(self, tr: Tracer, L: LayerInfo, h: Sym) -> Sym:
        with tr.in_section("attention"):
            return self._attention(tr, L, h)

    def _attention(self, tr: Tracer, L: LayerInfo, h: Sym) -> Sym:
        s = self.spec
        nh, kv, hd = s.num_heads, s.num_kv_heads, s.head_dim
        rows = h.size.per_token // max(s.hidden_size, 1)
        qkv = L.lin.get("attn_qkv")
        if qkv is not None:
            fused = self.linear(tr, h, qkv)
            per = qkv.out_f // max(nh + 2 * kv, 1)
            q = tr.view(fused, tok(rows * nh * per), "q (view of fused qkv)")
            k = tr.view(fused, tok(rows * kv * per), "k (view of fused qkv)")
            v = tr.view(fused, tok(rows * kv * per), "v (view of fused qkv)")
        else:
            q = self.linear(tr, h, L.lin["attn_q"])
            k = self.linear(tr, h, L.lin["attn_k"]) if "attn_k" in L.lin else q
            v = self.linear(tr, h, L.lin["attn_v"]) if "attn_v" in L.lin else q
        for key, sym_name in (("q_norm", "q"), ("k_norm", "k")):
            n = L.norms.get(key) or L.norms.get(key.replace("_norm", "_layernorm"))
            if n is not None:
                if sym_name == "q":
                    q = self.norm(tr, q, n, "q_norm")
                else:
                    k = self.norm(tr, k, n, "k_norm")
        if self.rotary:
            # q*cos + rotate_half(q)*sin: cos/sin need no grad, so nothing is saved; temporaries only
            rq = tr.fresh("rotate_half", q, "rotate_half(q)")
            q = tr.add(tr.fresh("mul", q, "q*cos"), tr.fresh("mul", rq, "rotate_half(q)*sin"), "q (rope)")
            rk = tr.fresh("rotate_half", k, "rotate_half(k)")
            k = tr.add(tr.fresh("mul", k, "k*cos"), tr.fresh("mul", rk, "rotate_half(k)*sin"), "k (rope)")
        q_hd = q.size.per_token // max(rows * nh, 1)
        out_size = tok(rows * nh * q_hd)
        if not self.eager:
            qc, kc, vc = tr.autocast_in(q), tr.autocast_in(k), tr.autocast_in(v)
            o = tr.new("attention output", out_size, qc.dtype, True)
            lse = tr.new("attention logsumexp (fp32)", tok(nh), "fp32", True)
            tr.op("sdpa_flash", (qc, kc, vc), (o, lse))
            tr.save("flash/efficient attention", qc, kc, vc, o, lse)
        else:
            if kv != nh:                          # repeat_kv materializes expanded k and v
                k = tr.fresh("repeat_kv", k, "k (repeat_kv)")
                k.size = k.storage.size = tok(rows * nh * q_hd)
                v = tr.fresh("repeat_kv", v, "v (repeat_kv)")
                v.size = v.storage.size = tok(rows * nh * q_hd)
            qc, kc = tr.autocast_in(q), tr.autocast_in(k)
            scores_size = Size(0, 0, nh)
            sdt = qc.dtype
            scores = tr.new("attention scores q@k^T", scores_size, sdt, True)
            tr.op("matmul", (qc, kc), (scores,))
            tr.save("matmul", qc, kc)
            scaled = tr.fresh("mul", scores, "scores * scaling")
            masked = tr.fresh("add", scaled, "scores + causal mask")
            s32 = tr.cast(masked, "fp32", "scores (fp32 for softmax)")
            probs32 = tr.new("softmax output (fp32)", scores_size, "fp32", True)
            tr.op("softmax", (s32,), (probs32,))
            tr.save("softmax", probs32)
            probs = tr.cast(probs32, q.dtype, f"probs.to({q.dtype})")
            pc, vc = tr.autocast_in(probs), tr.autocast_in(v)
            o = tr.new("attention output", out_size, pc.dtype, True)
            tr.op("matmul", (pc, vc), (o,))
            tr.save("matmul", pc, vc)
        return tr.fresh("contiguous", o, "attention output transpose(1,2).contiguous()")

    def mlp(self, tr: Tracer, L: LayerInfo, h: Sym) -> Sym:
        with tr.in_section("mlp"):
            return self._mlp(tr, L, h)

    def _mlp(self, tr: Tracer, L: LayerInfo, h: Sym) -> Sym:
        s = self.spec
        rows = h.size.per_token // max(s.hidden_size, 1)
        if L.experts is not None:
            return self.moe(tr, L, h, rows)
        if "mlp_gate_up" in L.lin:
            gu = self.linear(tr, h, L.lin["mlp_gate_up"])
            half = gu.size.per_token // 2
            gate = tr.view(gu, tok(half), "gate (view of gate_up)")
            up = tr.view(gu, tok(half), "up (view of gate_up)")
            a = self.act_fn(tr, gate, "act(gate)")
            m = tr.mul(a, up, "act(gate)*up")
        elif "mlp_gate" in L.lin:
            gate = self.linear(tr, h, L.lin["mlp_gate"])
            up = self.linear(tr, h, L.lin["mlp_up"])
            a = self.act_fn(tr, gate, "act(gate)")
            m = tr.mul(a, up, "act(gate)*up")
        elif "mlp_up" in L.lin:
            up = self.linear(tr, h, L.lin["mlp_up"])
            m = self.act_fn(tr, up, "act(fc_in)")
        else:
            return h
        down = L.lin.get("mlp_down")
        out = self.linear(tr, m, down) if down is not None else m
        if "shared_expert_up" in L.lin:
            out = tr.add(out, self.shared_expert(tr, L, h), "moe + shared expert")
        return out

    def shared_expert(self, tr: Tracer, L: LayerInfo, h: Sym) -> Sym:
        gate = self.linear(tr, h, L.lin["shared_expert_gate"])
        up = self.linear(tr, h, L.lin["shared_expert_up"])
        m = tr.mul(self.act_fn(tr, gate, "shared act(gate)"), up, "shared act*up")
        out = self.linear(tr, m, L.lin["shared_expert_down"])
        if "shared_expert_router" in L.lin:
            g = self.linear(tr, h, L.lin["shared_expert_router"])
            sg = tr.unary_saving_input("sigmoid", g, "sigmoid(shared_expert_gate)")
            out = tr.mul(sg, out, "shared expert * gate")
        return out

    def moe(self, tr: Tracer, L: LayerInfo, h: Sym, rows: int) -> Sym:
        """transformers 5 sparse MoE: router, top-k, fused experts looped per expert (``*Experts.forward``)."""
        s = self.spec
        E, k = max(s.num_experts, 1), max(s.experts_per_token, 1)
        hi = tr.autocast_in(h)
        logits = tr.new("router logits", tok(rows * E), tr.autocast or h.dtype, True)
        tr.op("linear", (hi,), (logits,))
        if L.router is not None and L.router.trainable:
            tr.save("router", hi)
        probs = tr.new("router softmax (fp32)", tok(rows * E), "fp32", True)
        tr.op("softmax", (logits,), (probs,))
        tr.save("softmax", probs)
        topw = tr.new("top-k routing weights", tok(rows * k), probs.dtype, True)
        tr.op("topk", (probs,), (topw,))
        ex = L.experts
        assert ex is not None
        inter = ex.out_f // 2
        x_e = tr.new("tokens gathered per expert", tok(rows * k * s.hidden_size), h.dtype, True)
        tr.op("index", (h,), (x_e,))
        xi = tr.autocast_in(x_e)
        if ex.trainable:
            tr.save("expert linear", xi)
        if tr.autocast and ex.wdtype != tr.autocast and not ex.trainable:
            w = tr.new("expert weights (autocast copies)", Size(E * s.hidden_size * inter * 3), tr.autocast, False)
            tr.save("expert linear", w)
        gu = tr.new("experts gate_up output", tok(rows * k * 2 * inter), tr.autocast or ex.wdtype, True)
        tr.op("linear", (xi,), (gu,))
        gate = tr.view(gu, tok(rows * k * inter), "expert gate")
        up = tr.view(gu, tok(rows * k * inter), "expert up")
        m = tr.mul(self.act_fn(tr, gate, "expert act(gate)"), up, "expert act*up")
        mi = tr.autocast_in(m)
        if ex.trainable:
            tr.save("expert linear", mi)
        d = tr.new("experts down output", tok(rows * k * s.hidden_size), tr.autocast or ex.wdtype, True)
        tr.op("linear", (mi,), (d,))
        weighted = tr.mul(d, topw, "expert output * routing weight")
        out = tr.new("moe output (index_add)", tok(rows * s.hidden_size), weighted.dtype, True)
        tr.op("index_add", (weighted,), (out,))
        return out

    # ------------------------------------------------------------------------------------------ layer
    def layer(self, tr: Tracer, x: Sym, L: LayerInfo) -> Sym:
        n = L.norms
        n1 = n.get("input_layernorm") or n.get("ln_1") or n.get("self_attn_layer_norm") or n.get("ln_attn")
        h = self.norm(tr, x, n1, "input_layernorm")
        a = self.attention(tr, L, h)
        o_lin = L.lin.get("attn_o")
        with tr.in_section("attention"):
            o = self.linear(tr, a, o_lin) if o_lin is not None else a
        if self.gemma_norm and "pre_feedforward_layernorm" in n:
            o = self.norm(tr, o, n.get("post_attention_layernorm"), "post_attention_layernorm")
        o = self.dropout(tr, o, "attention residual dropout")
        if self.parallel:
            n2 = n.get("post_attention_layernorm") or n.get("ln_mlp")
            h2 = self.norm(tr, x, n2, "mlp_layernorm") if n2 is not None else h
            m = self.dropout(tr, self.mlp(tr, L, h2), "mlp residual dropout")
            return tr.add(tr.add(x, o, "x + attention"), m, "layer output")
        x1 = tr.add(x, o, "residual + attention")
        if self.gemma_norm and "pre_feedforward_layernorm" in n:
            h2 = self.norm(tr, x1, n.get("pre_feedforward_layernorm"), "pre_feedforward_layernorm")
        else:
            n2 = n.get("post_attention_layernorm") or n.get("ln_2") or n.get("final_layer_norm")
            h2 = self.norm(tr, x1, n2, "post_attention_layernorm")
        m = self.mlp(tr, L, h2)
        if self.gemma_norm and "post_feedforward_layernorm" in n:
            m = self.norm(tr, m, n.get("post_feedforward_layernorm"), "post_feedforward_layernorm")
        m = self.dropout(tr, m, "mlp residual dropout")
        return tr.add(x1, m, "layer output")


def promote_w(x_dtype: str, w_dtype: str) -> str:
    if w_dtype in ("nf4", "fp4", "int8"):
        return x_dtype
    order = {"fp32": 3, "bf16": 2, "fp16": 2}
    return x_dtype if order.get(x_dtype, 0) >= order.get(w_dtype, 0) else w_dtype
