"""``--act-offload`` (issue 14): which saved activations leave the GPU, against a real step on CPU.

The offloader is torchtune 0.6.1's rule (``training/_activation_offloading.py:133-200 OffloadActivations.pack_tensor``:
every saved tensor of at least 1,024 B that is not a ``Parameter``/``Buffer`` is copied out; ``:396-418``: the
output head runs under ``NoOpManager``), reproduced here as a ``saved_tensors_hooks`` pair whose host copies live
outside torch (NumPy), so that the allocation tracker counts what stays on the "device" only. A small transformers
Llama runs one step with non-reentrant checkpointing (``torch.utils.checkpoint`` saves each layer's input through
``_NoopSaveInputs`` under the outer hooks; the layer's own saves and the recompute run under the checkpoint's hooks).
The real torchtune class runs in ``test_act_offload_frameworks.py``.
"""

from __future__ import annotations

import pytest

from vramplan.dtypes import alloc
from vramplan.estimate import estimate
from vramplan.estimate.states import model_states
from vramplan.profiles import resolve_model
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
np = pytest.importorskip("numpy")
from vramplan.simulate.tracker import Tracker  # noqa: E402

CFG = dict(model_type="llama", hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2,
           num_hidden_layers=3, vocab_size=128, max_position_embeddings=256, tie_word_embeddings=False,
           hidden_act="silu", attention_dropout=0.0)
B, S = 2, 64


class Offload(torch.autograd.graph.saved_tensors_hooks):
    """torchtune's pack rule; the copy goes to host memory the tracker does not see, and comes back on unpack."""

    def __init__(self, min_bytes: int = 1024) -> None:
        self.noop = False
        self.offloaded: dict[int, int] = {}        # id(storage) -> bytes, while the model's decoder layers run

        def pack(t):
            nbytes = t.element_size() * t.nelement()
            if self.noop or nbytes < min_bytes or isinstance(t, (torch.nn.Parameter, torch.nn.Buffer)):
                return t
            self.offloaded[id(t.untyped_storage())] = alloc(t.untyped_storage().nbytes())
            return (t.dtype, t.shape, t.detach().contiguous().view(torch.uint8).numpy().copy())

        def unpack(p):
            if isinstance(p, torch.Tensor):
                return p
            dtype, shape, host = p
            return torch.from_numpy(host).view(dtype).view(shape).clone()     # brought back: a new device tensor

        super().__init__(pack, unpack)


def _model():
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG)).to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def _step(offload: bool):
    """(tracked bytes when forward ends, offloaded layer-input bytes, backward peak) of one full fine-tuning step."""
    model = _model()
    ids = torch.randint(0, 128, (B, S))
    ctx = Offload() if offload else None
    if ctx is not None:          # NoOpManager around the output head (_activation_offloading.py:402-410)
        model.lm_head.register_forward_pre_hook(lambda *a: setattr(ctx, "noop", True))
        model.lm_head.register_forward_hook(lambda *a: setattr(ctx, "noop", False))
        model.model.norm.register_forward_pre_hook(lambda *a: setattr(ctx, "layers", dict(ctx.offloaded)))
    with Tracker() as tr:
        tr.enter("forward")
        with ctx if ctx is not None else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            logits = model.lm_head(model.model(input_ids=ids).last_hidden_state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 128).float(), ids.reshape(-1))
        del logits
        end_of_forward = tr.total
        tr.enter("backward")
        loss.backward()
    layers = sum(ctx.layers.values()) if ctx is not None else 0
    return end_of_forward, layers, tr.phase_peaks()["backward"].bytes


def test_checkpointed_layer_inputs_leave_the_gpu_as_estimated():
    spec = spec_from_config(CFG, name="tiny-llama")
    setup = Setup.create(method="full", precision="bf16-true", grad_ckpt=True, act_offload=True, batch=B, seq=S,
                         stack="torchtune")
    a = model_states(spec, setup).activations.at(B, S)
    plain_fwd, _, _ = _step(offload=False)
    off_fwd, layer_inputs, _ = _step(offload=True)
    resid = alloc(B * S * 64 * 2)
    # what the offloader saw while the decoder layers ran: the three checkpointed layer inputs and the embedding's
    # int64 indices (B x S x 8 B = 1,024 B: just at min_offload_size)
    assert layer_inputs == 3 * resid + alloc(B * S * 8)
    assert a.offloaded == 3 * resid and a.layer_acts == 0          # the estimate: all layer inputs in CPU memory
    # on the device at the end of forward: 3 layer inputs fewer; the final norm's saves left too (the estimate
    # keeps them, as torchtune's forward stash does until backward starts)
    assert plain_fwd - off_fwd >= 3 * resid
    assert a.bwd_layer_acts == 2 * resid and a.stash == 3 * resid   # min(5, L) layer inputs while a layer runs


def test_offload_estimates_llama3_8b():
    """Llama-3-8B LoRA, 1 x 2048, checkpointing: 32 layer inputs of 16 MiB leave the GPU (512 MiB in CPU memory);
    Unsloth keeps the last layer's input and two staging buffers (48 MiB)."""
    spec = resolve_model("llama-3-8b").spec
    kw = dict(method="lora", grad_ckpt=True, batch=1, seq=2048)
    base = estimate(spec, Setup.create(**kw))
    tt = estimate(spec, Setup.create(**kw, act_offload=True, stack="torchtune", precision="bf16-mixed"))
    un = estimate(spec, Setup.create(**kw, act_offload=True, stack="unsloth"))
    mib = 2**20
    assert base.component("activations/checkpoint_inputs") == 32 * 16 * mib
    assert tt.component("activations/checkpoint_inputs") == 0
    # plan --json: the host memory the offloader holds (pinned), outside every GPU counter
    assert tt.to_dict()["activation_offload"] == {"offloader": "hooks", "cpu_bytes": 512 * mib, "gpu_layer_bytes": 0}
    assert "activation_offload" not in base.to_dict()
    d = model_states(spec, Setup.create(**kw, act_offload=True))
    a = d.activations.at(1, 2048)
    assert (a.offloaded, a.layer_acts, a.bwd_layer_acts) == (512 * mib, 0, 32 * mib)
    au = model_states(spec, Setup.create(**kw, act_offload=True, stack="unsloth")).activations.at(1, 2048)
    assert (au.offloaded, au.layer_acts, au.buffers) == (31 * 16 * mib, 16 * mib, 32 * mib)
    assert un.component("buffers/offload_staging") == 32 * mib
    # below Unsloth's 2 MiB threshold nothing is offloaded (64 tokens x 4096 x 2 B = 512 KiB)
    small = model_states(spec, Setup.create(**kw, act_offload=True, stack="unsloth")).activations.at(1, 64)
    assert (small.offloaded, small.buffers) == (0, 0)


def test_offload_without_checkpointing_and_warnings():
    spec = resolve_model("qwen2.5-0.5b").spec
    s = Setup.create(method="lora", grad_ckpt=False, act_offload=True, batch=1, seq=1024)
    a = model_states(spec, s).activations.at(1, 1024)
    plain = model_states(spec, s.with_(act_offload=False)).activations.at(1, 1024)
    assert a.offloaded == plain.layer_acts and a.layer_acts == 0
    # brought back / in flight: one layer's saves (the largest layer's), not all of them
    assert a.bwd_layer_acts == a.stash and a.first_layer_acts <= a.stash < 2 * plain.layer_acts // spec.num_layers
    e = estimate(spec, s.with_(stack="torchtune"))
    assert any("torchtune refuses enable_activation_offloading" in w for w in e.warnings)
    e = estimate(spec, s.with_(stack="unsloth"))
    assert any("nothing is offloaded" in w for w in e.warnings)
    assert model_states(spec, s.with_(stack="unsloth")).activations.at(1, 1024).offloaded == 0
