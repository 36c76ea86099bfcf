"""The PEFT ``LoraConfig`` fields beyond the original eight (issue 15): ``rank_pattern``, ``alpha_pattern``,
``exclude_modules``, ``bias``, ``lora_bias``, ``trainable_token_indices``, ``layers_pattern`` lists and
``target_parameters``, each against PEFT itself.

Every case builds the transformers model on the meta device, applies the real ``peft.get_peft_model`` (peft
0.21.2, transformers 5.23) and requires ``get_nb_trainable_parameters()`` to equal ``(plan.trainable,
plan.total)`` exactly -- or, where PEFT raises, ``plan_lora`` to raise a one-line :class:`TargetError`. The
families: Qwen2.5 (dense, q/k/v biases, tied embeddings), Llama 3.2 with untied embeddings, GPT-2 (Conv1D and
LayerNorm biases), Gemma 2 (tied, scaled embeddings), Phi-2 (a biased output head) and Mixtral (transformers-5
fused experts, converted by PEFT).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import pytest

from vramplan.errors import TargetError
from vramplan.lora import LoraConfig, plan_lora
from vramplan.profiles import model_profiles
from vramplan.shapes.from_config import spec_from_config
from vramplan.shapes.spec import ModelSpec

peft = pytest.importorskip("peft")

Outcome = tuple[int, int] | str


def _shrunk(name: str, layers: int, **changes: Any) -> dict[str, Any]:
    c = dict(model_profiles()[name].config)
    key = next(k for k in ("num_hidden_layers", "n_layer", "num_layers") if k in c)
    c[key] = layers
    if isinstance(c.get("layer_types"), list):
        c["layer_types"] = c["layer_types"][:layers]
    c.update(changes)
    return c


def _peft_config(**kw: Any):
    """``peft.LoraConfig`` from :class:`LoraConfig` keyword arguments, as a user writes it."""
    targets = kw.get("targets")
    if kw.get("target_regex") is not None:
        tm: Any = kw["target_regex"]
    elif targets is not None and len(targets) == 1 and targets[0].lower() == "all-linear":
        tm = targets[0]
    else:
        tm = list(targets) if targets is not None else None
    ex: Any = kw.get("exclude_regex") if kw.get("exclude_regex") is not None else \
        (list(kw["exclude_modules"]) if kw.get("exclude_modules") else None)
    tokens = kw.get("trainable_tokens")
    ltt = kw.get("layers_to_transform")
    return peft.LoraConfig(
        r=kw.get("r", 8), lora_alpha=kw.get("alpha", 8), target_modules=tm, exclude_modules=ex,
        target_parameters=list(kw.get("target_parameters", ())) or None,
        modules_to_save=list(kw.get("modules_to_save", ())) or None,
        layers_to_transform=list(ltt) if ltt is not None else None, layers_pattern=kw.get("layers_pattern"),
        rank_pattern=dict(kw.get("rank_pattern", {})), alpha_pattern=dict(kw.get("alpha_pattern", {})),
        bias=kw.get("bias", "none"), lora_bias=kw.get("lora_bias", False), use_dora=kw.get("dora", False),
        trainable_token_indices=tokens, task_type="CAUSAL_LM")


def _first_line(exc: BaseException) -> str:
    return f"raises: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"


def _peft_outcome(config: Mapping[str, Any], **kw: Any) -> Outcome:
    from vramplan.shapes.from_meta import meta_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = peft.get_peft_model(meta_model(config), _peft_config(**kw), low_cpu_mem_usage=True)
    except Exception as exc:  # noqa: BLE001 - any PEFT refusal counts
        return _first_line(exc)
    return pm.get_nb_trainable_parameters()


def _plan_outcome(spec: ModelSpec, **kw: Any) -> Outcome:
    try:
        plan = plan_lora(spec, LoraConfig(**kw))
    except TargetError as exc:
        assert "\n" not in str(exc), f"TargetError must be one line: {exc}"
        return _first_line(exc)
    return plan.trainable, plan.total


def _assert_same(config: Mapping[str, Any], label: str, **kw: Any) -> Outcome:
    spec = spec_from_config(config, name=label)
    ours, theirs = _plan_outcome(spec, **kw), _peft_outcome(config, **kw)
    if isinstance(theirs, str) or isinstance(ours, str):
        assert isinstance(theirs, str) and isinstance(ours, str), f"{label} {kw}: PEFT -> {theirs}; ours -> {ours}"
    else:
        assert ours == theirs, f"{label} {kw}: plan_lora (trainable, all) {ours} != PEFT {theirs}"
    return ours


QWEN = _shrunk("qwen2.5-0.5b", 2)
LLAMA_UNTIED = _shrunk("llama-3.2-1b", 2, tie_word_embeddings=False)
GPT2 = _shrunk("gpt2", 2)
GEMMA = _shrunk("gemma-2-2b", 2)
PHI = _shrunk("phi-2", 2)
MIXTRAL = _shrunk("mixtral-8x7b", 2)

CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # rank_pattern: PEFT's get_pattern_key, r"(.*\.)?(KEY)$", the first key that matches wins
    ("qwen rank_pattern suffix", QWEN, dict(rank_pattern={"q_proj": 64})),
    ("qwen rank_pattern regex + order", QWEN, dict(targets=("all-linear",),
                                                   rank_pattern={r"layers\.1\..*": 4, "mlp.down_proj": 32})),
    ("qwen rank_pattern full name", QWEN, dict(targets=("q_proj", "v_proj"),
                                               rank_pattern={"model.layers.0.self_attn.v_proj": 2})),
    ("qwen rank_pattern partial leaf does not match", QWEN, dict(rank_pattern={"proj": 64})),
    ("qwen alpha_pattern (no memory effect)", QWEN, dict(alpha_pattern={"q_proj": 128}, rank_pattern={"v_proj": 3})),
    ("gemma rank_pattern", GEMMA, dict(targets=("all-linear",), rank_pattern={"o_proj": 16, "gate_proj": 2})),
    ("mixtral rank_pattern on the fused pair wins over PEFT's 2r", MIXTRAL,
     dict(targets=("q_proj", "w1", "w3"), rank_pattern={"gate_up_proj": 4})),
    ("mixtral v4 name in rank_pattern does not reach the parameter", MIXTRAL,
     dict(targets=("q_proj", "w1", "w3"), rank_pattern={"w1": 4})),
    ("mixtral rank_pattern on the router parameter", MIXTRAL,
     dict(targets=("all-linear",), rank_pattern={r"gate\.weight": 2, "q_proj": 16})),
    # exclude_modules: names / suffixes, or a full-match regex; modules only (never target_parameters)
    ("qwen exclude regex", QWEN, dict(targets=("all-linear",), exclude_regex=r".*mlp.*")),
    ("qwen exclude names", QWEN, dict(targets=("all-linear",), exclude_modules=("gate_proj", "up_proj"))),
    ("qwen exclude a full name", QWEN, dict(targets=("q_proj",), exclude_modules=("model.layers.0.self_attn.q_proj",))),
    ("qwen exclude everything raises", QWEN, dict(targets=("q_proj",), exclude_modules=("q_proj",))),
    ("qwen exclude regex everything raises", QWEN, dict(targets=("q_proj",), exclude_regex=r".*")),
    ("gpt2 exclude c_proj", GPT2, dict(targets=("all-linear",), exclude_modules=("c_proj",))),
    ("mixtral exclude experts leaves the parameters", MIXTRAL,
     dict(targets=("q_proj", "w1", "w3"), exclude_modules=("experts",))),
    ("mixtral exclude in a regex target", MIXTRAL, dict(target_regex=r".*\.(q_proj|v_proj|w2)",
                                                        exclude_regex=r".*layers\.0\..*")),
    # bias: "all" = every *.bias parameter; "lora_only" = the biases of the LoRA layers; saved originals frozen
    ("qwen bias all", QWEN, dict(targets=("q_proj",), bias="all")),
    ("qwen bias lora_only", QWEN, dict(targets=("q_proj",), bias="lora_only")),
    ("qwen bias lora_only on a ParamWrapper", QWEN, dict(targets=("q_proj",), bias="lora_only",
                                                         target_parameters=("v_proj.weight",))),
    ("qwen bias all with a saved module", QWEN, dict(targets=("q_proj",), bias="all", modules_to_save=("k_proj",))),
    ("gpt2 bias all (LayerNorm biases too)", GPT2, dict(targets=("c_attn",), bias="all")),
    ("gpt2 bias lora_only", GPT2, dict(targets=("c_attn", "c_fc"), bias="lora_only")),
    ("phi bias all (the head's bias)", PHI, dict(targets=("q_proj",), bias="all")),
    ("mixtral bias all (no biases)", MIXTRAL, dict(targets=("q_proj", "gate"), bias="all")),
    ("llama bias lora_only (no biases)", LLAMA_UNTIED, dict(targets=("q_proj",), bias="lora_only")),
    # lora_bias: lora_B gets a bias of out_features; Embedding and ParamWrapper refuse it
    ("qwen lora_bias", QWEN, dict(targets=("q_proj", "o_proj"), lora_bias=True)),
    ("gpt2 lora_bias + bias lora_only", GPT2, dict(targets=("c_attn",), lora_bias=True, bias="lora_only")),
    ("gemma lora_bias all-linear", GEMMA, dict(targets=("all-linear",), lora_bias=True)),
    ("qwen lora_bias on the embedding raises", QWEN, dict(targets=("embed_tokens",), lora_bias=True)),
    ("mixtral lora_bias on experts raises", MIXTRAL, dict(targets=("q_proj", "w2"), lora_bias=True)),
    ("mixtral lora_bias on attention", MIXTRAL, dict(targets=("q_proj", "v_proj"), lora_bias=True)),
    # trainable_token_indices: a delta of len(indices) x dim; tied heads share it
    ("qwen tokens list (tied head shares)", QWEN, dict(targets=("q_proj",), trainable_tokens=[0, 1, 2, 2])),
    ("qwen tokens both, same indices", QWEN, dict(targets=("q_proj",),
                                                 trainable_tokens={"embed_tokens": [0, 1], "lm_head": [0, 1]})),
    ("qwen tokens both, other indices", QWEN, dict(targets=("q_proj",),
                                                  trainable_tokens={"embed_tokens": [1, 2], "lm_head": [3]})),
    ("qwen tokens head only", QWEN, dict(targets=("q_proj",), trainable_tokens={"lm_head": [0, 1]})),
    ("qwen tokens unknown module raises", QWEN, dict(targets=("q_proj",), trainable_tokens={"embed": [1]})),
    ("qwen tokens on a LoRA embedding raises", QWEN, dict(targets=("q_proj", "embed_tokens"), trainable_tokens=[3])),
    ("qwen tokens and saved embedding raises", QWEN, dict(targets=("q_proj",), modules_to_save=("embed_tokens",),
                                                         trainable_tokens={"embed_tokens": [1]})),
    ("qwen tokens + bias all", QWEN, dict(targets=("q_proj",), bias="all", trainable_tokens=[3])),
    ("llama untied tokens list", LLAMA_UNTIED, dict(targets=("q_proj",), trainable_tokens=[1, 2])),
    ("llama untied tokens both", LLAMA_UNTIED, dict(targets=("q_proj",),
                                                   trainable_tokens={"embed_tokens": [1, 2], "lm_head": [1, 2]})),
    ("gemma tokens list", GEMMA, dict(targets=("q_proj",), trainable_tokens=list(range(10)))),
    ("gpt2 tokens on wte", GPT2, dict(targets=("c_attn",), trainable_tokens={"wte": [5, 6]})),
    ("mixtral tokens", MIXTRAL, dict(targets=("q_proj",), trainable_tokens=[7])),
    # layers_pattern as a list (PEFT accepts one or several names)
    ("qwen layers_pattern list", QWEN, dict(targets=("q_proj",), layers_to_transform=(1,),
                                            layers_pattern=["h", "layers"])),
    ("qwen layers_pattern no match adapts nothing", QWEN, dict(targets=("q_proj",), layers_to_transform=(1,),
                                                               layers_pattern=["blocks"])),
]


@pytest.mark.parametrize(("label", "config", "kw"), CASES, ids=[c[0] for c in CASES])
def test_field_matches_peft(label: str, config: dict[str, Any], kw: dict[str, Any]) -> None:
    _assert_same(config, label, **kw)


# ------------------------------------------------------------------------------ pinned full-depth counts
def test_issue_15_counts_full_depth() -> None:
    """The issue's numbers on the full 24-layer Qwen2.5-0.5B, which PEFT 0.21.2 printed (issue 15):
    rank_pattern {"q_proj": 64} -> 2,949,120 (= 24 x (64 x (896 + 896) + 8 x (896 + 128))); all-linear minus
    the MLP -> 1,081,344 (= 24 x 8 x (1792 + 1024 + 1024 + 1792))."""
    from vramplan.profiles import resolve_model

    spec = resolve_model("qwen2.5-0.5b").spec
    assert plan_lora(spec, LoraConfig(rank_pattern={"q_proj": 64})).trainable == 2_949_120
    assert plan_lora(spec, LoraConfig(targets=("all-linear",), exclude_regex=r".*mlp.*")).trainable == 1_081_344
    assert plan_lora(spec, LoraConfig(targets=("all-linear",),
                                      exclude_modules=("gate_proj", "up_proj", "down_proj"))).trainable == 1_081_344


def test_token_and_bias_details() -> None:
    """What the estimator reads: the biases' names, the deltas' shapes, the tied head adding no parameter."""
    spec = spec_from_config(QWEN, name="qwen-2")
    plan = plan_lora(spec, LoraConfig(targets=("q_proj",), bias="lora_only", trainable_tokens=[0, 1, 2]))
    assert plan.trainable_biases == ("model.layers.0.self_attn.q_proj.bias", "model.layers.1.self_attn.q_proj.bias")
    assert plan.bias_params == 2 * 896
    emb, head = plan.token_adapters
    assert (emb.module, emb.rows, emb.dim, emb.params) == ("model.embed_tokens", 3, 896, 3 * 896)
    assert (head.module, head.tied, head.params) == ("lm_head", True, 0)
    assert emb.weight_numel == 151_936 * 896
    assert [n.split(":")[0] for n in plan.warnings] == ["trainable_token_indices on model.embed_tokens",
                                                        "trainable_token_indices on lm_head"]
    assert "saved for backward" in plan.warnings[1] and "transient" in plan.warnings[0]


def test_options_without_effect_are_named() -> None:
    spec = spec_from_config(QWEN, name="qwen-2")
    plan = plan_lora(spec, LoraConfig(targets=("q_proj", "v_proj"), rank_pattern={"proj": 4, "q_proj": 16,
                                                                                  r".*\.q_proj": 2},
                                      exclude_modules=("nothing_like_this",)))
    assert plan.unused == ("--rank-pattern proj=4 matches no adapted module (an earlier key may take them): no effect",
                           r"--rank-pattern .*\.q_proj=2 matches no adapted module (an earlier key may take them): "
                           "no effect", "--exclude-modules excludes no module of the model: no effect (PEFT warns the "
                           "same)")
    assert plan_lora(spec, LoraConfig(rank_pattern={"q_proj": 16})).unused == ()


@pytest.mark.parametrize(("kw", "match"), [
    (dict(rank_pattern={"q_proj": 0}), "--rank-pattern q_proj=0"),
    (dict(rank_pattern={"q_proj": 2.5}), "--rank-pattern"),
    (dict(rank_pattern={"(": 4}), "does not compile"),
    (dict(rank_pattern="q_proj"), "NAME=NUMBER"),
    (dict(alpha_pattern={"q_proj": "x"}), "--alpha-pattern"),
    (dict(exclude_regex="("), "--exclude-regex"),
    (dict(exclude_regex="a", exclude_modules=("b",)), "cannot be combined"),
    (dict(bias="some"), "--bias must be one of"),
    (dict(lora_bias=True, dora=True), "--lora-bias cannot be combined with --dora"),
    (dict(trainable_tokens="1-x"), "--trainable-tokens"),
    (dict(trainable_tokens="0-99999999999"), "--trainable-tokens"),
    (dict(trainable_tokens={"embed_tokens": [-1]}), "--trainable-tokens"),
    (dict(targets="q_proj"), "must be a list of names"),
])
def test_bad_values_are_one_line_errors(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(TargetError, match=match) as info:
        LoraConfig(**kw)
    assert "\n" not in str(info.value)


def test_token_index_beyond_vocabulary() -> None:
    spec = spec_from_config(QWEN, name="qwen-2")
    with pytest.raises(TargetError, match="beyond 'model.embed_tokens'"):
        plan_lora(spec, LoraConfig(targets=("q_proj",), trainable_tokens=[151_936]))


# ------------------------------------------------------------------------------------------- round trip
def test_to_dict_round_trip_and_defaults_unchanged() -> None:
    plain = LoraConfig(r=16, targets=("q_proj",))
    assert set(plain.to_dict()) == {"r", "alpha", "targets", "target_regex", "modules_to_save",
                                    "layers_to_transform", "dora", "dropout"}, "new keys only when set"
    full = LoraConfig(r=16, targets=("q_proj", "v_proj"), layers_to_transform=(0,), layers_pattern="layers",
                      exclude_modules=("v_proj",), rank_pattern={"q_proj": 64, r"layers\.{0,3}": 2},
                      alpha_pattern={"q_proj": 32.5}, bias="lora_only", lora_bias=True,
                      trainable_tokens={"embed_tokens": [1, 2], "lm_head": [3]},
                      target_parameters=("mlp.down_proj.weight",))
    d = full.to_dict()
    assert d["rank_pattern"] == {"q_proj": 64, r"layers\.{0,3}": 2}
    assert d["trainable_tokens"] == {"embed_tokens": [1, 2], "lm_head": [3]}
    assert LoraConfig.from_dict(d) == full
    import json
    assert LoraConfig.from_dict(json.loads(json.dumps(d))) == full
    assert LoraConfig(trainable_tokens=[4, 5]).to_dict()["trainable_tokens"] == [4, 5]


@pytest.mark.parametrize("kw", [dict(targets=("q_proj", "v_proj"), lora_bias=True),
                                dict(targets=("q_proj", "v_proj"), bias="all"),
                                dict(targets=("q_proj", "v_proj"), bias="lora_only"),
                                dict(targets=("q_proj",), trainable_tokens=[0, 1, 2, 3]),
                                dict(targets=("q_proj",), trainable_tokens={"embed_tokens": [1, 2], "lm_head": [3]})],
                         ids=["lora_bias", "bias-all", "bias-lora_only", "tokens-tied", "tokens-both"])
def test_estimator_prices_what_peft_trains(kw: dict[str, Any]) -> None:
    """The estimator's trainable tensors (optimizer-stepped bytes, estimate/weights.py) are PEFT's trainable
    parameters in their dtypes: a bf16 base with PEFT's default fp32 adapters (autocast_adapter_dtype=True)."""
    import torch

    from vramplan.dtypes import BYTES
    from vramplan.estimate.structure import static_structure, structural_setup
    from vramplan.setup import Setup
    from vramplan.shapes.from_meta import meta_model

    model = meta_model(QWEN).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(model, _peft_config(**kw), low_cpu_mem_usage=True)
    theirs = sorted(p.numel() * p.element_size() for p in pm.parameters() if p.requires_grad)
    spec = spec_from_config(QWEN, name="qwen-2l")
    setup = Setup.create(method="lora", lora=LoraConfig(**kw), precision="bf16-mixed")
    st = static_structure(spec, structural_setup(setup))
    ours = sorted(t.numel * BYTES[t.dtype] for t in st.trainables)
    assert sum(ours) == sum(theirs) and len(ours) == len(theirs), (kw, sum(ours), sum(theirs))
