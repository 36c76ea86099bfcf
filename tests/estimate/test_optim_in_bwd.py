"""``--optim-in-bwd`` (issue 14): the optimizer step inside backward, one parameter at a time (torchtune
``optimizer_in_bwd``), against a real step on CPU.

torchtune 0.6.1 builds one optimizer per parameter (``recipes/full_finetune_single_device.py:468-473``) and
registers ``step(); zero_grad()`` as each parameter's post-accumulate-grad hook (``training/memory.py:219-242
register_optim_in_bwd_hooks``, torch ``Tensor.register_post_accumulate_grad_hook``). The test below does the same
on a small transformers Llama (full fine-tuning, bf16) and records, at every hook, the gradient bytes alive: the
estimator's timeline keeps the largest single gradient in ``backward (layers)`` and none at ``optimizer.step()``
(``timeline.py::optimizer_in_backward``). The real torchtune hooks run in ``test_optim_in_bwd_frameworks.py``.
"""

from __future__ import annotations

import pytest

from vramplan.dtypes import alloc
from vramplan.estimate import estimate
from vramplan.estimate.optimizer import largest_gradient, step_timeline
from vramplan.estimate.states import model_states
from vramplan.estimate.timeline import peak_of, phase_peaks
from vramplan.lora import LoraConfig
from vramplan.profiles import resolve_model
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = dict(model_type="llama", hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
           num_hidden_layers=2, vocab_size=128, max_position_embeddings=128, tie_word_embeddings=False,
           hidden_act="silu", attention_dropout=0.0)


def _grad_bytes(model) -> int:
    return sum(alloc(p.grad.untyped_storage().nbytes()) for p in model.parameters() if p.grad is not None)


def _step(in_backward: bool) -> tuple[int, int]:
    """One full fine-tuning step; (most gradient bytes alive at once during backward, gradient bytes left after)."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG)).to(torch.bfloat16)
    most = [0]
    if in_backward:
        optim = {p: torch.optim.AdamW([p], lr=1e-4) for p in model.parameters()}

        def optim_step(param) -> None:              # torchtune training/memory.py:236-238
            most[0] = max(most[0], _grad_bytes(model))
            optim[param].step()
            optim[param].zero_grad()

        for p in model.parameters():
            p.register_post_accumulate_grad_hook(optim_step)
    else:
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(lambda _p: most.__setitem__(0, max(most[0], _grad_bytes(model))))
    ids = torch.randint(0, 128, (1, 32))
    model(input_ids=ids, labels=ids).loss.backward()
    return most[0], _grad_bytes(model)


def test_one_gradient_alive_at_a_time_as_the_timeline_says():
    spec = spec_from_config(CFG, name="tiny-llama")
    setup = Setup.create(method="full", precision="bf16-true", optim_in_bwd=True, batch=1, seq=32)
    d = model_states(spec, setup)
    st = step_timeline(d.timeline, d.structure.trainables, setup)
    most, left = _step(in_backward=True)
    # the largest parameter is an MLP weight (160 x 64 bf16); every other gradient is freed before the next exists
    assert most == st.grad_head == largest_gradient(d.structure.trainables) == alloc(160 * 64 * 2)
    assert (st.grad_layers, st.grads_step, st.opt_tmp) == (0, 0, 0)
    assert left == 0                                 # zero_grad() in each hook: nothing reaches optimizer.step()
    # without the hooks' step every gradient accumulates, as the timeline's plain terms say
    most_plain, left_plain = _step(in_backward=False)
    assert left_plain == most_plain == d.timeline.grad_head + d.timeline.grad_layers == d.grads


def test_optim_in_bwd_llama3_8b_full_finetune():
    """Llama-3-8B full fine-tuning, bf16, paged 8-bit AdamW, checkpointing (torchtune's
    llama3_1/8B_full_single_device.yaml): the 15 GiB of bf16 gradients are never alive together; the largest one
    is the embedding's or the head's (128,256 x 4,096 x 2 B)."""
    spec = resolve_model("llama-3-8b").spec
    kw = dict(method="full", precision="bf16-true", optim="paged-adamw-8bit", grad_ckpt=True)
    plain, inbwd = estimate(spec, Setup.create(**kw)), estimate(spec, Setup.create(**kw, optim_in_bwd=True))
    assert plain.peak_phase in ("backward (layers)", "optimizer")
    head_grad = 128_256 * 4096 * 2
    # 15.0 GiB of gradients, of which one (at most the head's 1,002 MiB) is alive at a time
    assert plain.phases["backward (layers)"] - inbwd.phases["backward (layers)"] > 13 * 2**30
    assert inbwd.phases["optimizer"] < plain.phases["optimizer"] - 14 * 2**30
    d = model_states(spec, Setup.create(**kw, optim_in_bwd=True))
    assert largest_gradient(d.structure.trainables) == head_grad
    # one optimizer per parameter: bitsandbytes moves its pair of 256-entry fp32 quantization maps per optimizer
    # (bitsandbytes 0.50.2 optim/optimizer.py:134, :513-516) for every tensor with 8-bit states
    n8 = sum(1 for t in d.structure.trainables if t.numel >= 4096)
    assert d.opt_gpu - model_states(spec, Setup.create(**kw)).opt_gpu == (n8 - 1) * 2 * alloc(1024)


def test_optim_in_bwd_grid_equals_estimate_and_lora():
    spec = resolve_model("qwen2.5-0.5b").spec
    from vramplan.estimate.grid import estimate_counters

    for kw in (dict(method="full", precision="bf16-true", optim_in_bwd=True),
               dict(method="lora", lora=LoraConfig(), optim_in_bwd=True, optim="adafactor")):
        s = Setup.create(**kw)
        points = [(1, 512), (2, 2048)]
        got = estimate_counters(spec, s, points)
        for (b, q), c in zip(points, got, strict=True):
            e = estimate(spec, s.with_(batch=b, seq=q), detail=False)
            assert (c.peak_allocated_bytes, c.peak_phase) == (e.peak_allocated_bytes, e.peak_phase)
        d = model_states(spec, s)
        st = step_timeline(d.timeline, d.structure.trainables, s)
        peak, _ = peak_of(phase_peaks(st, d.activations.at(1, 512)))
        assert peak == got[0].peak_allocated_bytes


def test_optim_in_bwd_on_several_gpus_warns():
    spec = resolve_model("qwen2.5-0.5b").spec
    e = estimate(spec, Setup.create(method="full", precision="bf16-true", optim_in_bwd=True, gpus=2,
                                    strategy="fsdp"))
    assert any("--optim-in-bwd on --gpus 2" in w for w in e.warnings)
