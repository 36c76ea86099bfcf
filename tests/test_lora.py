"""``plan_lora`` against PEFT itself: ``get_peft_model(meta_model, peft.LoraConfig(...))`` on every bundled profile.

Each case builds the transformers model on the meta device, applies the real PEFT and requires
``get_nb_trainable_parameters()`` to equal ``(plan.trainable, plan.total)`` exactly -- or, where PEFT raises,
``plan_lora`` to raise :class:`TargetError`. Golden counts published elsewhere are pinned on the pure-Python
path. peft 0.21.2 / transformers 5.23 (the MoE rules depend on both; ``test_tables_match_installed_peft``
catches a drift in the tables ``vramplan.lora`` copies).
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import pytest

from vramplan.errors import TargetError
from vramplan.lora import (
    LoraConfig,
    LoraPlan,
    peft_line,
    plan_lora,
)
from vramplan.profiles import model_profiles, resolve_model
from vramplan.shapes.from_config import spec_from_config
from vramplan.shapes.remote import REMOTE_FAMILIES
from vramplan.shapes.spec import ModelSpec

peft = pytest.importorskip("peft")

REMOTE_CODE = set(REMOTE_FAMILIES)  # transformers cannot build them without the Hub's modeling code
SWEEP_LAYERS = 3                    # profiles deeper than this are compared on a 3-layer copy (_shrunk)
Outcome = tuple[int, int] | str     # (trainable, all) or "raises: <first line>"


# --------------------------------------------------------------------------------------------- helpers
_DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def _depth(config: Mapping[str, Any]) -> int:
    return int(next(config[k] for k in _DEPTH_KEYS if k in config))


def _shrunk(config: Mapping[str, Any], layers: int) -> dict[str, Any]:
    """The config with its decoder depth cut to ``layers``.

    PEFT's targeting and counting are per module and the decoder layers of these models are alike, so a
    3-layer copy checks the same rules (layer 0, a middle layer and the last layer) as the full model;
    meta-device PEFT costs 3-7 ms per adapted module, which over 12-126 layers, 47 profiles and five target
    sets took 77 s of CPU (171 s wall on a loaded 2-core box). Full-depth counts are pinned by the golden
    tests below (Llama-3-8B, Qwen2.5-14B, Qwen3-14B, bloom-389m-zh, opt-125m), which PEFT produced.
    """
    c = dict(config)
    c[next(k for k in _DEPTH_KEYS if k in c)] = layers
    if isinstance(c.get("layer_types"), list):
        c["layer_types"] = c["layer_types"][:layers]
    if isinstance(c.get("mlp_only_layers"), list):
        c["mlp_only_layers"] = [i for i in c["mlp_only_layers"] if i < layers]
    return c


def _profile(name: str) -> tuple[dict[str, Any], ModelSpec]:
    p = model_profiles()[name]
    if _depth(p.config) > SWEEP_LAYERS:
        cfg = _shrunk(p.config, SWEEP_LAYERS)
        return cfg, spec_from_config(cfg, name=f"{name}-{SWEEP_LAYERS}-layers")
    return dict(p.config), resolve_model(name).spec


def _to_peft(**kw: Any):
    """``peft.LoraConfig`` from :class:`LoraConfig` keyword arguments, as a user would write it."""
    targets = kw.get("targets")
    if kw.get("target_regex") is not None:
        peft_targets: Any = kw["target_regex"]
    elif targets is not None and len(targets) == 1 and targets[0].lower() == "all-linear":
        peft_targets = targets[0]          # PEFT's shorthand is the string, not a one-item list
    else:
        peft_targets = list(targets) if targets is not None else None
    ltt = kw.get("layers_to_transform")
    return peft.LoraConfig(
        r=kw.get("r", 8), lora_alpha=kw.get("alpha", 8), lora_dropout=float(kw.get("dropout", 0.0)),
        target_modules=peft_targets, target_parameters=list(kw.get("target_parameters", ())) or None,
        modules_to_save=list(kw.get("modules_to_save", ())) or None,
        layers_to_transform=list(ltt) if ltt is not None else None, layers_pattern=kw.get("layers_pattern"),
        use_dora=kw.get("dora", False), task_type="CAUSAL_LM")


def _first_line(exc: BaseException) -> str:
    return f"raises: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"


def _peft_outcome(config: Mapping[str, Any], **kw: Any) -> Outcome:
    from vramplan.shapes.from_meta import meta_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = peft.get_peft_model(meta_model(config), _to_peft(**kw), low_cpu_mem_usage=True)
    except Exception as exc:  # noqa: BLE001 - any PEFT refusal counts
        return _first_line(exc)
    return pm.get_nb_trainable_parameters()


def _plan_outcome(spec: ModelSpec, **kw: Any) -> Outcome:
    try:
        plan = plan_lora(spec, LoraConfig(**kw))
    except TargetError as exc:
        msg = str(exc)
        assert "\n" not in msg, f"TargetError must be one line: {msg!r}"
        return _first_line(exc)
    return plan.trainable, plan.total


def _assert_same(config: Mapping[str, Any], spec: ModelSpec, label: str, **kw: Any) -> Outcome:
    ours = _plan_outcome(spec, **kw)
    theirs = _peft_outcome(config, **kw)
    if isinstance(theirs, str) or isinstance(ours, str):
        assert isinstance(theirs, str) and isinstance(ours, str), (
            f"{label} {kw}: PEFT -> {theirs}; plan_lora -> {ours}")
    else:
        assert ours == theirs, f"{label} {kw}: plan_lora (trainable, all) {ours} != PEFT {theirs}"
    return ours


def _leaves(spec: ModelSpec, roles: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for m in spec.modules():
        leaf = m.name.rpartition(".")[2]
        if m.role in roles and m.module_type in ("linear", "conv1d") and leaf not in out:
            out.append(leaf)
    return out


# ------------------------------------------------------------------------------ every bundled profile
PROFILE_NAMES = sorted(model_profiles())


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_plan_matches_peft_on_profile(name: str) -> None:
    """Default targets, all-linear, a family list + modules_to_save, layers_to_transform, a regex with DoRA."""
    p = model_profiles()[name]
    if p.config["model_type"] in REMOTE_CODE:
        pytest.skip(f"{name}: remote-code architecture, transformers cannot build it (see test_baichuan_w_pack)")
    config, spec = _profile(name)
    attn = _leaves(spec, ("attn_q", "attn_v", "attn_qkv"))
    family = attn + _leaves(spec, ("mlp_down",))
    embedding = next(m.name.rpartition(".")[2] for m in spec.modules() if m.role == "embedding")
    assert attn, f"{name}: no attention projection found"

    outcomes = {
        "default": _assert_same(config, spec, name),
        "all-linear": _assert_same(config, spec, name, targets=("all-linear",)),
        "list+modules_to_save": _assert_same(config, spec, name, targets=tuple(family),
                                             modules_to_save=(embedding,)),
        "layers_to_transform": _assert_same(config, spec, name, targets=tuple(family),
                                            layers_to_transform=(0, spec.num_layers - 1)),
        "regex+dora": _assert_same(config, spec, name, r=4, dora=True,
                                   target_regex=rf".*\.1\..*\.({'|'.join(map(re.escape, attn))})"),
    }
    # every case but the default must have adapted something (the default may legitimately raise)
    for label, got in outcomes.items():
        if label != "default":
            assert not isinstance(got, str), f"{name} {label}: {got}"


def test_baichuan_w_pack() -> None:
    """Baichuan fuses q/k/v into ``W_pack``: ``q_proj,v_proj`` adapts nothing, and the error says so."""
    spec = resolve_model("baichuan-7b").spec
    with pytest.raises(TargetError, match="W_pack") as info:
        plan_lora(spec, LoraConfig(targets=("q_proj", "v_proj")))
    assert "q_proj" in str(info.value)
    plan = plan_lora(spec, LoraConfig(r=8, targets=("W_pack",)))
    assert plan.trainable == 32 * 8 * (4096 + 3 * 4096)


# ------------------------------------------------------------------------ MoE (transformers-5 fused experts)
MIXTRAL_CASES: list[tuple[str, dict[str, Any]]] = [
    ("all-linear", dict(targets=("all-linear",))),
    ("default raises", dict()),
    ("q_proj + gate_up_proj (no v4 name: q_proj only)", dict(targets=("q_proj", "gate_up_proj"))),
    ("experts module raises", dict(targets=("experts",))),
    ("router", dict(targets=("gate",))),
    ("w1 without w3 raises", dict(targets=("w1",))),
    ("w1+w3 -> gate_up_proj at 2r", dict(targets=("w1", "w3"))),
    ("w2", dict(targets=("w2",))),
    ("dotted v4 names", dict(targets=("mlp.gate", "layers.0.mlp.experts.w2"))),
    ("regex q_proj|w1|w3", dict(target_regex=r".*\.(q_proj|w1|w3)")),
    ("regex gate", dict(target_regex=r".*gate.*")),
    ("regex experts raises", dict(target_regex=r".*experts.*")),
    ("regex one layer broadens to all", dict(target_regex=r".*layers\.0\.self_attn\.q_proj")),
    ("regex half pair raises", dict(target_regex=r"model\.layers\.1\..*w1")),
    ("layers_to_transform skips parameters", dict(targets=("q_proj", "w1", "w3"), layers_to_transform=(1,))),
    ("target_parameters at r", dict(targets=("q_proj",), target_parameters=("experts.gate_up_proj",))),
    ("target_parameters only", dict(targets=(), target_parameters=("experts.down_proj",))),
    ("pair + same parameter once", dict(targets=("w1", "w3"), target_parameters=("experts.gate_up_proj",))),
    ("dora raises", dict(targets=("all-linear",), dora=True)),
    ("dora on attention", dict(targets=("q_proj", "v_proj"), dora=True, modules_to_save=("embed_tokens",))),
    ("dropout raises", dict(targets=("w2",), dropout=0.1)),
    ("dropout on attention", dict(targets=("q_proj",), dropout=0.1)),
    ("save wrapped router raises", dict(targets=("all-linear",), modules_to_save=("gate",))),
    ("save router", dict(targets=("q_proj",), modules_to_save=("gate",))),
    ("save experts", dict(targets=("q_proj",), modules_to_save=("experts",))),
    ("save mlp holding wrappers", dict(targets=("all-linear",), modules_to_save=("mlp",))),
    ("save lm_head, layer 1", dict(targets=("q_proj", "w2"), layers_to_transform=(1,), modules_to_save=("lm_head",))),
]
QWEN3_MOE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("all-linear (dense layer-0 MLP loses its adapters)", dict(targets=("all-linear",))),
    ("no default raises", dict()),
    ("gate_proj alone raises", dict(targets=("gate_proj",))),
    ("down_proj -> experts only", dict(targets=("down_proj",))),
    ("q_proj,v_proj", dict(targets=("q_proj", "v_proj"))),
    ("gate_proj+up_proj", dict(targets=("gate_proj", "up_proj"), r=16)),
    ("regex mlp projections", dict(target_regex=r".*\.mlp\.(gate|up|down)_proj")),
    ("regex layer-1 experts", dict(target_regex=r".*\.1\..*(gate|up)_proj")),
    ("save router", dict(targets=("q_proj",), modules_to_save=("gate",))),
    ("router + attention", dict(targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate"))),
]


@pytest.mark.parametrize(("label", "kw"), MIXTRAL_CASES, ids=[c[0] for c in MIXTRAL_CASES])
def test_mixtral_matches_peft(label: str, kw: dict[str, Any]) -> None:
    config = _shrunk(model_profiles()["mixtral-8x7b"].config, 2)
    _assert_same(config, spec_from_config(config, name="mixtral-2-layers"), label, **kw)


@pytest.mark.parametrize(("label", "kw"), QWEN3_MOE_CASES, ids=[c[0] for c in QWEN3_MOE_CASES])
def test_qwen3_moe_matches_peft(label: str, kw: dict[str, Any]) -> None:
    # layer 0 dense (mlp_only_layers), layer 1 sparse: both MLP kinds in one model
    config = _shrunk(model_profiles()["qwen3-30b-a3b"].config, 2) | {"mlp_only_layers": [0]}
    _assert_same(config, spec_from_config(config, name="qwen3-moe-2-layers"), label, **kw)


def test_qwen2_moe_is_not_converted() -> None:
    """peft converts model types *mapped to* qwen2_moe, not qwen2_moe itself: its router and experts stay
    un-adapted by all-linear, and its shared expert (nn.Linear) is adapted."""
    config = {"model_type": "qwen2_moe", "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
              "shared_expert_intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2, "vocab_size": 256}
    spec = spec_from_config(config, name="tiny-qwen2-moe")
    got = _assert_same(config, spec, "qwen2_moe", targets=("all-linear",))
    plan = plan_lora(spec, LoraConfig(targets=("all-linear",)))
    assert not any(a.parameter for a in plan.adapters)
    assert any("shared_expert.down_proj" in a.module for a in plan.adapters)
    assert got == (plan.trainable, plan.total)


def test_mixtral_adapter_shapes() -> None:
    """The shapes PEFT creates on a 1-layer Mixtral (hidden 4096, inter 14336, 8 experts, r=8)."""
    config = _shrunk(model_profiles()["mixtral-8x7b"].config, 1)
    plan = plan_lora(spec_from_config(config, name="mixtral-1-layer"), LoraConfig(r=8, targets=("all-linear",)))
    shapes = {a.name: ((a.rank, a.in_features), (a.out_features, a.rank)) for a in plan.adapters}
    assert shapes["model.layers.0.mlp.gate.weight"] == ((8, 4096), (8, 8))
    assert shapes["model.layers.0.mlp.experts.gate_up_proj"] == ((128, 4096), (28672, 128))    # 2r x 8 experts
    assert shapes["model.layers.0.mlp.experts.down_proj"] == ((64, 14336), (4096, 64))
    assert plan.trainable == 5_619_776
    assert plan.target_parameters_used == ("down_proj", "gate.weight", "gate_up_proj")


# ------------------------------------------------------------------------------- dense-model edge cases
LLAMA_CASES: list[tuple[str, dict[str, Any]]] = [
    ("defaults plus target_parameters", dict(target_parameters=("mlp.down_proj.weight",))),
    ("module and its parameter raises", dict(targets=("down_proj",), target_parameters=("mlp.down_proj.weight",))),
    ("1-D parameter raises", dict(targets=("q_proj",), target_parameters=("input_layernorm.weight",))),
    ("partial-suffix save", dict(targets=("q_proj",), modules_to_save=("_tokens",))),
    ("save an adapted embedding raises", dict(targets=("embed_tokens",), modules_to_save=("_tokens",))),
    ("everything excluded raises", dict(targets=("q_proj",), modules_to_save=("layers",))),
    ("regex on a container raises", dict(target_regex=r".*layers\.0\.(self_attn|mlp).*")),
    ("ALL-LINEAR any case", dict(targets=("ALL-LINEAR",))),
    ("full name bypasses layers_to_transform",
     dict(targets=("model.layers.0.self_attn.q_proj", "v_proj"), layers_to_transform=(1,))),
    ("dora on a wrapped parameter raises", dict(targets=("q_proj",), target_parameters=("o_proj.weight",),
                                                dora=True)),
    ("embedding target with dora", dict(targets=("embed_tokens", "q_proj"), dora=True)),
    ("layers_pattern", dict(targets=("q_proj",), layers_to_transform=(1,), layers_pattern="layers")),
    ("partial suffix saves an adapted parent", dict(targets=("all-linear",), modules_to_save=("lp",))),
    ("target_parameters on the tied head", dict(targets=("q_proj",), target_parameters=("lm_head.weight",))),
]


@pytest.mark.parametrize(("label", "kw"), LLAMA_CASES, ids=[c[0] for c in LLAMA_CASES])
def test_llama_edge_cases_match_peft(label: str, kw: dict[str, Any]) -> None:
    config = _shrunk(model_profiles()["llama-3.2-1b"].config, 2)
    _assert_same(config, spec_from_config(config, name="llama-2-layers"), label, **kw)


@pytest.mark.parametrize("kw", [dict(targets=("all-linear",), layers_to_transform=(0,)),
                                dict(target_regex=r".*q_proj", layers_to_transform=(0,)),
                                dict(target_regex=r".*q_proj", layers_pattern="layers", layers_to_transform=(0,)),
                                dict(targets=("q_proj",), layers_pattern="layers")])
def test_config_rules_raise_like_peft(kw: dict[str, Any]) -> None:
    with pytest.raises(TargetError):
        LoraConfig(**kw)
    with pytest.raises(ValueError):
        _to_peft(**kw)


# ------------------------------------------------------------------------------------------- goldens
def test_golden_opt125m_peft_docs() -> None:
    kw: dict[str, Any] = dict(r=8, targets=("q_proj", "v_proj"))
    plan = plan_lora(resolve_model("opt-125m").spec, LoraConfig(**kw))
    assert plan.trainable == 294_912      # PEFT README: "trainable params: 294,912"
    assert _peft_outcome(model_profiles()["opt-125m"].config, **kw) == (plan.trainable, plan.total)


@pytest.mark.parametrize(("name", "r", "trainable"), [
    ("llama-3-8b", 16, 41_943_040),       # FINDINGS.md, meta-device PEFT
    ("qwen2.5-14b", 16, 68_812_800),      # FINDINGS.md, meta-device PEFT
    ("qwen3-14b", 8, 32_112_640),
])
def test_golden_all_linear(name: str, r: int, trainable: int) -> None:
    spec = resolve_model(name).spec
    plan = plan_lora(spec, LoraConfig(r=r, targets=("all-linear",)))
    assert plan.trainable == trainable
    assert plan.total == spec.params_total + trainable


def test_golden_bloom_389m_regex_and_saved_embedding() -> None:
    # layers 1 and 10-19 (the regex is not anchored after ".1"), plus a copy of the 46M-row embedding
    kw: dict[str, Any] = dict(r=8, target_regex=r".*\.1.*query_key_value", modules_to_save=("word_embeddings",))
    plan = plan_lora(resolve_model("bloom-389m-zh").spec, LoraConfig(**kw))
    assert (plan.trainable, plan.total) == (43_815_936, 389_584_896)
    assert _peft_outcome(model_profiles()["bloom-389m-zh"].config, **kw) == (plan.trainable, plan.total)


def test_golden_mixtral_one_layer_all_linear() -> None:
    config = _shrunk(model_profiles()["mixtral-8x7b"].config, 1)
    spec = spec_from_config(config, name="mixtral-1-layer")
    plan = plan_lora(spec, LoraConfig(r=8, targets=("all-linear",)))
    # attention 212,992 + router 32,832 + gate_up (2r) 4,194,304 + down 1,179,648
    assert plan.trainable == 5_619_776
    assert _peft_outcome(config, r=8, targets=("all-linear",)) == (plan.trainable, plan.total)


# ------------------------------------------------------------------------------------------ peft_line
@pytest.mark.parametrize(("name", "kw"), [("opt-125m", dict(targets=("q_proj", "v_proj"))),
                                          ("gpt2", dict(targets=("c_attn",), modules_to_save=("wte",)))])
def test_peft_line_is_print_trainable_parameters(name: str, kw: dict[str, Any]) -> None:
    from vramplan.shapes.from_meta import meta_model

    plan = plan_lora(resolve_model(name).spec, LoraConfig(**kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(meta_model(model_profiles()[name].config), _to_peft(**kw))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pm.print_trainable_parameters()
    assert peft_line(plan.trainable, plan.total) == out.getvalue().rstrip("\n")


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_target_names_existing_modules() -> None:
    with pytest.raises(TargetError) as info:
        plan_lora(resolve_model("llama-3.2-1b").spec, LoraConfig(targets=("q_prj",)))
    msg = str(info.value)
    assert "'q_prj'" in msg and "did you mean: q_proj" in msg
    assert "modules with weights are: embed_tokens, q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in msg


def test_bad_regex() -> None:
    with pytest.raises(TargetError, match=r"--target-regex '\(q_proj' does not compile"):
        LoraConfig(target_regex="(q_proj")


@pytest.mark.parametrize("r", [0, -1, True, 2.5])
def test_bad_rank(r: Any) -> None:
    with pytest.raises(TargetError, match="--rank must be an integer >= 1"):
        LoraConfig(r=r)


def test_moe_messages_say_what_to_do() -> None:
    spec = spec_from_config(_shrunk(model_profiles()["mixtral-8x7b"].config, 1), name="mixtral")
    with pytest.raises(TargetError, match="w1 and w3 into the experts' gate_up_proj.*target both"):
        plan_lora(spec, LoraConfig(targets=("w1",)))
    with pytest.raises(TargetError, match="DoRA cannot adapt parameter 'model.layers.0.mlp.gate.weight'"):
        plan_lora(spec, LoraConfig(targets=("all-linear",), dora=True))
    with pytest.raises(TargetError, match="PEFT adapts nothing"):
        plan_lora(spec, LoraConfig())
    with pytest.raises(TargetError, match="'model.layers.0.mlp.experts' is a fused-experts module"):
        plan_lora(spec, LoraConfig(targets=("experts",)))


# ------------------------------------------------------------------------------------ tables and purity
def test_tables_match_installed_peft() -> None:
    """Every entry both the mirror and the installed peft/transformers know agrees; upstream may add entries."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    from vramplan.tables import compare, mirrored_tables, upstream_tables

    diff = compare(mirrored_tables(), upstream_tables())
    assert {t: d["disagree"] for t, d in diff.items()} == {t: [] for t in diff}
    # the mirror invents nothing: each of its entries exists upstream (peft adds mixtral to the conversion base)
    assert {t: d["mirror_only"] for t, d in diff.items()} == {t: [] for t in diff}
    for mt in ("mixtral", "qwen3_moe", "olmoe", "deepseek_v3"):
        assert get_checkpoint_conversion_mapping(mt) is not None, mt


def test_compare_reports_new_and_changed_entries() -> None:
    from vramplan.tables import compare

    ours = {"t": {"a": ["x"], "b": ["y"], "gone": ["z"]}}
    theirs = {"t": {"a": ["x"], "b": ["y", "w"], "new": ["v"]}}
    assert compare(ours, theirs) == {"t": {"disagree": ["b"], "upstream_only": ["new"], "mirror_only": ["gone"]}}


def test_missing_model_type_uses_installed_peft_table(monkeypatch) -> None:
    """A model type the mirror lacks takes the installed PEFT's default targets, and the estimate says so."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    import vramplan.lora as lora_mod
    from vramplan.estimate import estimate
    from vramplan.profiles import resolve_model
    from vramplan.setup import Setup

    monkeypatch.delitem(lora_mod.DEFAULT_TARGETS, "qwen2")
    spec = resolve_model("qwen2.5-0.5b").spec
    plan = plan_lora(spec, LoraConfig())
    assert set(plan.targets_used) == set(peft_defaults["qwen2"]) == {"q_proj", "v_proj"}
    assert plan.default_source is not None and "installed peft" in plan.default_source
    # q_proj 896x896 and v_proj 896x128 in 24 layers, r=8 (PEFT's count for Qwen2.5-0.5B q/v r=8: 540,672)
    assert plan.trainable == 24 * 8 * ((896 + 896) + (896 + 128)) == 540_672
    est = estimate(spec, Setup.create(method="lora", lora=LoraConfig(r=9)))
    assert any("installed peft" in a and "'qwen2'" in a for a in est.assumptions)


def test_missing_model_type_without_peft_asks_for_targets(monkeypatch) -> None:
    import importlib.util

    import vramplan.lora as lora_mod
    from vramplan.profiles import resolve_model

    monkeypatch.delitem(lora_mod.DEFAULT_TARGETS, "qwen2")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(TargetError, match=r"model_type 'qwen2': pass --targets"):
        plan_lora(resolve_model("qwen2.5-0.5b").spec, LoraConfig())


def test_plan_is_pure_python() -> None:
    code = ("import sys, vramplan.lora as l; from vramplan.profiles import resolve_model; "
            "l.plan_lora(resolve_model('mixtral-8x7b').spec, l.LoraConfig(targets=('all-linear',))); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plan_fields_for_estimators() -> None:
    """``adapter_params`` counts frozen originals inside a saved module; ``trainable`` counts their copies."""
    config = _shrunk(model_profiles()["mixtral-8x7b"].config, 1)
    spec = spec_from_config(config, name="mixtral-1-layer")
    plan: LoraPlan = plan_lora(spec, LoraConfig(targets=("all-linear",), modules_to_save=("mlp",)))
    frozen = [a for a in plan.adapters if a.frozen]
    assert {a.name for a in frozen} == {"model.layers.0.mlp.gate.weight", "model.layers.0.mlp.experts.gate_up_proj",
                                        "model.layers.0.mlp.experts.down_proj"}
    (saved,) = plan.saved
    assert saved.adapter_params == sum(a.params for a in frozen)
    assert plan.total == spec.params_total + plan.adapter_params + plan.saved_params
