"""Exact storage layouts against the libraries that allocate them, on this CPU.

* bitsandbytes 4-bit weights (``dtypes.bnb_4bit_parts``) against ``Params4bit`` quantization: packed data plus
  every tensor of the ``QuantState`` (absmax, code, and with double quantization the nested absmax, nested
  code and offset), for several shapes and block sizes;
* bitsandbytes 8-bit AdamW states (``dtypes.adam8bit_state_parts``) against ``bnb.optim.AdamW8bit`` after one
  step, and the estimator's optimizer bytes against it and against ``torch.optim.AdamW(fused=True)``;
* LoRA adapter tensors (count, shapes, dtypes) against ``peft.get_peft_model`` on tiny models.
"""

from __future__ import annotations

from collections import Counter

import pytest

from vramplan.dtypes import BYTES, adam8bit_state_parts, alloc, bnb_4bit_parts
from vramplan.estimate.optimizer import optimizer_states
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.lora import LoraConfig
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config


def test_nf4_4096x4096_matches_findings():
    """FINDINGS.md: one 4096 x 4096 nf4 weight at blocksize 64, measured with bitsandbytes 0.50.2."""
    dq = bnb_4bit_parts(4096 * 4096, 64, double_quant=True)
    assert dq == {"packed": 8_388_608, "code": 64, "absmax_uint8": 262_144, "nested_absmax": 4_096,
                  "nested_code": 1_024, "offset": 4}
    assert sum(dq.values()) == 8_655_940
    assert sum(bnb_4bit_parts(4096 * 4096, 64, double_quant=False).values()) == 9_437_248


# ------------------------------------------------------------------------------------------ bitsandbytes
def _real_4bit_parts(shape: tuple[int, int], blocksize: int, double_quant: bool, quant_type: str) -> dict[str, int]:
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    w = torch.randn(*shape, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    p = bnb.nn.Params4bit(w, requires_grad=False, blocksize=blocksize, compress_statistics=double_quant,
                          quant_type=quant_type).to("cpu")
    qs = p.quant_state
    parts = {"packed": p.data.nbytes, "code": qs.code.nbytes}
    if double_quant:
        assert qs.nested and qs.absmax.dtype == torch.uint8
        parts.update(absmax_uint8=qs.absmax.nbytes, nested_absmax=qs.state2.absmax.nbytes,
                     nested_code=qs.state2.code.nbytes, offset=qs.offset.nbytes)
    else:
        assert not qs.nested and qs.absmax.dtype == torch.float32
        parts["absmax_fp32"] = qs.absmax.nbytes
    return parts


@pytest.mark.parametrize("shape,blocksize", [((1024, 4096), 64), ((1000, 300), 64), ((512, 512), 128),
                                             ((300, 70), 256), ((64, 64), 32), ((14336, 256), 4096)])
@pytest.mark.parametrize("double_quant", [True, False])
def test_4bit_layout_matches_bitsandbytes(shape, blocksize, double_quant):
    quant_type = "nf4" if blocksize != 256 else "fp4"
    real = _real_4bit_parts(shape, blocksize, double_quant, quant_type)
    assert bnb_4bit_parts(shape[0] * shape[1], blocksize, double_quant) == real, (
        f"{shape} blocksize {blocksize} double_quant={double_quant}: bitsandbytes allocates {real}")


def _fake_grads(params, seed: int = 0) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def _state_bytes(opt) -> tuple[int, list[int]]:
    """Distinct state storages (shared quantization maps once): (Σ 512-B-rounded bytes, raw sizes)."""
    import torch

    seen: dict[int, int] = {}
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                seen[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
    return sum(alloc(n) for n in seen.values()), sorted(seen.values())


def test_adam8bit_state_parts_match_bitsandbytes():
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    sizes = [(5000,), (1000,), (300, 70), (4096,), (4095,), (64, 257)]
    params = [torch.nn.Parameter(torch.zeros(s)) for s in sizes]
    opt = bnb.optim.AdamW8bit(params)
    _fake_grads(params)
    try:
        opt.step()
    except (RuntimeError, NotImplementedError) as exc:      # pragma: no cover - depends on the bnb build
        pytest.skip(f"bitsandbytes 8-bit optimizers do not run on this CPU: {exc}")
    maps = set()
    for p in params:
        st = opt.state[p]
        real = {k: v.nbytes for k, v in st.items() if k in ("state1", "state2", "absmax1", "absmax2")}
        assert adam8bit_state_parts(p.numel()) == real, f"{tuple(p.shape)}: bitsandbytes keeps {real}"
        maps |= {st[k].untyped_storage().data_ptr() for k in ("qmap1", "qmap2") if k in st}
    assert len(maps) == 2, "the dynamic / udynamic quantization maps are shared by all parameters"


# ------------------------------------------------------------------------------------ real tiny models
TINY = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=160, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=128, max_position_embeddings=128,
                  hidden_act="silu", tie_word_embeddings=False),
    "gemma2": dict(model_type="gemma2", hidden_size=64, intermediate_size=160, num_attention_heads=4,
                   num_key_value_heads=2, num_hidden_layers=2, vocab_size=128, max_position_embeddings=128,
                   head_dim=16, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16),
    "phi3": dict(model_type="phi3", hidden_size=64, intermediate_size=160, num_attention_heads=4,
                 num_key_value_heads=2, num_hidden_layers=2, vocab_size=128, max_position_embeddings=128,
                 pad_token_id=0),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_head=4, n_layer=2, n_positions=128, vocab_size=128),
    "mixtral": dict(model_type="mixtral", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                    num_key_value_heads=2, num_hidden_layers=2, vocab_size=128, max_position_embeddings=128,
                    num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(model_type="qwen3_moe", hidden_size=64, intermediate_size=160, num_attention_heads=4,
                      num_key_value_heads=2, num_hidden_layers=2, vocab_size=128, head_dim=16,
                      max_position_embeddings=128, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=48),
}
DTYPE = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16"}


def _tiny(family: str, setup: Setup):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from vramplan.shapes.from_meta import hf_config

    dtype = torch.float32 if setup.base_dtype == "fp32" else torch.bfloat16
    model = transformers.AutoModelForCausalLM.from_config(hf_config(TINY[family]), dtype=dtype)
    if setup.method == "lora":
        lc = setup.lora
        cfg = peft.LoraConfig(r=lc.r, lora_alpha=lc.alpha, target_modules=lc.targets[0]
                              if lc.targets == ("all-linear",) else list(lc.targets))
        model = peft.get_peft_model(model, cfg)     # PEFT's default autocast_adapter_dtype=True, as the HF stack
    return model


def _lora(**kw) -> Setup:
    return Setup.create(method="lora", lora=LoraConfig(r=4, alpha=8, targets=("all-linear",)), **kw)


@pytest.mark.parametrize("family", list(TINY))
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_lora_adapters_match_peft(family, precision):
    """Every trainable tensor PEFT creates, by (shape, dtype): fp32 under PEFT's default
    ``autocast_adapter_dtype=True``, whatever the precision (bf16-true included)."""
    setup = _lora(precision=precision)
    model = _tiny(family, setup)
    real = Counter((tuple(p.shape), str(p.dtype)) for p in model.parameters() if p.requires_grad)
    st = static_structure(spec_from_config(TINY[family], name=f"tiny-{family}"), structural_setup(setup))
    est = Counter((tuple(t.shape), DTYPE[t.dtype]) for t in st.trainables)
    assert est == real, f"only PEFT: {dict(real - est)}; only vramplan: {dict(est - real)}"
    assert {d for _, d in real} == {"torch.float32"}


@pytest.mark.parametrize("family,method,precision,optim", [
    ("llama", "lora", "bf16-mixed", "adamw"), ("mixtral", "lora", "bf16-true", "adamw"),
    ("llama", "full", "bf16-true", "adamw"), ("gpt2", "full", "bf16-mixed", "adamw"),
    ("llama", "lora", "bf16-mixed", "adamw-8bit"), ("qwen3_moe", "full", "32-true", "adamw-8bit")])
def test_optimizer_state_bytes_match_a_real_step(family, method, precision, optim):
    """One optimizer step on the tiny model's trainable parameters: the distinct state storages, each rounded
    to 512 B, are what ``optimizer_states`` counts — fused ``torch.optim.AdamW`` (exp_avg, exp_avg_sq in the
    parameter dtype, a 0-dim fp32 ``step`` each) or bitsandbytes ``AdamW8bit`` (shared quantization maps)."""
    torch = pytest.importorskip("torch")
    setup = _lora(precision=precision, optim=optim) if method == "lora" else \
        Setup.create(method="full", precision=precision, optim=optim)
    model = _tiny(family, setup)
    params = [p for p in model.parameters() if p.requires_grad]
    if optim == "adamw":
        opt = torch.optim.AdamW(params, fused=True)
    else:
        bnb = pytest.importorskip("bitsandbytes")
        opt = bnb.optim.AdamW8bit(params)
    _fake_grads(params)
    opt.step()
    real, sizes = _state_bytes(opt)
    st = static_structure(spec_from_config(TINY[family], name=f"tiny-{family}"), structural_setup(setup))
    est, paged, _ = optimizer_states(st.trainables, setup)
    assert paged == 0
    assert est == real, f"{optim}: a real step keeps {real:,} B in {len(sizes)} storages; estimated {est:,} B"
    if optim == "adamw":
        assert len(sizes) == 3 * len(params)
        assert sum(sizes) == sum(2 * t.numel * BYTES[t.dtype] + 4 for t in st.trainables)
