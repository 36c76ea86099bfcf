"""``--act-offload`` against torchtune 0.6.1's own ``OffloadActivations`` and ``get_act_offloading_ctx_manager``
(``training/_activation_offloading.py``) on a small torchtune Llama-3 with activation checkpointing, on CPU: the
CUDA stream calls are stubbed (the CPU build has no streams; the pack rule does not depend on them) and the pack
hook is wrapped to record what it decides. Skips without torchtune (see ``test_loss_kinds_frameworks.py``)."""

from __future__ import annotations

import contextlib

import pytest

from vramplan.dtypes import alloc

torch = pytest.importorskip("torch")


class _Stream:
    def wait_stream(self, s) -> None: ...
    def wait_event(self, e) -> None: ...
    def record_event(self):
        return object()


@pytest.mark.parametrize("ckpt", [True, False])
def test_torchtune_offload_activations_rule(ckpt, monkeypatch):
    pytest.importorskip("torchao")
    training = pytest.importorskip("torchtune.training")
    llama3 = pytest.importorskip("torchtune.models.llama3").llama3
    modules = pytest.importorskip("torchtune.modules")
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "default_stream", lambda *a, **k: _Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    torch.manual_seed(0)
    L, b, s, h = 3, 2, 64, 64
    with training.set_default_dtype(torch.bfloat16):
        model = llama3(vocab_size=512, num_layers=L, num_heads=4, num_kv_heads=2, embed_dim=h, max_seq_len=256,
                       intermediate_dim=160)
    if ckpt:   # recipes/full_finetune_single_device.py: enable_activation_checkpointing
        training.set_activation_checkpointing(model, auto_wrap_policy={modules.TransformerSelfAttentionLayer})
    ctx = training.get_act_offloading_ctx_manager(model, True)
    ctx.use_pin_memory = False
    packed, section = [], ["embed"]
    model.layers[0].register_forward_pre_hook(lambda *a: section.__setitem__(0, "layers"))
    model.norm.register_forward_pre_hook(lambda *a: section.__setitem__(0, "norm"))
    model.output.register_forward_pre_hook(lambda *a: section.__setitem__(0, "output"))
    pack = ctx.pack_hook

    def recording_pack(t):
        i = pack(t)
        packed.append((section[0], tuple(t.shape), t.untyped_storage().nbytes(), ctx.tracker[i][1],
                       isinstance(t, torch.nn.Parameter)))
        return i

    ctx.pack_hook = recording_pack
    with ctx:
        model(torch.randint(0, 512, (b, s)))
    assert not any(where == "output" for where, *_ in packed)        # NoOpManager: the head's saves stay
    assert all(not off for *_, nbytes, off, param in packed if param or nbytes < 1024)   # params, small tensors
    layer_off = [(shape, n) for where, shape, n, off, _ in packed if where == "layers" and off]
    if ckpt:
        # the checkpoint's _NoopSaveInputs saves each layer's input: L tensors of b x s x h bf16, nothing else
        assert layer_off == [((b, s, h), b * s * h * 2)] * L
    else:
        # every saved activation of >= 1 KiB leaves, more than L layer inputs' worth per layer
        assert sum(n for _, n in layer_off) > L * 4 * alloc(b * s * h * 2)
