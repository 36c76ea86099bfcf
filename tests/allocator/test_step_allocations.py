"""``vramplan.estimate.step_allocations``: the public description of a training step the allocator replay reads
(issue 20), so that ``vramplan/allocator`` takes nothing from the estimator's modules but its public API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vramplan.allocator.lengths import StepModel
from vramplan.errors import SetupError
from vramplan.estimate import estimate_counters, step_allocations
from vramplan.profiles import resolve_model
from vramplan.setup import setup_from_options

ALLOCATOR = Path(__file__).resolve().parents[2] / "vramplan" / "allocator"

#: GPT-2 (124M): 124,439,808 parameters in 148 tensors (wte, wpe, ln_f weight and bias, and per block of 12:
#: ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj, a weight and a bias each; lm_head is tied to wte) —
#: transformers GPT2LMHeadModel, `sum(p.numel() for p in model.parameters())`, the figure the model card quotes
GPT2_PARAMS, GPT2_TENSORS = 124_439_808, 148


def test_the_allocator_reads_only_the_estimators_public_api():
    """No ``from ..estimate.<module> import`` in vramplan/allocator: only ``from ..estimate import``."""
    offenders = []
    for path in sorted(ALLOCATOR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("estimate."):
                offenders.append(f"{path.name}:{node.lineno} from ..{node.module}")
            if isinstance(node, ast.ImportFrom) and node.module and "vramplan.estimate." in node.module:
                offenders.append(f"{path.name}:{node.lineno} from {node.module}")
    assert offenders == []


def test_gpt2_full_fine_tuning_model_states_from_first_principles():
    """bf16-mixed full fine-tuning keeps fp32 weights (4 B each) and AdamW's two fp32 states per parameter."""
    sa = step_allocations(resolve_model("gpt2").spec, setup_from_options({"method": "full"}))
    assert len(sa.weight_allocations) == GPT2_TENSORS
    assert sum(sa.weight_allocations) == GPT2_PARAMS * 4
    assert sa.adapter_allocations == ()
    # the estimator prices the states per tensor rounded to 512 B; the even split loses less than one per state
    assert len(sa.optimizer_allocations) == 2 * GPT2_TENSORS
    assert 0 <= sum(sa.optimizer_allocations) - 2 * GPT2_PARAMS * 4 <= 2 * GPT2_TENSORS * 512, \
        "two fp32 states per parameter, each tensor's state rounded up to 512 B"
    assert sa.num_layers == 12 and not sa.grad_ckpt and sa.standard_loss


def test_lora_adapters_are_r_times_in_plus_out_fp32():
    """LoRA r=8 on q_proj and v_proj of qwen3-0.6b (hidden 1024, 16 heads x 128, 8 kv heads x 128): per layer
    A (8 x 1024) and B (2048 x 8) for q, A (8 x 1024) and B (1024 x 8) for v, fp32 (PEFT's default
    autocast_adapter_dtype on a bf16 base), 28 layers."""
    sa = step_allocations(resolve_model("qwen3-0.6b").spec,
                          setup_from_options({"method": "lora", "rank": 8, "targets": "q_proj,v_proj"}))
    per_layer = [8 * 1024 * 4, 2048 * 8 * 4, 8 * 1024 * 4, 1024 * 8 * 4]
    assert sorted(sa.adapter_allocations) == sorted(per_layer * 28)
    assert len(sa.optimizer_allocations) == 2 * len(sa.adapter_allocations)


def test_checkpointing_saves_the_layer_input():
    spec = resolve_model("qwen3-0.6b").spec
    sa = step_allocations(spec, setup_from_options({"method": "lora", "grad_ckpt": True}))
    assert sa.grad_ckpt and sa.num_layers == spec.num_layers == 28
    tokens = 4 * 1000
    assert sa.resid_bytes(tokens) == tokens * spec.hidden_size * 2      # the bf16 residual stream


def test_the_replay_trace_peaks_where_the_estimator_does():
    """The trace built from the public description reaches the estimator's peak allocated (within 1%: whole
    blocks the allocator does not split)."""
    spec = resolve_model("qwen3-0.6b").spec
    for opts in ({"method": "lora"}, {"method": "qlora"}, {"method": "full"}):
        setup = setup_from_options({**opts, "batch": 2, "seq": 1024})
        m = StepModel(spec, setup)
        live, peak, size = 0, 0, {}
        for e in m.persistent() + m.step(2, 1024):
            kind = type(e).__name__
            if kind == "Alloc":
                size[e.id] = e.size
                live += -(-e.size // 512) * 512
                peak = max(peak, live)
            elif kind == "Free":
                live -= -(-size.pop(e.id) // 512) * 512
        want = estimate_counters(spec, setup, [(2, 1024)])[0].peak_allocated_bytes
        assert abs(peak - want) <= 0.01 * want, (opts, peak, want)


def test_inference_has_no_training_step():
    with pytest.raises(SetupError, match="training step"):
        step_allocations(resolve_model("qwen3-0.6b").spec, setup_from_options({"method": "inference"}))
