"""Training activations of encoder-decoder models (T5, mT5, flan-t5, BART): the encoder over the source length
(``--seq``), the decoder over the target length (``--target-seq``), cross-attention over the encoder output,
the logits and loss over the target tokens (issue 16).

The programs replay the installed transformers 5.24.0 code op by op on the tracer of ``graph.py``, reusing the
decoder-only pieces of ``layers.py`` (``Program.linear`` with LoRA / 4-bit / autocast, ``Program.act_fn``,
LayerNorm through ``Program.norm``):

* T5 / mT5 / flan-t5 — ``models/t5/modeling_t5.py``: ``T5LayerNorm.forward`` (RMS without mean:
  ``hidden_states.to(float32).pow(2).mean`` then ``hidden_states * torch.rsqrt(variance + eps)`` — the input in its
  own dtype times an fp32 rsqrt, an fp32 product —, ``.to(weight.dtype)`` for a 16-bit weight, ``weight * h``);
  ``T5Attention.forward`` (q/k/v/o without bias, ``scaling = 1.0``, the relative position bias of layer 0 passed to
  every later layer, cross-attention keys and values projected from the encoder output); ``eager_attention_forward``
  (``torch.matmul(q, k^T) * scaling + position_bias (+ mask)``, ``softmax(dim=-1)`` in the scores' dtype,
  dropout, ``matmul(probs, v)``); T5 declares ``_supports_sdpa = True`` and ``_supports_flash_attn = False``: with
  sdpa, ``integrations/sdpa_attention.py::create_position_bias_mask`` turns the position bias into a float mask
  (``torch.where`` with the causal mask in the decoder, ``.contiguous()`` copies of the permuted bias in the
  encoder), which SDPA saves beside q, k, v, the output and the logsumexp; ``T5DenseActDense`` (relu) /
  ``T5DenseGatedActDense`` (``act(wi_0(x)) * wi_1(x)``, gelu_new for flan-t5 and mT5), ``T5LayerFF``;
  ``T5ForConditionalGeneration.forward``: ``sequence_output * d_model**-0.5`` when ``config.scale_decoder_outputs``
  (original T5; not v1.1 / flan-t5 / mT5), ``lm_head``, ``CrossEntropyLoss`` over ``lm_logits.view(-1, V)``
  (:func:`seq2seq_loss_bytes`).
* BART — ``models/bart/modeling_bart.py``: post-LayerNorm layers (``BartEncoderLayer`` / ``BartDecoderLayer``:
  ``x + dropout(attn(x))`` then ``self_attn_layer_norm``; the decoder's ``encoder_attn`` and
  ``encoder_attn_layer_norm``; ``fc1``, activation (gelu), ``activation_dropout``, ``fc2``, ``final_layer_norm``),
  q/k/v/out_proj with biases, ``scaling = head_dim**-0.5`` inside ``eager_attention_forward``, learned positions
  and ``layernorm_embedding`` on each stack's embeddings, ``lm_head(...) + final_logits_bias``.

What the programs do not know is said where they are used (``seq2seq_warnings``). With gradient checkpointing
(``T5Block``, ``BartEncoderLayer`` and ``BartDecoderLayer`` are ``GradientCheckpointingLayer``) each layer keeps its
hidden-state input; the encoder output is one storage every decoder layer reads, saved once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import BYTES, alloc, alloc_sum
from ..lora import LoraPlan
from ..setup import Setup
from ..shapes.spec import PLANNED_SEQ2SEQ, ModelSpec
from ..versions import modelled_versions
from .graph import Size, Sym, Tracer, prune, tok
from .layers import Lin, Norm, Program
from .logits import LossBytes, loss_bytes, loss_code
from .timeline import ActTerms
from .weights import Placement

#: the encoder-decoder families whose training steps are replayed here
SEQ2SEQ_FAMILIES = PLANNED_SEQ2SEQ


def is_seq2seq(spec: ModelSpec) -> bool:
    """An encoder-decoder model this module plans (its spec was built as ``AutoModelForSeq2SeqLM``)."""
    return spec.model_type in SEQ2SEQ_FAMILIES and any(t.name.startswith(("encoder.", "model.encoder."))
                                                       for t in spec.tensors)


def target_len(setup: Setup) -> int:
    """The decoder (labels) length: ``--target-seq``, or ``--seq`` when it is 0."""
    return getattr(setup, "target_seq", 0) or setup.seq


def _dropout_rates(spec: ModelSpec) -> tuple[float, float, float]:
    """(hidden, attention-probs, activation) dropout of the config, active in training."""
    c = spec.config

    def f(k: str) -> float:
        v = c.get(k)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else 0.0
    if spec.model_type == "bart":
        return f("dropout"), f("attention_dropout"), f("activation_dropout")
    p = f("dropout_rate") if "dropout_rate" in c else 0.1       # T5Config(dropout_rate=0.1)
    return p, p, p


# --------------------------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class Part:
    """One traced piece of the step, evaluated over one of the step's token domains:
    ``src`` (tokens = batch·source, bss = batch·source²), ``tgt`` (batch·target, batch·target²),
    ``cross`` (tokens = batch·target, bss = batch·target·source: the cross-attention scores) or ``kv``
    (tokens = batch·source: cross-attention keys and values projected from the encoder output)."""

    name: str
    domain: str
    terms: tuple[tuple[int, int, int], ...]
    labels: tuple[str, ...]
    fwd: tuple[tuple[int, int, int], ...]
    bwd: tuple[tuple[int, int, int], ...]
    dequant: int = 0          # the largest size-independent forward transient (a dequantized 4-bit weight)
    bwd_dequant: int = 0

    def saved(self, tokens: int, bss: int) -> int:
        return alloc_sum(self.terms, tokens, bss)

    def exact(self, tokens: int, bss: int) -> int:
        """The saved bytes before the allocator's 512-B rounding (what ``untyped_storage().nbytes()`` sums)."""
        return sum(c + a * tokens + q * bss for c, a, q in self.terms)


def _part(name: str, domain: str, tr: Tracer, keep: tuple = (), exclude: tuple = ()) -> Part:
    saved = [s for s in tr.saved_storages() if not any(s is e for e in exclude)]
    terms = tuple((s.size.const * BYTES[s.dtype], s.size.per_token * BYTES[s.dtype], s.size.per_bss * BYTES[s.dtype])
                  for s in saved)

    def coeffs(c: list[tuple[Size, str]]) -> tuple[tuple[int, int, int], ...]:
        return tuple((s.const, s.per_token, s.per_bss) for s, _ in c)
    return Part(name, domain, terms, tuple(f"{s.label} [{s.dtype}]" for s in saved),
                coeffs(prune(tr.transient_candidates(keep=keep))), coeffs(prune(tr.backward_candidates())),
                max((b for _, b in tr.constants), default=0),
                max([0, *(b for _, b in tr.constants), *(b for _, b in tr.bwd_constants)]))


class _Builder:
    """The layer programs of one structure (placements, LoRA plan) under one setup."""

    def __init__(self, spec: ModelSpec, setup: Setup, placements: tuple[Placement, ...], plan: LoraPlan | None):
        self.spec, self.setup = spec, setup
        self.t5 = spec.model_type in ("t5", "mt5")
        self.p = Program(spec, setup)
        c = spec.config
        act = str(c.get("dense_act_fn") or c.get("feed_forward_proj", "relu")).replace("gated-", "") if self.t5 \
            else str(c.get("activation_function", "gelu"))
        self.p.act = {"gelu_new": "gelu_new", "relu": "relu", "gelu": "gelu"}.get(act, "gelu" if "gelu" in act else act)
        self.p_hidden, self.p_attn, self.p_act = _dropout_rates(spec) if setup.training else (0.0, 0.0, 0.0)
        self.H = spec.hidden_size
        self.nh = spec.num_heads
        self.hd = int(c.get("d_kv") or spec.head_dim or self.H // max(self.nh, 1))
        self.eager = setup.attn == "eager"
        self.autocast = setup.compute_dtype if setup.autocast else None
        adapters = {a.module: a for a in plan.adapters if a.parameter is None and not a.frozen} \
            if plan is not None else {}
        self.lins: dict[str, Lin] = {}
        self.norms: dict[str, Norm] = {}
        self.emb_dtype = setup.compute_dtype
        self.emb_rg = False
        self.emb_trainable = False
        for pl in placements:
            t = pl.tensor
            if t.module_type == "norm" and t.param_name == "weight":
                self.norms[t.module] = Norm(t.module, t.shape[0], pl.dtype, pl.trainable)
            elif t.module_type == "linear" and t.param_name == "weight":
                lin = Lin(t.module, t.shape[1], t.shape[0], pl.dtype if pl.quant == "none" else pl.quant,
                          pl.trainable)
                a = adapters.get(t.module)
                if a is not None and plan is not None:
                    lin.lora_r, lin.lora_dtype = a.rank, setup.adapter_weight_dtype
                    lin.dropout, lin.dora = plan.config.dropout, plan.config.dora
                self.lins[t.module] = lin
            elif t.role == "embedding":
                self.emb_dtype = pl.dtype
                self.emb_trainable = pl.trainable
                self.emb_rg = self.emb_rg or pl.trainable or t.module in adapters
            elif t.role == "position_embedding" and not self.t5:
                self.emb_rg = self.emb_rg or pl.trainable
        self._enc_saved: dict[tuple, bool] = {}
        self.n_enc = 1 + max((t.layer for t in spec.tensors if t.layer is not None and ".encoder." in f".{t.name}"),
                             default=-1)
        self.n_dec = 1 + max((t.layer for t in spec.tensors if t.layer is not None and ".decoder." in f".{t.name}"),
                             default=-1)
        self.prefix = "" if self.t5 else "model."
        self.blk = "block" if self.t5 else "layers"
        if setup.method == "full" or (setup.quantized and setup.kbit_prep and setup.grad_ckpt):
            self.emb_rg = True

    # ------------------------------------------------------------------------------------ pieces
    def lin(self, name: str) -> Lin:
        return self.lins[name]

    def linear(self, tr: Tracer, x: Sym, lin: Lin) -> Sym:
        """``Program.linear``; a frozen Linear without an adapter on an input that needs no gradient gives an output
        that needs none (layer 0's k projection in LoRA: ``matmul(q, k^T)`` then saves only k^T)."""
        out = self.p.linear(tr, x, lin)
        if not (x.rg or lin.trainable or lin.lora_r):
            out.rg = False
        return out

    def norm(self, tr: Tracer, x: Sym, module: str, label: str) -> Sym:
        n = self.norms.get(module)
        if n is None:
            return x
        if not self.t5:
            return self.p.norm(tr, x, n, label)     # nn.LayerNorm (layers.py Program._norm)
        with tr.in_section("norms"):
            # T5LayerNorm.forward: variance of x.to(fp32); x * rsqrt(var + eps) (x in its dtype, an fp32 product)
            x32 = tr.cast(x, "fp32", f"{label} input.to(fp32)")
            rs = tr.new(f"{label} rsqrt", tok(1), "fp32", x.rg)
            tr.op("pow/mean/rsqrt", (x32,), (rs,))
            if x.rg:
                tr.save("pow", x32)
                tr.save("rsqrt", rs)
            h = tr.mul(x, rs, f"{label} x * rsqrt (fp32)")
            if n.wdtype in ("bf16", "fp16"):
                h = tr.cast(h, n.wdtype, f"{label} normalized.to({n.wdtype})")
            w = tr.param(f"{module}.weight", Size(n.dim), n.wdtype, n.trainable)
            return tr.mul(w, h, f"{label} output")

    def dropout(self, tr: Tracer, x: Sym, p: float, label: str) -> Sym:
        if p <= 0:
            return x
        mask = tr.new(f"{label} mask", x.size, "bool", False)
        out = tr.new(label, x.size, x.dtype, x.rg)
        tr.op("dropout", (x,), (out, mask))
        if x.rg:
            tr.save("dropout", mask)
        return out

    def scores_part(self, tr: Tracer, q: Sym, k: Sym, v: Sym, causal: bool, bias: bool) -> Sym:
        """The attention core on q (this tracer's tokens) and k/v (made in this tracer or the ``kv`` one):
        eager materializes ``nh`` scores per (query, key) pair (this tracer's ``bss``); SDPA saves q, k, v, the
        output and an fp32 logsumexp per query row and head (the float mask is counted apart: ``bias_terms``)."""
        nh, hd = self.nh, self.hd
        out_size = tok(nh * hd)
        with tr.in_section("attention"):
            if not self.eager:
                qc, kc, vc = tr.autocast_in(q), tr.autocast_in(k), tr.autocast_in(v)
                o = tr.new("attention output", out_size, qc.dtype, True)
                lse = tr.new("attention logsumexp (fp32)", tok(nh), "fp32", True)
                tr.op("sdpa", (qc, kc, vc), (o, lse))
                tr.save("scaled_dot_product_attention", qc, kc, vc, o, lse)
                # q is ``proj(x).view(B, S, H, D).transpose(1, 2)`` (T5Attention / BartAttention.forward) and the
                # fused kernels lay their output out like q, (B, S, H, D) in memory: the model's
                # ``transpose(1, 2).reshape(...).contiguous()`` is a view, and o / out_proj saves the storage SDPA
                # saved (CPU flash measured; CUDA flash / memory-efficient allocate the output the same way —
                # the rule of layers.py's decoder-only attention)
                return o
            # torch.matmul on 4-D views of the (B, S, H*D) projections: bmm on reshaped copies, which it saves
            qc = tr.fresh("reshape", tr.autocast_in(q), "q reshaped for bmm (copy)")
            kc = tr.fresh("reshape", tr.autocast_in(k), "k^T reshaped for bmm (copy)")
            scores = tr.new("attention scores q@k^T", Size(0, 0, nh), qc.dtype, True)
            tr.op("matmul", (qc, kc), (scores,))
            if kc.rg:
                tr.save("matmul", qc)
            if qc.rg:
                tr.save("matmul", kc)
            s = tr.fresh("mul", scores, "scores * scaling")
            if bias:
                s = tr.fresh("add", s, "scores + position_bias")
            if causal:
                s = tr.fresh("add", s, "scores + causal mask")
            probs = tr.new("softmax output", s.size, s.dtype, s.rg)
            tr.op("softmax", (s,), (probs,))
            if s.rg:
                tr.save("softmax", probs)
            pd = self.dropout(tr, probs, self.p_attn, "attention probs dropout")
            pc, vc = tr.autocast_in(pd), tr.fresh("reshape", tr.autocast_in(v), "v reshaped for bmm (copy)")
            o = tr.new("attention output", out_size, pc.dtype, pc.rg or vc.rg)
            tr.op("matmul", (pc, vc), (o,))
            if vc.rg:
                tr.save("matmul", pc)
            if pc.rg:
                tr.save("matmul", vc)
            return tr.fresh("contiguous", o, "attention output transpose(1,2).contiguous()")

    def names(self, stack: str, i: int, sub: str) -> dict[str, str]:
        """Module names of one attention or FFN of layer ``i`` of ``stack`` (encoder/decoder)."""
        base = f"{self.prefix}{stack}.{self.blk}.{i}"
        if self.t5:
            idx = {"self": 0, "cross": 1, "ffn": 2 if stack == "decoder" else 1}[sub]
            inner = {"self": "SelfAttention", "cross": "EncDecAttention", "ffn": "DenseReluDense"}[sub]
            b = f"{base}.layer.{idx}"
            return {"norm": f"{b}.layer_norm", "q": f"{b}.{inner}.q", "k": f"{b}.{inner}.k", "v": f"{b}.{inner}.v",
                    "o": f"{b}.{inner}.o", "wi": f"{b}.{inner}.wi", "wi_0": f"{b}.{inner}.wi_0",
                    "wi_1": f"{b}.{inner}.wi_1", "wo": f"{b}.{inner}.wo"}
        attn = {"self": "self_attn", "cross": "encoder_attn"}.get(sub, "")
        norm = {"self": "self_attn_layer_norm", "cross": "encoder_attn_layer_norm", "ffn": "final_layer_norm"}[sub]
        return {"norm": f"{base}.{norm}", "q": f"{base}.{attn}.q_proj", "k": f"{base}.{attn}.k_proj",
                "v": f"{base}.{attn}.v_proj", "o": f"{base}.{attn}.out_proj", "wi": f"{base}.fc1",
                "wo": f"{base}.fc2"}

    def attn_block(self, tr: Tracer, x: Sym, n: dict[str, str], causal: bool, bias: bool,
                   kv: tuple[Sym, Sym] | None = None) -> Sym:
        """A self-attention (or, with ``kv``, the query side of a cross-attention) sublayer with its residual."""
        h = self.norm(tr, x, n["norm"], "attention norm") if self.t5 else x
        with tr.in_section("attention"):
            q = self.linear(tr, h, self.lin(n["q"]))
            if kv is None:
                k, v = self.linear(tr, h, self.lin(n["k"])), self.linear(tr, h, self.lin(n["v"]))
            else:
                k, v = kv
        a = self.scores_part(tr, q, k, v, causal, bias)
        with tr.in_section("attention"):
            o = self.linear(tr, a, self.lin(n["o"]))
        o = self.dropout(tr, o, self.p_hidden, "attention residual dropout")
        out = tr.add(x, o, "residual + attention")
        return out if self.t5 else self.norm(tr, out, n["norm"], "attention layer norm")

    def ffn_block(self, tr: Tracer, x: Sym, n: dict[str, str]) -> Sym:
        h = self.norm(tr, x, n["norm"], "ffn norm") if self.t5 else x
        with tr.in_section("mlp"):
            if n.get("wi_0") in self.lins:
                g = self.p.act_fn(tr, self.linear(tr, h, self.lin(n["wi_0"])), "act(wi_0)")
                m = tr.mul(g, self.linear(tr, h, self.lin(n["wi_1"])), "act(wi_0) * wi_1")
            else:
                m = self.p.act_fn(tr, self.linear(tr, h, self.lin(n["wi"])), "act(wi)")
            m = self.dropout(tr, m, self.p_act, "ffn activation dropout")
            wo = self.lin(n["wo"])
            if self.t5 and m.dtype != wo.wdtype and wo.wdtype in ("fp32", "bf16", "fp16"):
                m = tr.cast(m, wo.wdtype, f"ffn hidden.to({wo.wdtype}) (T5DenseActDense)")
            d = self.linear(tr, m, wo)
        d = self.dropout(tr, d, self.p_hidden, "ffn residual dropout")
        out = tr.add(x, d, "residual + ffn")
        return out if self.t5 else self.norm(tr, out, n["norm"], "ffn layer norm")

    def tracer(self) -> Tracer:
        return Tracer(self.autocast)

    # ------------------------------------------------------------------------------------ layers
    def resid_dtype(self) -> str:
        return self.emb_dtype if self.autocast is None or self.emb_dtype == "fp32" else self.emb_dtype

    def parts(self) -> tuple[dict[tuple, Part], list[tuple[str, tuple[tuple, ...]]], bool]:
        """Every distinct part (identical sublayers traced once), each layer as the keys of its parts
        (``(stack, keys)``, encoder layers first), and whether a cross-attention saves the encoder output (its
        k/v projection trains or has LoRA): one storage for every decoder layer, counted once."""
        rd = self.resid_dtype()
        cache: dict[tuple, Part] = {}
        layers: list[tuple[str, tuple[tuple, ...]]] = []
        enc_saved = False
        for stack, n_layers in (("encoder", self.n_enc), ("decoder", self.n_dec)):
            for i in range(n_layers):
                keys: list[tuple] = []
                subs = ("self", "cross", "ffn") if stack == "decoder" else ("self", "ffn")
                for j, sub in enumerate(subs):
                    n = self.names(stack, i, sub)
                    in_rg = self.emb_rg or i > 0 or j > 0
                    lkey = tuple((r, self.lins[m].key() if m in self.lins else None,
                                  (self.norms[m].dim, self.norms[m].wdtype, self.norms[m].trainable)
                                  if m in self.norms else None) for r, m in sorted(n.items()))
                    if sub == "cross":
                        kkey, qkey = ("kv", lkey), ("cross", lkey, in_rg)
                        if kkey not in cache or qkey not in cache:
                            kv_part, q_part, saves_enc = self._cross(n, rd, in_rg)
                            cache[kkey], cache[qkey] = kv_part, q_part
                            self._enc_saved[kkey] = saves_enc
                        enc_saved = enc_saved or self._enc_saved[kkey]
                        keys += [kkey, qkey]
                        continue
                    key = (stack, sub, lkey, in_rg)
                    if key not in cache:
                        tr = self.tracer()
                        x = tr.external(f"{stack} layer input", tok(self.H), rd, in_rg)
                        y = self.attn_block(tr, x, n, stack == "decoder", self.t5) if sub == "self" \
                            else self.ffn_block(tr, x, n)
                        cache[key] = _part(f"{stack}.{sub}", "src" if stack == "encoder" else "tgt", tr,
                                           (y.storage,))
                    keys.append(key)
                layers.append((stack, tuple(keys)))
        return cache, layers, enc_saved

    def _cross(self, n: dict[str, str], rd: str, in_rg: bool) -> tuple[Part, Part, bool]:
        """A cross-attention sublayer as two parts: k and v projected from the encoder output (``kv``: per source
        token, with what the attention core saves of them) and the query side (``cross``: per target token, the
        scores per target·source pair)."""
        tr_kv = self.tracer()
        enc = tr_kv.external("encoder output", tok(self.H), rd, True)
        with tr_kv.in_section("attention"):
            k = self.linear(tr_kv, enc, self.lin(n["k"]))
            v = self.linear(tr_kv, enc, self.lin(n["v"]))
        # SDPA saves k and v; eager bmm saves reshaped copies of k^T and v, of the same sizes
        with tr_kv.in_section("attention"):
            tr_kv.save("attention over the encoder output", k, v)
        saves_enc = any(st is enc.storage for st in tr_kv.saved_storages())
        tr_q = self.tracer()
        x = tr_q.external("decoder residual", tok(self.H), rd, in_rg)
        # stand-ins of no size: k and v are counted in the kv part
        ks = tr_q.external("cross k (kv part)", Size(), k.dtype, k.rg)
        vs = tr_q.external("cross v (kv part)", Size(), v.dtype, v.rg)
        y = self.attn_block(tr_q, x, n, False, False, (ks, vs))
        return (_part("decoder.cross.kv", "kv", tr_kv, exclude=(enc.storage,)),
                _part("decoder.cross", "cross", tr_q, (y.storage,)), saves_enc)

    def head_tracer(self) -> tuple[Tracer, Sym]:
        """The decoder's final norm (T5), the tied head's scaling, ``lm_head`` (BART adds ``final_logits_bias`` to
        the logits: no save). Returns the tracer and its input."""
        tr = self.tracer()
        rd = self.resid_dtype()
        x0 = x = tr.external("decoder output", tok(self.H), rd, True)
        if self.t5:
            x = self.norm(tr, x, "decoder.final_layer_norm", "decoder final norm")
            x = self.dropout(tr, x, self.p_hidden, "decoder output dropout")
            if self.scales_decoder_output():
                x = tr.fresh("mul", x, "sequence_output * d_model**-0.5")
        head = next((m for m in self.lins.values() if m.name.endswith("lm_head")), None)
        if head is None:
            head = Lin("lm_head", self.H, self.spec.vocab_size, self.emb_dtype, self.emb_rg and
                       self.setup.method == "full")
        with tr.in_section("other"):
            self.linear(tr, x, head)
        return tr, x0

    def scales_decoder_output(self) -> bool:
        """T5 multiplies the decoder output by ``d_model**-0.5`` before the head when ``config.scale_decoder_outputs``
        (transformers 5.24.0 ``T5Config.__post_init__``: the config.json's ``tie_word_embeddings`` is not False —
        original T5, not v1.1 / flan-t5); ``MT5ForConditionalGeneration.forward`` never scales."""
        c = self.spec.config
        return self.spec.model_type == "t5" and c.get("tie_word_embeddings") is not False and \
            c.get("scale_decoder_outputs") is not False

    def encoder_final(self) -> Part | None:
        """T5's ``encoder.final_layer_norm`` (and dropout) on the last encoder layer's output; BART has none."""
        if not self.t5:
            return None
        tr = self.tracer()
        x = tr.external("encoder last layer output", tok(self.H), self.resid_dtype(), True)
        y = self.dropout(tr, self.norm(tr, x, "encoder.final_layer_norm", "encoder final norm"), self.p_hidden,
                         "encoder output dropout")
        return _part("encoder.final", "src", tr, (y.storage,))

    def embed_part(self, stack: str) -> Part:
        """What a stack's embeddings save: T5 a dropout mask; BART ``layernorm_embedding`` and dropout (the
        embeddings and learned positions are summed first: ``inputs_embeds + positions``)."""
        tr = self.tracer()
        if self.emb_trainable:      # embedding_backward needs the token ids (int64)
            tr.save("embedding", tr.new(f"{stack} input ids (int64)", tok(1), "int64", False))
        x = tr.new(f"{stack} embeddings", tok(self.H), self.resid_dtype(), self.emb_rg)
        if not self.t5:
            x = self.norm(tr, x, f"model.{stack}.layernorm_embedding", f"{stack} layernorm_embedding")
        y = self.dropout(tr, x, self.p_hidden, f"{stack} embedding dropout")
        return _part(f"{stack}.embed", "src" if stack == "encoder" else "tgt", tr, (y.storage,))

    def bias_dtype(self, placements: tuple[Placement, ...]) -> str:
        for pl in placements:
            if pl.tensor.role == "position_embedding":
                return pl.dtype
        return self.setup.compute_dtype


@dataclass(frozen=True)
class Seq2SeqTrace:
    """An encoder-decoder training step's activations at any batch, source and target length."""

    parts: dict
    layers: tuple[tuple[str, tuple[tuple, ...]], ...]
    enc_saved: bool
    extra: tuple[Part, ...]          # encoder final norm, the two stacks' embeddings
    head: Part
    hidden: int
    heads: int
    resid_bytes: int
    bias_bytes: int                  # T5's position-bias element (its relative_attention_bias weight's dtype)
    t5: bool
    sdpa: bool
    bias_trainable: bool             # T5's relative_attention_bias / BART's learned positions train
    n_enc: int
    n_dec: int
    grad_ckpt: bool
    loss_args: tuple                 # loss_bytes's arguments (a --loss kind other than standard)
    s2s_loss: tuple | None = None    # seq2seq_loss_bytes's arguments (the models' own CrossEntropyLoss)

    @staticmethod
    def domains(batch: int, src: int, tgt: int) -> dict[str, tuple[int, int]]:
        return {"src": (batch * src, batch * src * src), "tgt": (batch * tgt, batch * tgt * tgt),
                "cross": (batch * tgt, batch * tgt * src), "kv": (batch * src, 0)}

    def bias_terms(self, batch: int, src: int, tgt: int, rnd=alloc) -> list[tuple[str, int]]:
        """Batch-free tensors the T5 layers save: with sdpa the float masks ``create_position_bias_mask`` makes
        (``(1, H, q, k)``: a ``.contiguous()`` copy of the permuted bias per encoder layer, a ``torch.where`` with
        the causal mask per decoder layer, the cross-attention's zeros shared by every decoder layer); with a
        trainable ``relative_attention_bias`` (full) the embedding's int64 bucket indices (``q × k``) per stack, and
        with sdpa each decoder layer's ``torch.where(causal_mask, position_bias, min)`` saves its bool
        ``(1, 1, q, k)`` condition (``where`` backward, the bias requiring grad; measured)."""
        if not self.t5:
            return []
        H, k = self.heads, self.bias_bytes
        out = []
        if self.sdpa and not self.grad_ckpt:
            out += [("encoder position-bias masks", self.n_enc * rnd(H * src * src * k)),
                    ("decoder causal position-bias masks", self.n_dec * rnd(H * tgt * tgt * k)),
                    ("cross-attention zero bias (shared)", rnd(H * tgt * src * k) if self.n_dec else 0)]
            if self.bias_trainable:
                out += [("decoder causal masks (bool) torch.where saves", self.n_dec * rnd(tgt * tgt))]
        if self.bias_trainable:
            out += [("relative_attention_bias bucket indices (int64)", rnd(src * src * 8) + rnd(tgt * tgt * 8))]
        return out

    def loss_formula(self, batch: int, tgt: int) -> str | None:
        """The explanation of the models' own loss (:func:`seq2seq_loss_bytes`) at ``batch`` × ``tgt``; None for a
        ``--loss`` kind other than standard (the causal rules, with a warning)."""
        if self.s2s_loss is None:
            return None
        vocab, lb, autocast, bias, half = self.s2s_loss
        name = {4: "fp32", 2: "16-bit", 1: "8-bit"}
        logits = name.get(max(lb, bias), f"{max(lb, bias)}-B")
        lp = "fp32" if autocast else logits
        text = (f"target tokens {batch * tgt:,} (batch {batch} × --target-seq {tgt:,}) × vocab {vocab:,}: the model "
                f"calls CrossEntropyLoss on lm_logits.view(-1, V) itself (no label shift, no .float()): logits in "
                f"{name.get(lb, lb)}")
        if bias:
            text += f", + final_logits_bias (a second tokens × vocab tensor, {logits})"
        text += f"; log_softmax saves its {lp} output"
        if autocast and lp != logits:
            text += " (autocast)" + ("; CUDA fp16 reads the half logits (half_to_float)" if half else
                                     ", from an fp32 copy of the logits while it runs")
        return (text + "; backward: the log-probs' gradient and the logits' gradient — transformers 5.24.0 "
                "T5ForConditionalGeneration.forward / BartForConditionalGeneration.forward; "
                "vramplan/estimate/seq2seq.py seq2seq_loss_bytes")

    def layer_sums(self, batch: int, src: int, tgt: int) -> list[tuple[str, int]]:
        """Each layer's saved bytes (encoder layers first), not counting the shared encoder output."""
        dom = self.domains(batch, src, tgt)
        out = []
        for stack, keys in self.layers:
            out.append((stack, sum(self.parts[k].saved(*dom[self.parts[k].domain]) for k in keys)))
        return out

    def by_part(self, batch: int, src: int, tgt: int) -> dict[str, int]:
        """Saved bytes by component: encoder layers, decoder self-attention + FFN, cross-attention, the rest."""
        dom = self.domains(batch, src, tgt)
        out: dict[str, int] = {}
        for _, keys in self.layers:
            for k in keys:
                p = self.parts[k]
                comp = {"src": "activations/encoder", "tgt": "activations/decoder"}.get(p.domain,
                                                                                      "activations/cross_attention")
                out[comp] = out.get(comp, 0) + p.saved(*dom[p.domain])
        for p in self.extra:
            out["activations/embeddings_and_norms"] = out.get("activations/embeddings_and_norms", 0) + \
                p.saved(*dom[p.domain])
        if self.enc_saved:
            out["activations/cross_attention"] = out.get("activations/cross_attention", 0) + \
                alloc(batch * src * self.hidden * self.resid_bytes)
        for _, n in self.bias_terms(batch, src, tgt):
            out["activations/position_bias"] = out.get("activations/position_bias", 0) + n
        if self.position_ids(batch, src, tgt):
            out["activations/embeddings_and_norms"] = out.get("activations/embeddings_and_norms", 0) + \
                self.position_ids(batch, src, tgt)
        return out

    def saved_exact(self, batch: int, src: int, tgt: int) -> int:
        """Every activation the step saves (layers, embeddings, encoder output, position bias, head; not the loss)
        before the allocator's rounding: the number a saved-tensors hook sums over distinct storages."""
        dom = self.domains(batch, src, tgt)
        n = sum(self.parts[k].exact(*dom[self.parts[k].domain]) for _, keys in self.layers for k in keys)
        n += sum(p.exact(*dom[p.domain]) for p in (*self.extra, self.head))
        n += batch * src * self.hidden * self.resid_bytes if self.enc_saved else 0
        return n + sum(b for _, b in self.bias_terms(batch, src, tgt, rnd=int)) + self.position_ids(batch, src, tgt, int)

    def position_ids(self, batch: int, src: int, tgt: int, rnd=alloc) -> int:
        """BART's learned positions, when they train: ``embedding`` saves its int64 indices
        (``BartLearnedPositionalEmbedding.forward``: ``position_ids + self.offset``, a new tensor) — the encoder's
        ``arange(S).expand(B, -1)`` is (B, S), the decoder passes ``arange(T)`` and gets (1, T), batch-free
        (``BartDecoder.forward``: ``position_ids=position_ids``). Outside the checkpointed layers."""
        if self.t5 or not self.bias_trainable:
            return 0
        return rnd(batch * src * 8) + rnd(tgt * 8)

    def checkpoint_inputs(self, batch: int, src: int, tgt: int) -> int:
        """Gradient checkpointing: each layer keeps its hidden-state input; the encoder output once."""
        H, k = self.hidden, self.resid_bytes
        dom = self.domains(batch, src, tgt)
        return (self.n_enc * alloc(batch * src * H * k) + self.n_dec * alloc(batch * tgt * H * k)
                + (alloc(batch * src * H * k) if self.n_dec else 0)
                + sum(p.saved(*dom[p.domain]) for p in self.extra) + self.position_ids(batch, src, tgt))

    def at(self, batch: int, src: int, tgt: int) -> ActTerms:
        from .activations import max_affine

        dom = self.domains(batch, src, tgt)
        sums = self.layer_sums(batch, src, tgt)
        resid_src, resid_tgt = alloc(batch * src * self.hidden * self.resid_bytes), \
            alloc(batch * tgt * self.hidden * self.resid_bytes)
        fwd_tmp = bwd_ws = dequant = 0
        for p in (*self.parts.values(), *self.extra, self.head):
            t, q = dom[p.domain]
            fwd_tmp = max(fwd_tmp, max_affine(p.fwd, t, q))
            bwd_ws = max(bwd_ws, max_affine(p.bwd, t, q) + p.bwd_dequant)
            dequant = max(dequant, p.dequant)
        if self.grad_ckpt:
            layer_acts = self.checkpoint_inputs(batch, src, tgt)
            # the recomputed layer's saves less its checkpointed input
            recompute = max([0, *(n - (resid_src if st == "encoder" else resid_tgt) for st, n in sums)])
        else:
            layer_acts, recompute = sum(self.by_part(batch, src, tgt).values()), 0
        T = batch * tgt
        saved, fwd, bwd = seq2seq_loss_bytes(T, *self.s2s_loss) if self.s2s_loss is not None \
            else loss_bytes(T, *self.loss_args, seq=tgt)
        first = sums[0][1] if sums else 0
        return ActTerms(layer_acts, self.head.saved(*dom["tgt"]), saved, fwd, bwd, fwd_tmp, dequant, bwd_ws,
                        recompute, max(resid_src, resid_tgt), first, 0, 0, layer_acts, 0, 0, 0)


def seq2seq_trace(spec: ModelSpec, setup: Setup, placements: tuple[Placement, ...], plan: LoraPlan | None,
                  resid_dtype: str, logits_dtype: str) -> tuple[Seq2SeqTrace, Tracer, Sym]:
    """The step's parts for ``setup`` (any batch and lengths) and the head's tracer and input (the structure
    keeps the head as a layer trace)."""
    b = _Builder(spec, setup, placements, plan)
    parts, layers, enc_saved = b.parts()
    extra = tuple(p for p in (b.encoder_final(), b.embed_part("encoder"), b.embed_part("decoder")) if p is not None)
    head_tr, head_in = b.head_tracer()
    head = _part("head", "tgt", head_tr)
    hp = next((p for p in placements if p.tensor.role == "lm_head"), None) or \
        next((p for p in placements if p.tensor.role == "embedding"), None)
    loss_args = (spec.vocab_size, spec.hidden_size, BYTES[logits_dtype], BYTES[setup.compute_dtype],
                 loss_code(setup.loss, modelled_versions(setup.versions)), False, setup.autocast,
                 BYTES[resid_dtype], BYTES.get(hp.compute_dtype, 0) if hp is not None else 0,
                 bool(hp is not None and hp.trainable))
    s2s_loss = None
    if setup.loss == "standard":         # the models' own loss, the same in every transformers release
        # BART's final_logits_bias buffer is in the dtype the model was loaded in (its embeddings')
        s2s_loss = (spec.vocab_size, BYTES[logits_dtype], setup.autocast,
                    0 if b.t5 else BYTES.get(b.emb_dtype, BYTES[setup.compute_dtype]),
                    setup.autocast and setup.compute_dtype == "fp16")
    bias_p = next((p for p in placements if p.tensor.role == "position_embedding"), None)
    trace = Seq2SeqTrace(parts, tuple(layers), enc_saved, extra, head, spec.hidden_size, b.nh, BYTES[resid_dtype],
                         BYTES[b.bias_dtype(placements)], b.t5, not b.eager,
                         bool(bias_p is not None and bias_p.trainable), b.n_enc, b.n_dec, setup.grad_ckpt, loss_args,
                         s2s_loss)
    return trace, head_tr, head_in


def seq2seq_loss_bytes(tokens: int, vocab: int, logits_bytes: int, autocast: bool, bias_bytes: int = 0,
                       half_to_float: bool = False) -> LossBytes:
    """The loss of ``T5ForConditionalGeneration.forward`` / ``BartForConditionalGeneration.forward`` (transformers
    5.24.0): ``CrossEntropyLoss()(lm_logits.view(-1, V), labels.view(-1))`` over the target tokens — no label shift
    (the decoder input is the shifted labels), no ``.float()`` (unlike ``ForCausalLMLoss``). ``tokens`` = batch ×
    target.

    * The logits (``logits_bytes`` each: fp32, the 16-bit load dtype, or the autocast dtype) are the model output,
      alive through the loss and dropped before backward (the HF Trainer's ``compute_loss``).
    * BART adds ``final_logits_bias`` (a ``(1, V)`` buffer of ``bias_bytes``, the load dtype): ``lm_logits +
      bias`` is a second tokens × V tensor, of the promoted dtype (fp32 under autocast on an fp32 model), made
      while the head's output still exists; the head's output is freed at once.
    * ``log_softmax`` saves its output (``nll_loss`` reads the same storage) in the logits' dtype — 16-bit when
      the model runs in 16 bits without autocast, half of the causal loss's fp32 log-probs; under autocast in
      fp32 (CUDA: ``log_softmax`` is an fp32_set_opt_dtype op; CPU: ``cross_entropy_loss`` is an fp32 op), with
      an fp32 copy of 16-bit logits while it runs — except CUDA fp16, whose ``_log_softmax(half_to_float=True)``
      reads the half logits (ATen native/SoftMax.cpp ``log_softmax``). The int64 target is a view of the labels.
    * Backward starts in ``log_softmax``'s backward: the log-probs, their gradient and the logits' gradient.
    Measured on CPU in ``tests/estimate/test_seq2seq_loss.py``."""
    head = alloc(tokens * vocab * logits_bytes)
    lb = max(logits_bytes, bias_bytes)                     # type promotion of lm_logits + final_logits_bias
    logits = alloc(tokens * vocab * lb)
    lp_b = 4 if autocast else lb
    lp = alloc(tokens * vocab * lp_b)
    copy = alloc(tokens * vocab * 4) if lp_b != lb and not half_to_float else 0
    peak = max(head + logits if bias_bytes else 0, logits + copy + lp)
    grad_in = alloc(tokens * vocab * (lb if half_to_float else lp_b))
    return LossBytes(lp, peak - lp, alloc(tokens * vocab * lp_b) + grad_in)


def layer_items(trace: Seq2SeqTrace, setup: Setup) -> list[tuple[str, int, str]]:
    """The ``activations/*`` components of the layers of an encoder-decoder step, with their formulas; they sum to
    :meth:`Seq2SeqTrace.at`'s ``layer_acts``."""
    b, src, tgt = setup.batch, setup.seq, target_len(setup)
    lengths = f"batch {b} × source {src:,} (--seq) / target {tgt:,} (--target-seq) tokens"
    if trace.grad_ckpt:
        return [("activations/checkpoint_inputs", trace.checkpoint_inputs(b, src, tgt),
                 f"gradient checkpointing (GradientCheckpointingLayer: T5Block, BartEncoderLayer, BartDecoderLayer) "
                 f"keeps each layer's hidden-state input: {trace.n_enc} encoder layers × {b * src:,} tokens and "
                 f"{trace.n_dec} decoder layers × {b * tgt:,} tokens × hidden {trace.hidden} × {trace.resid_bytes} B, "
                 "the encoder output every decoder layer reads (once), and what the embeddings and T5's encoder "
                 "final norm save; vramplan/estimate/seq2seq.py")]
    dom = trace.domains(b, src, tgt)
    labels: dict[str, list[str]] = {}
    for _, keys in trace.layers:
        for k in keys:
            p = trace.parts[k]
            comp = {"src": "activations/encoder", "tgt": "activations/decoder"}.get(p.domain,
                                                                                  "activations/cross_attention")
            labels.setdefault(comp, [])
            if not labels[comp] or p.name not in labels[comp][-1]:
                labels[comp].append(f"{p.name}: {p.saved(*dom[p.domain]):,} B ({'; '.join(p.labels) or 'nothing'})")
    why = {"activations/encoder": f"what autograd saves in the {trace.n_enc} encoder layers (self-attention over the "
                                  "source, FFN)",
           "activations/decoder": f"what autograd saves in the {trace.n_dec} decoder layers' causal self-attention "
                                  "and FFN (over the target)",
           "activations/cross_attention": "cross-attention: the query side per target token, the scores per target × "
                                          "source pair (eager), k and v projected from the encoder output per source "
                                          "token, and the encoder output once when a k/v projection has LoRA or trains",
           "activations/embeddings_and_norms": "the stacks' embeddings (BART layernorm_embedding, dropout) and T5's "
                                               "encoder final norm",
           "activations/position_bias": "T5 position bias: the float masks sdpa saves (1 × heads × q × k per layer, "
                                        "batch-free), bucket indices of a trainable relative_attention_bias"}
    return [(k, v, f"{why.get(k, k)} at {lengths}; per distinct sublayer: " + " | ".join(labels.get(k, []))
             + " — transformers 5.24.0 models/t5/modeling_t5.py, models/bart/modeling_bart.py; "
               "vramplan/estimate/seq2seq.py")
            for k, v in sorted(trace.by_part(b, src, tgt).items())]


def seq2seq_warnings(spec: ModelSpec, setup: Setup) -> list[str]:
    """What a plan of an encoder-decoder model (or ``--target-seq`` on a decoder-only one) does not follow."""
    if not is_seq2seq(spec):
        if setup.target_seq:
            return [f"--target-seq {setup.target_seq} is ignored: {spec.name or spec.model_type} is a decoder-only "
                    "model (--seq counts prompt and answer together)"]
        return []
    w = []
    if setup.act_offload:
        w.append("--act-offload on an encoder-decoder model: estimated as the offloader's decoder-only rules over "
                 "the encoder's and decoder's layers together — not cross-checked")
    if setup.distributed:
        w.append(f"--gpus {setup.gpus} --strategy {setup.strategy} on an encoder-decoder model: the per-rank "
                 "activations are those of one GPU's batch (not cross-checked)")
    if setup.loss != "standard":
        w.append(f"--loss {setup.loss} on an encoder-decoder model: the T5/BART heads call CrossEntropyLoss "
                 "themselves; the fused/chunked loss is estimated as for a causal LM")
    if spec.model_type in ("t5", "mt5") and setup.attn == "flash":
        w.append("--attn flash on T5: transformers 5.24.0 T5PreTrainedModel has _supports_flash_attn = False "
                 "(the position bias is an additive mask); estimated as sdpa")
    if spec.model_type in ("t5", "mt5") and setup.attn != "eager":
        w.append("T5 with sdpa: the position bias becomes a float mask, so CUDA runs the memory-efficient kernel "
                 "(it saves the mask; its logsumexp is padded to 32 rows) — cross-checked on CPU's flash kernel")
    return w
