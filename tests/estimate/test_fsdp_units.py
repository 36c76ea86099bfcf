"""FSDP2 unit layouts (issue 14): accelerate's units vs LitGPT's and torchtune's ``root`` layout.

The layouts are checked against torch 2.13's own ``fully_shard`` on two CPU ranks (gloo): this file is also the
worker (``python test_fsdp_units.py CASES.json OUT.json PORT``). Every rank builds a module tree with exactly the
parameters of vramplan's structure (tests/estimate/fsdp1_worker.py ``build``: every parameter on the path of the
activation, so backward visits the modules in reverse forward order), applies ``fully_shard`` as each stack does,
runs one forward and backward, and rank 0 records which parameters are unsharded (plain tensors instead of
``DTensor`` shards) at each decoder layer's forward, when the model's forward has returned (the loss), when the
gradient reaches each layer's output in backward, and at the end:

* ``litgpt``: litgpt 0.5.13 ``finetune/lora.py:522-541`` ``parallelize_fn``: ``fully_shard`` on every Block (its
  LoRA weights are parameters, not Linears), then ``fully_shard(model)`` with ``reshard_after_forward`` unset;
* ``torchtune``: torchtune 0.6.1 ``training/_distributed.py:519-568`` ``shard_model``: every ``layers.i``, then the
  root, all with ``reshard_after_forward=True`` (recipes/lora_finetune_distributed.py:472-484);
* ``accelerate``: accelerate 1.16 ``fsdp2_prepare_model``: every layer, the embedding, ``[norm, lm_head]`` with
  ``reshard_after_forward=False``, then the root.

On CPU nothing runs ahead of the compute (no all-gather stream), so one layer is unsharded at a time; on a GPU
the implicit prefetch adds the next one (the estimate's two layers).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------------------------ the worker


def _unit_of(name: str, layout: str) -> str:
    parts = name.split(".")
    if "layers" in parts:
        return "layer " + parts[parts.index("layers") + 1]
    if layout == "accelerate":
        if "embed_tokens" in parts:
            return "embed"
        if parts[0] == "lm_head" or parts[:2] == ["model", "norm"]:
            return "tail"
    return "root"


def _measure(model, layers, layout: str) -> list[dict]:
    """One forward and backward of ``model``, recording the unsharded parameters' bytes per unit."""
    import torch
    from torch.distributed.tensor import DTensor

    moments: list[dict] = []
    names = {id(m): n for n, m in model.named_modules()}
    kind = "accelerate" if layout == "accelerate" else "root"

    def record(what: str) -> None:
        by: dict[str, int] = {}
        grads: dict[str, int] = {}
        for n, p in model.named_parameters():
            if not isinstance(p, DTensor):
                u = _unit_of(n, kind)
                by[u] = by.get(u, 0) + p.numel() * p.element_size()
                if p.grad is not None:              # an unsharded gradient not reduce-scattered yet
                    grads[u] = grads.get(u, 0) + p.grad.numel() * p.grad.element_size()
        moments.append({"moment": what, "gathered": by, "grads": grads})

    def pre(m, args):
        record(f"forward {names[id(m)]}")

    def post(m, args, output):
        name = names[id(m)]
        output.register_hook(lambda g: record(f"backward {name}"))

    for m in layers:                        # after fully_shard's own hooks: they run after its unshard
        m.register_forward_pre_hook(pre)
        m.register_forward_hook(post)
    y = model(torch.ones(1))
    record("loss")
    y.sum().backward()
    record("end")
    return moments


def _rank(rank: int, world: int, port: int, cases_path: str, out_path: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    sys.path.insert(0, str(HERE))
    from fsdp1_worker import Layer, build

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    cases = json.loads(Path(cases_path).read_text())
    out: dict[str, dict] = {case: {} for case in cases}
    for case, layout in [(c, lay) for c in cases for lay in ("litgpt", "torchtune", "accelerate")]:
        torch.manual_seed(0)
        model = build(cases[case])
        layers = [m for m in model.modules() if isinstance(m, Layer)]
        kw = {"reshard_after_forward": True} if layout == "torchtune" else {}
        for m in layers:
            fully_shard(m, mesh=mesh, **kw)
        if layout == "accelerate":
            inner = model.get_submodule("model")
            fully_shard(inner.get_submodule("embed_tokens"), mesh=mesh)
            fully_shard([inner.get_submodule("norm"), model.get_submodule("lm_head")], mesh=mesh,
                        reshard_after_forward=False)
        fully_shard(model, mesh=mesh, **kw)
        out[case][layout] = _measure(model, layers, layout)
    if rank == 0:
        Path(out_path).write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()
    # leave without running the interpreter's teardown: gloo's transport threads can still be alive there, and a
    # std::thread destroyed unjoined aborts the process ("terminate called without an active exception")
    os._exit(0)


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(2, int(sys.argv[3]), sys.argv[1], sys.argv[2]), nprocs=2)
    sys.exit(0)

# ------------------------------------------------------------------------------------------------- the tests
import pytest  # noqa: E402

from vramplan.estimate import distributed as D  # noqa: E402
from vramplan.estimate.structure import static_structure, structural_setup  # noqa: E402
from vramplan.lora import LoraConfig  # noqa: E402
from vramplan.setup import Setup  # noqa: E402
from vramplan.shapes import spec_from_config  # noqa: E402

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, num_hidden_layers=3, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False,
            hidden_act="silu")
SPEC = spec_from_config(TINY, name="tiny")
H, I_DIM, V, L = 64, 128, 256, 3
#: one decoder layer in fp32, first principles: q, o 64x64; k, v 32x64 (2 KV heads of 16); gate, up 128x64,
#: down 64x128; two RMSNorm weights of 64; LoRA r=4 on q and v: A 4x64 each, B 64x4 and 32x4
LAYER_BYTES = 4 * (2 * H * H + 2 * 32 * H + 3 * I_DIM * H + 2 * H + 2 * 4 * H + 4 * H + 4 * 32)
#: the root: embedding 256x64, final norm 64, lm_head 256x64
ROOT_BYTES = 4 * (2 * V * H + H)


def _setup(n: int = 2, **kw) -> Setup:
    return Setup.create(**{"method": "lora", "gpus": n, "strategy": "fsdp", "precision": "32-true",
                           "lora": LoraConfig(r=4, targets=("q_proj", "v_proj")), "seq": 64, **kw})


def _buffers(setup: Setup, layout: str) -> dict[str, int]:
    st = static_structure(SPEC, structural_setup(setup.with_(gpus=1, strategy="ddp")))
    r = D.rank_states(SPEC, setup, st, fsdp_units=layout)
    return {p: sum(b for n, b, _ in r.buffers[p] if n == "buffers/allgather") for p in D.TRAIN_PHASES}


def _params(setup: Setup) -> list[dict]:
    st = static_structure(SPEC, structural_setup(setup.with_(gpus=1, strategy="ddp")))
    out = [{"name": p.tensor.name, "shape": list(p.tensor.shape), "dtype": p.dtype, "requires_grad": p.trainable,
            "layer": p.tensor.layer} for p in st.placements]
    for t in st.adapters:
        layer = int(t.name.split("layers.")[1].split(".")[0]) if "layers." in t.name else None
        out.append({"name": t.name + ".weight", "shape": list(t.shape), "dtype": t.dtype,
                    "requires_grad": not t.frozen, "layer": layer})
    return out


def test_the_root_layout_gathers_the_root_and_two_layers_in_every_phase():
    """First principles (the module docstring of vramplan/estimate/distributed.py): the root unit (embedding,
    final norm, head) stays gathered from forward to the end of backward, beside the computing and the prefetched
    layer; accelerate's layout re-gathers the embedding at the end of backward and keeps [norm, head] only until
    their backward."""
    root = _buffers(_setup(), "root")
    assert root == {p: ROOT_BYTES + 2 * LAYER_BYTES for p in D.TRAIN_PHASES}
    acc = _buffers(_setup(), "accelerate")
    embed, tail = 4 * V * H, 4 * (V * H + H)
    assert acc["forward"] == tail + 2 * LAYER_BYTES
    assert acc["backward (layers)"] == max(2 * LAYER_BYTES, LAYER_BYTES + embed)
    assert root["backward (layers)"] - acc["backward (layers)"] == ROOT_BYTES      # the whole root, in addition


def test_layout_is_accelerates_unless_the_setup_says_otherwise():
    assert D.fsdp_unit_layout(_setup()) == "accelerate"
    assert set(D.FSDP_UNIT_LAYOUTS) == {"accelerate", "root"}
    with pytest.raises(ValueError, match="accelerate, root"):
        D.rank_states(SPEC, _setup(), static_structure(SPEC, structural_setup(_setup())), fsdp_units="roots")


def test_the_setup_option_offers_the_estimates_layouts():
    """``--fsdp-units`` (vramplan/setup.py ``FSDP_UNITS``, the choices of ``Setup.fsdp_units``) offers exactly the
    layouts the estimate prices; skipped until the option lands in setup.py."""
    import vramplan.setup as setup_module

    choices = getattr(setup_module, "FSDP_UNITS", None)
    if choices is None:
        pytest.skip("Setup.fsdp_units is not an option yet (vramplan/setup.py)")
    assert tuple(choices) == D.FSDP_UNIT_LAYOUTS
    s = _setup(fsdp_units="root")
    assert D.fsdp_unit_layout(s) == "root"
    assert _buffers(s, None)["forward"] == ROOT_BYTES + 2 * LAYER_BYTES        # read from the setup


def test_full_finetuning_root_holds_the_head_gradient_to_the_end_of_backward():
    """Full fine-tuning, root layout: the head's (and final norm's) unsharded gradient is made first and waits for
    the root's post-backward at the end of backward, when the embedding's joins it and both are copied into the
    reduce-scatter input."""
    setup = _setup(method="full", lora=None)
    st = static_structure(SPEC, structural_setup(setup.with_(gpus=1, strategy="ddp")))
    r = D.rank_states(SPEC, setup, st, fsdp_units="root")
    rs = {p: sum(b for n, b, _ in r.buffers[p] if n == "buffers/reduce_buckets") for p in D.TRAIN_PHASES}
    head_g = 4 * (V * H + H)
    layer_g = 4 * (2 * H * H + 2 * 32 * H + 3 * I_DIM * H + 2 * H)
    assert rs["backward"] == head_g
    assert rs["backward (layers)"] == max(head_g + 2 * layer_g, 2 * ROOT_BYTES)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    pytest.importorskip("torch.distributed.fsdp")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    d = tmp_path_factory.mktemp("fsdp_units")
    (d / "params.json").write_text(json.dumps({"lora": _params(_setup()),
                                               "full": _params(_setup(method="full", lora=None))}))
    from gloo_ranks import run_on_free_port

    proc = run_on_free_port(lambda port: [sys.executable, __file__, str(d / "params.json"), str(d / "out.json"),
                                          str(port)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((d / "out.json").read_text())


def _at(moments: list[dict], prefix: str, what: str = "gathered") -> list[dict[str, int]]:
    return [m[what] for m in moments if m["moment"].startswith(prefix)]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["litgpt", "torchtune"])
def test_torch_gathers_what_the_root_layout_says(measured, layout):
    m = measured["lora"][layout]
    fwd, bwd = _at(m, "forward"), _at(m, "backward")
    assert len(fwd) == len(bwd) == L
    # the root unit, whole, at every layer's forward and backward; one layer beside it (no prefetch on CPU)
    for g in fwd + bwd:
        assert g["root"] == ROOT_BYTES
        assert sum(v for k, v in g.items() if k.startswith("layer")) == LAYER_BYTES
    assert [sorted(g) for g in fwd + bwd] == [sorted(["root", f"layer {i}"])
                                             for i in [*range(L), *reversed(range(L))]]
    loss = _at(m, "loss")[0]
    # LitGPT leaves reshard_after_forward unset: the root is not resharded after forward; torchtune passes True:
    # resharded while the loss runs, re-gathered when backward starts (the estimate keeps it: an upper bound)
    assert loss == ({"root": ROOT_BYTES} if layout == "litgpt" else {})
    assert _at(m, "end")[0] == {}
    est = _buffers(_setup(), "root")
    assert max(sum(g.values()) for g in fwd + bwd) + LAYER_BYTES == est["forward"] == est["backward (layers)"]


@pytest.mark.slow
def test_torch_gathers_what_the_accelerate_layout_says(measured):
    m = measured["lora"]["accelerate"]
    tail = 4 * (V * H + H)
    fwd, bwd = _at(m, "forward"), _at(m, "backward")
    # during the layers, only the layer computing: the embedding was resharded after its forward, [norm, head]
    # is gathered only from its forward (reshard_after_forward=False) to its own backward
    assert [sorted(g) for g in fwd + bwd] == [[f"layer {i}"] for i in [*range(L), *reversed(range(L))]]
    assert _at(m, "loss")[0] == {"tail": tail}
    assert _at(m, "end")[0] == {}
    est = _buffers(_setup(), "accelerate")
    assert est["forward"] == tail + 2 * LAYER_BYTES             # an upper bound: the tail with two layers
    assert est["backward (layers)"] == 2 * LAYER_BYTES          # the embedding (65,536 B) re-gathered after them


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["litgpt", "torchtune", "accelerate"])
def test_torch_holds_the_head_gradient_as_the_layout_says(measured, layout):
    """Full fine-tuning: in the root layout the head's and final norm's unsharded gradients wait through every
    layer's backward (the root's post-backward runs at the end); accelerate's [norm, head] unit reduce-scatters
    them right after its own backward. Nothing unsharded is left at the end."""
    m = measured["full"][layout]
    head_g = 4 * (V * H + H)
    held = _at(m, "backward", "grads")
    assert len(held) == L
    if layout == "accelerate":
        assert all(g == {} for g in held)
    else:
        assert held == [{"root": head_g}] * L
    assert _at(m, "end", "grads")[0] == {}
    setup = _setup(method="full", lora=None)
    st = static_structure(SPEC, structural_setup(setup.with_(gpus=1, strategy="ddp")))
    r = D.rank_states(SPEC, setup, st, fsdp_units="root" if layout != "accelerate" else "accelerate")
    rs = sum(b for n, b, _ in r.buffers["backward (layers)"] if n == "buffers/reduce_buckets")
    layer_g = 4 * (2 * H * H + 2 * 32 * H + 3 * I_DIM * H + 2 * H)
    # the estimate's layers-phase reduce-scatter buffers: a layer's gradients and their copy, plus what is held
    assert rs >= 2 * layer_g + (head_g if layout != "accelerate" else 0)
