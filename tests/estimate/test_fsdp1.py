"""``--strategy fsdp1``: FSDP1 (``FullyShardedDataParallel``, flat parameters) per rank (vramplan/estimate/distributed.py).

The flat-parameter layout is checked against torch 2.13's own FSDP1 on three CPU ranks (gloo, slow test,
tests/estimate/fsdp1_worker.py): per unit the sharded FlatParameter, its padding, the all-gather destination
``_full_param_padded`` and the sharded gradient, tensor by tensor, and the optimizer states per rank. The rest
(what is alive when) is checked from first principles with hand-computed sizes; the CUDA-only parts (the
streams, the caching allocator) cite torch's source in the estimator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from gloo_ranks import run_on_free_port
from hypothesis import given, settings
from hypothesis import strategies as hs

from vramplan.dtypes import alloc
from vramplan.errors import SetupError
from vramplan.estimate import distributed as D
from vramplan.estimate import estimate
from vramplan.estimate.structure import static_structure, structural_setup
from vramplan.lora import LoraConfig
from vramplan.profiles import resolve_model
from vramplan.setup import Setup
from vramplan.shapes import spec_from_config

LLAMA8B_PARAMS = 8_030_261_248            # profiles/models: exact
LLAMA8B_VOCAB, LLAMA8B_HIDDEN = 128_256, 4096
LLAMA8B_LAYER = 218_112_000               # 4096·(4096+1024+1024+4096) + 3·4096·14336 + 2·4096
TINY = dict(model_type="qwen2", hidden_act="silu", hidden_size=36, intermediate_size=50, num_attention_heads=4,
            num_key_value_heads=2, num_hidden_layers=2, vocab_size=131, max_position_embeddings=64,
            tie_word_embeddings=False, rms_norm_eps=1e-6)


def per_rank(est) -> dict:
    return est.extra["per_rank"]


def llama8b():
    return resolve_model("llama-3-8b").spec


# ------------------------------------------------------------------------------------ the flat layout
@pytest.mark.parametrize("numels,n,align,expected", [
    ([671], 2, 0, (671, 336)),            # chunk(2) of 671: 336 + 335, the last rank padded by one
    ([671], 2, 4, (672, 336)),            # use_orig_params: padded to a multiple of the world size first
    ([3, 5], 3, 4, (9, 3)),               # 3, pad 1 to the 4-element boundary, 5: 9, divisible by 3
    ([3, 5, 2], 4, 8, (20, 5)),           # 3 +5 pad, 5 +3 pad → 16, 2 → 18, +2 to a multiple of 4
    ([10], 16, 0, (10, 1)),               # fewer elements than ranks: chunk gives 10 chunks of 1, 6 empty ones
])
def test_flat_param_numel_worked_examples(numels, n, align, expected):
    """Hand-computed from _flat_param.py: _init_flat_param_and_metadata (alignment before each parameter,
    world-size padding) and _get_shard (ceil(total / N) per rank)."""
    assert D.flat_param_numel(numels, n, align) == expected


def test_fsdp1_is_not_zero1_and_is_sharded():
    """Before FSDP1 was modelled, ``--strategy fsdp1`` fell through to the DeepSpeed branch (stage '1')."""
    est = estimate(llama8b(), Setup.create(method="full", gpus=8, strategy="fsdp1"))
    assert set(per_rank(est)["model_states"]) == {"weights", "gradients", "optimizer_states"}
    assert "fsdp1" in D.SHARDED
    assert any("FSDP1 FULL_SHARD" in a for a in est.assumptions)


def test_full_finetuning_states_are_exactly_one_eighth():
    """Llama-3-8B full, bf16-mixed (fp32 masters, accelerate's upcast of trainable FlatParameters): every unit's
    numel (a layer 218,112,000, the root 2·128,256·4096 + 4096) divides by 8 and by the 4-element fp32 alignment,
    so each rank holds exactly ψ/8 fp32 parameters and ψ/8 fp32 gradients, one 512-B-multiple allocation per unit."""
    ms = per_rank(estimate(llama8b(), Setup.create(method="full", gpus=8, strategy="fsdp1")))["model_states"]
    assert ms["weights"] == 4 * LLAMA8B_PARAMS // 8
    assert ms["gradients"] == 4 * LLAMA8B_PARAMS // 8


def test_the_root_stays_gathered_and_two_layers_are_unsharded():
    """FULL_SHARD never reshards the root after forward (_post_forward_reshard: ``not state._is_root``): the
    embedding, final norm and lm_head in bf16 from the first forward to the end of backward, plus two decoder
    layers and the next layer's bf16 shard while it is gathered."""
    est = estimate(llama8b(), Setup.create(method="full", gpus=8, strategy="fsdp1"))
    root = 2 * (2 * LLAMA8B_VOCAB * LLAMA8B_HIDDEN + LLAMA8B_HIDDEN)
    expected = root + 2 * 2 * LLAMA8B_LAYER + 2 * LLAMA8B_LAYER // 8
    rs = D.rank_states(llama8b(), Setup.create(method="full", gpus=8, strategy="fsdp1"),
                       static_structure(llama8b(), structural_setup(Setup.create(method="full"))))
    for phase in ("forward", "backward", "backward (layers)"):
        assert [b for name, b, _ in rs.buffers[phase] if name == "buffers/allgather"] == [expected]
    assert est.component("buffers/allgather") == expected


def test_backward_holds_the_head_gradient_until_the_embedding():
    """Full fine-tuning: the root's parameters are views of one FlatParameter, so their gradients wait in
    autograd's SplitWithSizesBackward until the embedding's arrives at the end of backward: lm_head's and the
    final norm's bf16 gradients are held through the layers, on top of one layer's 2× (per-parameter gradients
    + the flat gradient they are concatenated into); at the end, the root's own 2× may be larger."""
    s = llama8b()
    setup = Setup.create(method="full", gpus=8, strategy="fsdp1")
    rs = D.rank_states(s, setup, static_structure(s, structural_setup(Setup.create(method="full"))))
    held = alloc(2 * LLAMA8B_VOCAB * LLAMA8B_HIDDEN) + alloc(2 * LLAMA8B_HIDDEN)
    layer = 2 * 2 * LLAMA8B_LAYER
    root = 2 * 2 * (2 * LLAMA8B_VOCAB * LLAMA8B_HIDDEN + LLAMA8B_HIDDEN)
    assert [b for name, b, _ in rs.buffers["backward (layers)"] if name == "buffers/reduce_buckets"] == \
           [max(held + layer, root)]
    assert not [b for name, b, _ in rs.buffers["backward"] if name == "buffers/reduce_buckets"], \
        "the first backward node (the loss) produces no parameter gradient yet"
    assert rs.grad_head == 0, "the root's sharded gradient is reduce-scattered last, not first"


def test_lora_frozen_layers_have_no_gradient_adapters_are_units():
    """HF Trainer + PEFT: every LoRA Linear is its own unit (peft fsdp_auto_wrap_policy), so the decoder-layer
    FlatParameters are all frozen (requires_grad False: no gradient) and only the adapters' shards get one."""
    s = resolve_model("qwen2.5-0.5b").spec
    setup = Setup.create(method="lora", gpus=4, strategy="fsdp1")
    st = static_structure(s, structural_setup(Setup.create(method="lora")))
    units, warns = D.fsdp1_units(s, setup, st)
    assert not warns
    assert len([u for u in units if u.name.startswith("adapter:")]) == len(st.adapters)
    assert all(not u.requires_grad for u in units if not u.name.startswith("adapter:"))
    # each adapter is one fp32 parameter: aligned to 16 B (4 elements) — one tensor, so only the 4-rank padding
    expected = sum(alloc(-(-t.numel // 4) * 4) for t in st.adapters)    # ceil(numel/4) fp32 elements per rank
    assert per_rank(estimate(s, setup))["model_states"]["gradients"] == expected


def test_offload_keeps_sharded_gradients_on_the_gpu_during_backward_only():
    """CPUOffload: _saved_grad_shard stays on the GPU until _finalize_params (prepare_gradient_for_optim deletes
    it after copying to _cpu_grad), so backward accumulates every shard's gradient; the step runs on the CPU."""
    s = llama8b()
    setup = Setup.create(method="full", gpus=8, strategy="fsdp1", offload="params")
    rs = D.rank_states(s, setup, static_structure(s, structural_setup(Setup.create(method="full"))))
    assert rs.grads == 4 * LLAMA8B_PARAMS // 8 and rs.grads_step == 0
    assert rs.opt_gpu == 0 and sum(b for _, b, _ in rs.weights) == 0
    assert rs.cpu["params"] == rs.cpu["gradients"] == 4 * LLAMA8B_PARAMS // 8, "_local_shard and _cpu_grad, pinned"
    est = estimate(s, setup)
    assert est.extra["cpu_bytes_per_node"] == 8 * sum(rs.cpu.values())


def test_fsdp1_on_one_gpu_warns_and_offload_optimizer_is_refused():
    est = estimate(llama8b(), Setup.create(method="lora", gpus=1, strategy="fsdp1"))
    assert any("--strategy fsdp1 with --gpus 1 shards nothing" in w for w in est.warnings)
    with pytest.raises(SetupError, match="--offload optimizer needs --strategy"):
        Setup.create(method="full", gpus=2, strategy="fsdp1", offload="optimizer")


def test_int8_and_mixed_dtype_units_warn():
    """FSDP1 raises where torch would: integer tensors, and a FlatParameter of two dtypes (QLoRA after
    prepare_model_for_kbit_training: bf16-stored 4-bit data next to fp32 norms), one warning for all layers."""
    s = llama8b()
    int8 = estimate(s, Setup.create(method="qlora", quant="int8", gpus=2, strategy="fsdp1"))
    assert any("cannot flatten int8" in w for w in int8.warnings)
    kbit = estimate(s, Setup.create(method="qlora", gpus=4, strategy="fsdp1"))
    mixed = [w for w in kbit.warnings if "Must flatten tensors with uniform dtype" in w]
    assert len(mixed) == 1 and "layer0-layer31 (bf16 and fp32" in mixed[0] and "--no-kbit-prep" in mixed[0]
    plain = estimate(s, Setup.create(method="qlora", kbit_prep=False, gpus=4, strategy="fsdp1"))
    assert not plain.warnings
    # the packed 4-bit data is flattened and sharded: ~1/4 of the single-GPU bytes per rank
    one = estimate(s, Setup.create(method="qlora", kbit_prep=False))
    q1, q4 = one.component("weights/quantized"), plain.component("weights/quantized")
    assert q1 / 4 <= q4 <= q1 / 4 + 512 * 33, "one 512-B-rounded shard per unit"


@pytest.mark.parametrize("method,n,offload", [("full", 2, "none"), ("full", 8, "none"), ("lora", 4, "none"),
                                              ("full", 8, "params")])
def test_fsdp1_needs_more_than_fsdp2_on_llama3_8b(method, n, offload):
    """One reason fsdp1 is not among smallest_gpus' candidates (PREFERENCE): per rank it holds what FSDP2 holds
    plus the root kept unsharded through backward (the embedding, 1 GiB in bf16 here). The estimate is not
    larger everywhere — FSDP2's counts its tail unit's reduce-scatter at the first backward node, so for
    Qwen2.5-7B full fine-tuning on 8 GPUs fsdp1's peak is 0.04 GiB lower — and the other reason is that
    transformers 5.24 deprecates its FSDP1 path (training_args.py:2863-2866): fit should not advise it."""
    s = llama8b()
    one = estimate(s, Setup.create(method=method, gpus=n, strategy="fsdp1", offload=offload))
    two = estimate(s, Setup.create(method=method, gpus=n, strategy="fsdp", offload=offload))
    assert one.device_used_bytes >= two.device_used_bytes
    assert "fsdp1" not in D.PREFERENCE


# ------------------------------------------------------------------------- real FSDP1 on three CPU ranks
WORKER = Path(__file__).with_name("fsdp1_worker.py")
WORLD = 3


def _case(spec, setup: Setup, *, use_orig_params: bool, trace: bool = False) -> dict:
    """The parameters of vramplan's structure for ``setup``, as the worker builds them."""
    st = static_structure(spec, structural_setup(setup.with_(gpus=1, strategy="ddp")))
    params = [{"name": p.tensor.name, "shape": list(p.tensor.shape), "dtype": p.dtype,
               "requires_grad": p.trainable, "layer": p.tensor.layer} for p in st.placements]
    params += [{"name": t.name, "tied_to": t.tied_to, "shape": list(t.shape), "dtype": "fp32",
                "requires_grad": False, "layer": None} for t in spec.tensors if t.tied_to]
    for t in st.adapters:
        layer = int(t.name.split("layers.")[1].split(".")[0]) if "layers." in t.name else None
        params.append({"name": t.name + ".weight", "shape": list(t.shape), "dtype": t.dtype,
                       "requires_grad": not t.frozen, "layer": layer})
    return {"params": params, "use_orig_params": use_orig_params, "peft_policy": bool(st.adapters),
            "param_dtype": setup.compute_dtype if setup.mixed else None, "trace": trace}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    pytest.importorskip("torch")
    tied = spec_from_config(dict(TINY, tie_word_embeddings=True), name="tiny-tied")
    untied = spec_from_config(TINY, name="tiny")
    cases = [
        (untied, Setup.create(method="full", gpus=WORLD, strategy="fsdp1"), True, True),
        (untied, Setup.create(method="lora", gpus=WORLD, strategy="fsdp1",
                              lora=LoraConfig(r=4, targets=("all-linear",))), True, False),
        (tied, Setup.create(method="full", gpus=WORLD, strategy="fsdp1", precision="bf16-true"), False, False),
    ]
    d = tmp_path_factory.mktemp("fsdp1")
    (d / "cases.json").write_text(json.dumps([_case(s, st, use_orig_params=u, trace=t) for s, st, u, t in cases]))
    proc = run_on_free_port(lambda port: [sys.executable, str(WORKER), str(d / "cases.json"), str(d / "out.json"),
                                          str(WORLD), str(port)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads((d / "out.json").read_text())
    return cases, ranks


def _expected_units(spec, setup: Setup, use_orig_params: bool) -> dict:
    st = static_structure(spec, structural_setup(setup.with_(gpus=1, strategy="ddp")))
    units, _ = D.fsdp1_units(spec, setup, st, use_orig_params=use_orig_params)
    out = {}
    for u in units:
        first = u.members[0][0] + (".weight" if u.name.startswith("adapter:") else "")
        out[first] = u
    return out


TORCH_DTYPE = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16"}


@pytest.mark.slow
@pytest.mark.parametrize("case", [0, 1, 2], ids=["full-bf16-mixed-orig-params", "lora-all-linear", "full-tied-bf16-true"])
def test_flat_parameters_match_torch_fsdp1(measured, case):
    cases, ranks = measured
    spec, setup, use_orig, _ = cases[case]
    expected = _expected_units(spec, setup, use_orig)
    for r, results in enumerate(ranks):
        got = results[case]["units"]
        assert set(got) == set(expected), f"rank {r}: units by first parameter"
        for key, u in expected.items():
            g = got[key]
            assert g["shard_numel"] == u.shard_numel, (r, key)
            assert g["unpadded_unsharded"] == u.flat_numel, (r, key)
            assert g["dtype"] == TORCH_DTYPE[u.dtype], (r, key)
            assert g["full_param_padded"] == [u.flat_padded, TORCH_DTYPE[u.gather_dtype]], (r, key)
            assert g["requires_grad"] == u.requires_grad, (r, key)
            assert g["grad"] == ([u.shard_numel, TORCH_DTYPE[u.dtype]] if u.requires_grad else None), (r, key)


@pytest.mark.slow
@pytest.mark.parametrize("case", [0, 1, 2], ids=["full-bf16-mixed-orig-params", "lora-all-linear", "full-tied-bf16-true"])
def test_optimizer_states_per_rank_match_torch(measured, case):
    """use_orig_params: AdamW holds each original parameter's slice of the rank's shard (none for a parameter
    outside it), parameter by parameter and rank by rank; without it, the FlatParameter's padded shard. The
    estimate takes, per unit, the rank holding the most."""
    cases, ranks = measured
    spec, setup, use_orig, _ = cases[case]
    expected = _expected_units(spec, setup, use_orig)
    per_unit_max = {key: 0 for key in expected}
    for r, results in enumerate(ranks):
        exp_avg = {name: k for name, key, k, _ in results[case]["opt_states"] if key == "exp_avg"}
        steps = {name for name, key, _, _ in results[case]["opt_states"] if key == "step"}
        assert steps == set(exp_avg)
        got_units = results[case]["units"]
        for key, u in expected.items():
            if not u.requires_grad:
                continue
            if use_orig:
                names = [m[0] + (".weight" if u.name.startswith("adapter:") else "") for m in u.members]
                want = {nm: k for nm, k, m in zip(names, u.slices(r), u.members, strict=True) if m[4] and k}
                assert {nm: exp_avg[nm] for nm in names if nm in exp_avg} == want, (r, key)
                per_unit_max[key] = max(per_unit_max[key], sum(want.values()))
            else:
                fqn = [nm for nm in exp_avg if nm.startswith("_flat_param") or nm.endswith("flat_param")]
                assert fqn, "the optimizer holds FlatParameters"
                per_unit_max[key] = got_units[key]["shard_numel"]
    if use_orig:
        est = sum(t.numel for u in expected.values() for t in u.optimizer_tensors())
        assert est == sum(per_unit_max.values())
        assert all(sum(k for _, key, k, _ in res[case]["opt_states"] if key == "exp_avg") <= est for res in ranks)
    else:
        assert sorted(sum(k for _, key, k, _ in res[case]["opt_states"] if key == "exp_avg") for res in ranks) == \
               [sum(u.shard_numel for u in expected.values() if u.requires_grad)] * WORLD


@pytest.mark.slow
def test_what_is_alive_in_backward_matches_torch(measured):
    """Rank 0's CPU allocations during its second forward and backward (torch.profiler memory events, full
    fine-tuning, bf16 MixedPrecision, three ranks), against the moments the estimate counts:

    * the root's unsharded FlatParameter (bf16, padded) is gathered before the decoder layers' forward and freed
      only in the root's post-backward hook, after both layers' (never resharded after forward);
    * a bf16 allocation of exactly lm_head's size (131 × 36 × 2 B), its gradient, is made before the first
      layer's post-backward hook and freed after the last one: it waits for the embedding's;
    * when the last layer's post-backward hook starts, three allocations of a layer's padded bf16 size are
      alive: that layer's unsharded parameters, the previous layer's (prefetched by BACKWARD_PRE) and the flat
      gradient autograd concatenated (FSDP1_LAYERS_GATHERED = 2, plus the unit's gradient).
    """
    cases, ranks = measured
    spec, setup, use_orig, _ = cases[0]
    units = _expected_units(spec, setup, use_orig)
    root = next(u for u in units.values() if u.name == "root")
    layer = next(u for u in units.values() if u.name == "layer1")
    trace = ranks[0][0]["trace"]
    hooks, allocs = trace["hooks"], trace["allocs"]
    assert len(hooks) == 3, "two decoder layers and the root, the root's last"

    def alive(a, t):
        return a[1] <= t and (a[2] is None or a[2] > t)

    layer_size, root_size = 2 * layer.flat_padded, 2 * root.flat_padded
    first_layer = min(a[1] for a in allocs if a[0] == layer_size)
    assert [a for a in allocs if a[0] == root_size and a[1] < first_layer and a[2] is not None
            and a[2] > hooks[1][1]], "the root's gathered parameters do not live from forward to its own hook"
    head = TINY["vocab_size"] * TINY["hidden_size"] * 2
    assert [a for a in allocs if a[0] == head and a[1] < hooks[0][0] and a[2] is not None
            and a[2] > hooks[1][1]], "no head-sized gradient alive across the decoder layers' post-backward hooks"
    assert sum(1 for a in allocs if a[0] == layer_size and alive(a, hooks[0][0])) == 3


@settings(max_examples=20, deadline=None, derandomize=True)
@given(n=hs.integers(min_value=2, max_value=63), method=hs.sampled_from(["full", "lora"]),
       offload=hs.sampled_from(["none", "params"]))
def test_per_rank_memory_never_grows_with_more_gpus(n, method, offload):
    """smallest_gpus' binary search needs it: the padded unsharded FlatParameters can grow by < N elements
    with N, far less than every shard shrinks."""
    s = resolve_model("qwen2.5-0.5b").spec
    a = estimate(s, Setup.create(method=method, gpus=n, strategy="fsdp1", offload=offload))
    b = estimate(s, Setup.create(method=method, gpus=n + 1, strategy="fsdp1", offload=offload))
    assert b.device_used_bytes <= a.device_used_bytes


def test_cli_plan_json_for_fsdp1():
    from vramplan.cli.main import cli

    res = CliRunner().invoke(cli, ["plan", "qwen2.5-0.5b", "--method", "full", "--gpus", "4", "--strategy", "fsdp1",
                                   "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["per_rank"]["strategy"] == "fsdp1" and d["cpu_bytes_per_node"] == 0
    alloc_sum = sum(v for k, v in d["breakdown_bytes"].items() if d["counters"][k] == "allocated")
    assert alloc_sum == d["peak_allocated_bytes"]
    assert d["breakdown_bytes"]["buffers/allgather"] > 0
