"""bitsandbytes releases as modelled behaviour (issue 14; vramplan/versions.py CHANGES with ``modelled``).

bitsandbytes <= 0.43.1 cannot run on this CPU (no CPU backend), so the expectations are first principles from its
source: ``MatMul4Bit.forward`` keeps ``ctx.tensors = (A, B)`` whenever ``A`` requires grad (0.43.1
``autograd/_functions.py:515-516``; PR #1270 made it ``(None, B)`` in 0.43.2), where ``A`` is
``Linear4bit.forward``'s ``x.to(compute_dtype)`` (0.43.1 ``nn/modules.py:123-128``) — a new tensor per module when
the residual stream is fp32 (kbit preparation), the input itself when it is already bf16. The forward's
``dequantize_4bit(B, quant_state).to(A.dtype)`` (<= 0.49.2 ``:315``) is measured in ``test_quant_head.py``.
"""

from __future__ import annotations

import json

from click.testing import CliRunner

from vramplan.cli.main import cli
from vramplan.dtypes import alloc
from vramplan.estimate.estimator import estimate
from vramplan.lora import LoraConfig
from vramplan.profiles import resolve_model
from vramplan.setup import Setup


def _acts(spec, **kw) -> int:
    e = estimate(spec, Setup(**{"method": "qlora", "quant": "nf4", "grad_ckpt": False, **kw}))
    return sum(c.bytes for c in e.components if c.name.startswith("activations/"))


def test_bnb_0431_saves_every_cast_input_on_an_fp32_stream():
    """Llama-3-8B, kbit prep (fp32 residual stream), 1 × 2048, no checkpointing: q, k, v, gate and up each cast the
    fp32 norm output to bf16 (one copy each), down casts the fp32 act·up; o's input (the bf16 SDPA output) is already
    saved. Layer 0's attention input needs no gradient (the frozen embedding's output), so its q/k/v save nothing."""
    spec = resolve_model("llama-3-8b").spec
    T, h, i, L = 2048, spec.hidden_size, spec.intermediate_size, spec.num_layers
    extra = (L - 1) * 3 * alloc(T * h * 2) + L * (2 * alloc(T * h * 2) + alloc(T * i * 2))
    assert extra == 4_513_071_104        # 4.20 GiB (docs/stacks.md: 136 MiB per layer, less layer 0's q/k/v)
    assert _acts(spec, versions="bitsandbytes=0.43.1") - _acts(spec, versions="bitsandbytes=0.50.2") == extra
    assert _acts(spec, versions="bitsandbytes=0.43.2") == _acts(spec, versions="bitsandbytes=0.50.2")


def test_bnb_0431_costs_nothing_when_lora_already_saves_the_bf16_input():
    """No kbit prep (bf16 stream), LoRA on every Linear, dropout 0: ``x.to(bf16)`` is ``x``, which lora_A saves."""
    spec = resolve_model("llama-3-8b").spec
    lora = LoraConfig(r=8, alpha=16, targets=("all-linear",))
    assert _acts(spec, kbit_prep=False, lora=lora, versions="bitsandbytes=0.43.1") == \
        _acts(spec, kbit_prep=False, lora=lora, versions="bitsandbytes=0.50.2")


def test_done_when_litgpt_with_old_bitsandbytes():
    """The issue's example: the bitsandbytes changes are assumptions (modelled), not 'not modelled' warnings."""
    r = CliRunner().invoke(cli, ["plan", "llama-3-8b", "--stack", "litgpt", "--versions", "bitsandbytes=0.41.1",
                                 "--method", "qlora", "--json"], catch_exceptions=False)
    assert r.exit_code in (0, 1), r.output
    d = json.loads(r.stdout)
    assert not [w for w in d["warnings"] if w.startswith("bitsandbytes")]
    modelled = [a for a in d["assumptions"] if a.startswith("bitsandbytes 0.41.1 (--versions) predates")]
    assert len(modelled) == 2 and all("modelled" in a for a in modelled)
    new = json.loads(CliRunner().invoke(cli, ["plan", "llama-3-8b", "--stack", "litgpt", "--method", "qlora",
                                              "--versions", "bitsandbytes=0.50.2", "--json"]).stdout)
    # LitGPT runs without checkpointing: 0.41.1's saved inputs are on top (bf16 stream, LoRA on q and v only: the
    # MLP's inputs and k's are not saved otherwise)
    assert d["peak_allocated_bytes"] > new["peak_allocated_bytes"]
