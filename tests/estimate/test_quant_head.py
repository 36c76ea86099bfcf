"""``--quant-head`` and the dequantized copies of a bitsandbytes 4-bit matmul (issue 14), against bitsandbytes.

Independent sources: the storage of a real ``bnb.nn.Linear4bit`` (bitsandbytes 0.50.2, pinned in CI) quantized on
this CPU; the weight-sized tensors its autograd function makes, recorded by a dispatch mode that follows each new
storage until it is freed (a weakref on the storage). The quant-state dtype is set the way Lightning's CUDA path sets
it (``lightning 2.6.6 fabric/plugins/precision/bitsandbytes.py:343-351 _Linear4bit.quantize``:
``weight.contiguous().to(dtype=torch.half)`` then ``bnb.functional.quantize_4bit``), which this CPU can run. With
litgpt installed (not in CI), the same checks run on LitGPT's own model built through ``BitsandbytesPrecision``.
"""

from __future__ import annotations

import weakref

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from vramplan.estimate.estimator import estimate  # noqa: E402
from vramplan.estimate.structure import static_structure, structural_setup  # noqa: E402
from vramplan.estimate.weights import place_weights  # noqa: E402
from vramplan.lora import LoraConfig  # noqa: E402
from vramplan.profiles import resolve_model  # noqa: E402
from vramplan.setup import Setup  # noqa: E402
from vramplan.shapes import spec_from_config  # noqa: E402

V, H = 512, 128
TINY = dict(model_type="llama", hidden_size=H, intermediate_size=320, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, num_hidden_layers=2, vocab_size=V, max_position_embeddings=128, tie_word_embeddings=False,
            hidden_act="silu")


def _setup(**kw) -> Setup:
    if kw.get("stack") == "litgpt":       # the stack's default (Setup.create applies it; the dataclass does not)
        kw.setdefault("quant_state_dtype", "fp16")
    s = Setup(**{"method": "qlora", "quant": "nf4", "lora": LoraConfig(r=4, alpha=8), "batch": 1, "seq": 64,
                 "grad_ckpt": False, **kw})
    s.validate()
    return s


class LiveCopies(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of the new storages of ``numel`` elements (a weight's size) that ops make inside the mode, alive from
    the op that makes one until the storage is freed; ``peak`` is the most alive at once."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.cur, self.peak, self.live, self.made = numel, 0, 0, set(), []

    def _free(self, key: int, nbytes: int) -> None:
        self.cur -= nbytes
        self.live.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() == self.numel:
                st = t.untyped_storage()
                key = st.data_ptr()
                if key in self.live or not st.nbytes():
                    continue
                self.live.add(key)
                self.cur += st.nbytes()
                self.peak = max(self.peak, self.cur)
                self.made.append((str(func), t.dtype))
                weakref.finalize(st, self._free, key, st.nbytes())
        return out


def _linear4bit(qs_dtype) -> bnb.nn.Linear4bit:
    """A ``V × H`` nf4 + double-quant Linear4bit computing in bf16, its weight quantized from ``qs_dtype`` as
    Lightning's ``_Linear4bit.quantize`` does (``quantize_4bit`` on ``weight.to(torch.half)``)."""
    lin = bnb.nn.Linear4bit(H, V, bias=False, compute_dtype=torch.bfloat16, compress_statistics=True,
                            quant_type="nf4")
    w = torch.randn(V, H).contiguous().to(dtype=qs_dtype)
    w4, qs = bnb.functional.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    lin.weight = bnb.nn.Params4bit(w4, requires_grad=False, quant_state=qs, bnb_quantized=True, blocksize=64,
                                   compress_statistics=True, quant_type="nf4")
    return lin


def _measure(lin) -> tuple[int, int, int]:
    """Weight-sized bytes alive at once: bnb 0.50's forward, the forward of bnb <= 0.49.2 and the backward."""
    x = torch.randn(1, 256, H, dtype=torch.bfloat16, requires_grad=True)
    qs = lin.weight.quant_state
    from bitsandbytes.backends.default.ops import _gemm_4bit_default_impl
    with LiveCopies(V * H) as fwd50:
        # the gemm_4bit op's unfused path (0.50.2 backends/default/ops.py; the CUDA _dequant_linear_fallback is
        # the same: one copy dequantized straight into A.dtype), called here so the mode sees inside the op
        _gemm_4bit_default_impl(x.detach(), lin.weight.view(-1, 1), qs.shape, qs.state2.absmax, qs.blocksize,
                                qs.quant_type, absmax_8bit=qs.absmax, absmax_code=qs.state2.code,
                                absmax_offset=qs.offset)
    with LiveCopies(V * H) as fwd49:
        # bitsandbytes 0.49.2 autograd/_functions.py:315 MatMul4Bit.forward, this expression
        torch.nn.functional.linear(x.detach(), bnb.functional.dequantize_4bit(lin.weight, qs).to(x.dtype))
    y = lin(x)
    with LiveCopies(V * H) as bwd:
        y.backward(torch.randn_like(y))     # 0.50.2 :384 dequantize_4bit(B, ctx.state).to(grad_output.dtype)
    return fwd50.peak, fwd49.peak, bwd.peak


def _head(setup: Setup):
    return static_structure(spec_from_config(TINY, name="tiny"), structural_setup(setup)).head


@pytest.mark.parametrize(("qs_dtype", "stack"), [(torch.bfloat16, "hf"), (torch.float16, "litgpt")])
def test_dequantized_head_copies_match_bitsandbytes(qs_dtype, stack):
    fwd50, fwd49, bwd = _measure(_linear4bit(qs_dtype))
    n2 = V * H * 2
    # independent expectations: one bf16 copy, plus an fp16 one when quantized from fp16 (measured)
    assert fwd50 == n2 and bwd == (n2 if qs_dtype == torch.bfloat16 else 2 * n2) and fwd49 == bwd
    for bnb_v, fwd in (("0.50.2", fwd50), ("0.49.2", fwd49), ("0.43.1", fwd49)):
        head = _head(_setup(quant_head=True, kbit_prep=False, stack=stack, versions=f"bitsandbytes={bnb_v}",
                            precision="bf16-true"))
        assert (head.max_constant, head.max_bwd_constant) == (fwd, bwd), bnb_v


def test_head_storage_matches_a_real_linear4bit():
    lin = _linear4bit(torch.bfloat16)
    w, qs = lin.weight, lin.weight.quant_state
    real = sum(t.untyped_storage().nbytes() for t in (w, qs.absmax, qs.code, qs.state2.absmax, qs.state2.code,
                                                      qs.offset))
    spec = spec_from_config(TINY, name="tiny")
    head = [p for p in place_weights(spec, _setup(quant_head=True)) if p.tensor.role == "lm_head"]
    assert len(head) == 1 and head[0].quant == "nf4"
    assert sum(b for _, b in head[0].parts) == real
    unquantized = [p for p in place_weights(spec, _setup()) if p.tensor.role == "lm_head"]
    assert unquantized[0].quant == "none"


def test_quant_head_moves_the_llama3_8b_weights_by_the_head():
    """Llama-3-8B QLoRA without kbit prep: the bf16 head (V·h·2 B) becomes nf4 + double quant (the §1 formula)."""
    spec = resolve_model("llama-3-8b").spec
    V8, h = spec.vocab_size, spec.hidden_size
    n = V8 * h
    blocks = n // 64
    nf4 = n // 2 + blocks + (blocks // 256) * 4 + 1024 + 4 + 64       # packed, absmax u8, nested absmax, codes
    off = Setup(method="qlora", quant="nf4", kbit_prep=False, grad_ckpt=True)
    on = Setup(method="qlora", quant="nf4", kbit_prep=False, grad_ckpt=True, quant_head=True)
    w = {k: sum(c.bytes for c in estimate(spec, s).components if c.name.startswith("weights/"))
         for k, s in (("off", off), ("on", on))}
    # every allocation rounds up to 512 B: n·2 and n/2 are multiples; the constants round to 6 allocations' worth
    assert abs((w["off"] - w["on"]) - (n * 2 - nf4)) < 6 * 512


def test_a_tied_head_stays_unquantized_and_warns():
    spec = spec_from_config(dict(TINY, tie_word_embeddings=True), name="tiny-tied")
    s = _setup(quant_head=True)
    assert not [p for p in place_weights(spec, s) if p.tensor.role == "lm_head"]
    assert any("tied" in w for w in estimate(spec, s).warnings)


def test_head_dequantization_can_set_the_forward_peak():
    """LitGPT's fp16 quant state: bnb < 0.50 makes two copies of the head at its matmul, 0.50 one. With a vocabulary
    large against the tokens, the head's matmul is the forward peak, so the two releases differ by one copy."""
    spec = spec_from_config(dict(TINY, vocab_size=32768), name="tiny-bigvocab")
    n = 32768 * H
    fwd = {}
    for v in ("0.49.2", "0.50.2"):
        s = _setup(quant_head=True, kbit_prep=False, stack="litgpt", precision="bf16-true",
                   versions=f"bitsandbytes={v}", seq=8)
        head = static_structure(spec, structural_setup(s)).head
        assert (head.max_constant, head.max_bwd_constant) == ((4 if v == "0.49.2" else 2) * n, 4 * n)
        fwd[v] = estimate(spec, s).phases["forward"]
    assert fwd["0.49.2"] - fwd["0.50.2"] == 2 * n


# ------------------------------------------------------------------------------- LitGPT's own model (optional)
def test_litgpt_bitsandbytes_precision_quantizes_the_head_as_vramplan_places_it():
    litgpt_lora = pytest.importorskip("litgpt.lora")
    from lightning.fabric.plugins.precision.bitsandbytes import BitsandbytesPrecision, _replace_param

    cfg = litgpt_lora.Config(n_layer=2, n_embd=H, n_head=4, n_query_groups=2, head_size=32, vocab_size=V,
                             padded_vocab_size=V, block_size=128, intermediate_size=320, mlp_class_name="LLaMAMLP",
                             norm_class_name="RMSNorm", bias=False, rotary_percentage=1.0, parallel_residual=False,
                             lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_query=True, lora_value=True)
    prec = BitsandbytesPrecision("nf4-dq", torch.bfloat16)      # litgpt 0.5.13 finetune/lora.py:149
    with prec.module_init_context():
        model = litgpt_lora.GPT(cfg)
    model = prec.convert_module(model).to("cpu")
    head = model.lm_head.linear
    assert type(head).__name__ == "_NF4DQLinear"
    w, qs = head.weight, head.weight.quant_state
    real = sum(t.untyped_storage().nbytes() for t in (w, qs.absmax, qs.code, qs.state2.absmax, qs.state2.code,
                                                      qs.offset))
    placed = [p for p in place_weights(spec_from_config(TINY, name="tiny"), _setup(quant_head=True))
              if p.tensor.role == "lm_head"]
    assert sum(b for _, b in placed[0].parts) == real
    # the plugin's CUDA quantize (bitsandbytes.py:343-351) on this CPU: fp16 first, then the copies of its matmul
    w16 = torch.randn(V, H).contiguous().to(dtype=torch.half)
    w4, qs16 = bnb.functional.quantize_4bit(w16, blocksize=w.blocksize, compress_statistics=w.compress_statistics,
                                            quant_type=w.quant_type, quant_storage=w.quant_storage)
    head.weight = _replace_param(head.weight, w4, qs16)
    x = torch.randn(1, 64, H, dtype=torch.bfloat16, requires_grad=True)
    y = model.lm_head(x)
    with LiveCopies(V * H) as bwd:
        y.backward(torch.randn_like(y))
    vp = _head(_setup(quant_head=True, kbit_prep=False, stack="litgpt", precision="bf16-true"))
    assert bwd.peak == vp.max_bwd_constant == 2 * V * H * 2
