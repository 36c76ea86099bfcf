"""Encoder-decoder models (t5, flan-t5, mt5, bart) are counted as ``AutoModelForSeq2SeqLM`` builds them (issue 16),
with PEFT's LoRA counts, and their memory plans are refused in one line that says what is not modelled.

Expected values come from the real classes built on meta in each test and from real PEFT 0.21.2; tiny configs from
transformers' config classes (no Hub).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from vramplan.errors import ConfigError
from vramplan.lora import DEFAULT_TARGETS, LoraConfig, plan_lora
from vramplan.shapes.spec import ModelSpec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
logging.getLogger("transformers").setLevel(logging.ERROR)


def _configs() -> dict[str, tuple[str, Any]]:
    T = transformers
    t5 = {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 3, "num_heads": 4, "d_kv": 16,
          "vocab_size": 512}
    return {
        "t5": ("T5ForConditionalGeneration", T.T5Config(**t5)),
        # flan-t5 / t5 v1.1: gated-gelu (wi_0, wi_1), untied head
        "flan-t5": ("T5ForConditionalGeneration",
                    T.T5Config(**t5, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
        "mt5": ("MT5ForConditionalGeneration", T.MT5Config(**t5)),
        "bart": ("BartForConditionalGeneration", T.BartConfig(
            d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=96, encoder_layers=2, decoder_layers=1,
            encoder_attention_heads=4, decoder_attention_heads=2, vocab_size=512, max_position_embeddings=128)),
    }


CONFIGS = _configs()


def _as_dict(cfg: Any, cls: str) -> dict[str, Any]:
    d = json.loads(cfg.to_json_string())
    d["architectures"] = [cls]
    return d


def _real(cls: str, config: dict[str, Any]):
    kwargs = {k: v for k, v in config.items() if k != "model_type" and not k.startswith("_")}
    cfg = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    with torch.device("meta"):
        return getattr(transformers, cls)(cfg)


def _spec(family: str, monkeypatch) -> tuple[str, dict[str, Any], ModelSpec]:
    from vramplan.shapes.from_meta import spec_from_meta

    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    cls, cfg = CONFIGS[family]
    config = _as_dict(cfg, cls)
    return cls, config, spec_from_meta(config, family)


#: checkpoints that store their own ``lm_head.weight``: T5 v1.1 / flan-t5 were trained with an untied head (their
#: config.json says ``tie_word_embeddings: false``; the tiny config's JSON, as transformers 5.24 writes it, says
#: ``scale_decoder_outputs: false``)
STORED_HEAD = {"flan-t5"}


def _loaded(family: str, tmp_path):
    """The model as ``from_pretrained`` loads a tiny checkpoint of the family (saved on CPU, with a separate
    ``lm_head.weight`` where the family's checkpoints store one): transformers decides what is tied."""
    from safetensors.torch import load_file, save_file

    cls, cfg = CONFIGS[family]
    torch.manual_seed(0)
    getattr(transformers, cls)(cfg).save_pretrained(tmp_path)
    if family in STORED_HEAD:
        weights = load_file(tmp_path / "model.safetensors")
        weights["lm_head.weight"] = torch.randn_like(weights["shared.weight"])
        save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    return getattr(transformers, cls).from_pretrained(tmp_path)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_counted_as_the_seq2seq_class(family, monkeypatch, tmp_path):
    cls, config, spec = _spec(family, monkeypatch)
    model = _loaded(family, tmp_path)
    assert spec.architecture == cls
    assert spec.params_total == sum(p.numel() for p in model.parameters())
    head = next(t for t in spec.tensors if t.role == "lm_head")
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == \
        (family not in STORED_HEAD) == (head.tied_to is not None)


def _t5_count(vocab: int, d: int, d_ff: int, layers: int, heads: int, d_kv: int, gated: bool, tied: bool) -> int:
    """First principles (transformers 5.24.0 models/t5/modeling_t5.py): shared embedding (+ an untied lm_head);
    per encoder layer q, k, v, o (d × heads·d_kv each), the FFN (wi or wi_0 + wi_1, wo) and 2 T5LayerNorms; per
    decoder layer a second attention and a third norm; one relative_attention_bias (32 buckets × heads) and a
    final norm per stack."""
    attn, ffn = 4 * d * heads * d_kv, (3 if gated else 2) * d * d_ff
    stacks = layers * (attn + ffn + 2 * d) + layers * (2 * attn + ffn + 3 * d) + 2 * (32 * heads + d)
    return vocab * d * (1 if tied else 2) + stacks


#: config.json of google/flan-t5-base, google/mt5-small and t5-base (the fields that shape the model)
REAL = {
    "flan-t5-base": dict(d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_decoder_layers=12, num_heads=12,
                         vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "mt5-small": dict(d_model=512, d_ff=1024, d_kv=64, num_layers=8, num_decoder_layers=8, num_heads=6,
                      vocab_size=250112, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      model_type="mt5"),
    "t5-base": dict(d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12, vocab_size=32128),
}


@pytest.mark.parametrize(("name", "expected", "shape"), [
    # 247,577,856: the flan-t5-base count PEFT prints with r=8 q,v LoRA ("all params: 248,462,592" less 884,736)
    ("flan-t5-base", 247_577_856, (32128, 768, 2048, 12, 12, 64, True, False)),
    ("mt5-small", 300_176_768, (250112, 512, 1024, 8, 6, 64, True, False)),
    ("t5-base", 222_903_552, (32128, 768, 3072, 12, 12, 64, False, True)),
])
def test_published_checkpoints_count_their_own_head(name, expected, shape, monkeypatch):
    """T5Config / MT5Config force tie_word_embeddings = True in transformers 5.24, but a checkpoint whose config.json
    says false stores its own lm_head.weight and from_pretrained keeps it (the test above): counted untied."""
    from vramplan.shapes.from_meta import spec_from_meta

    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    config = {"model_type": "t5", "architectures": ["MT5ForConditionalGeneration" if "mt5" in name
                                                    else "T5ForConditionalGeneration"], **REAL[name]}
    spec = spec_from_meta(config, name)
    assert spec.params_total == _t5_count(*shape) == expected


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("targets", [None, ("all-linear",)])
def test_lora_counts_match_peft(family, targets, monkeypatch):
    """PEFT's defaults: t5/mt5 q,v; bart q_proj,v_proj (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)."""
    cls, config, spec = _spec(family, monkeypatch)
    lp = plan_lora(spec, LoraConfig(r=4, targets=targets))
    model = peft.get_peft_model(_real(cls, config), peft.LoraConfig(
        r=4, target_modules=None if targets is None else "all-linear"))
    assert lp.trainable == model.get_nb_trainable_parameters()[0]
    if targets is None:
        assert lp.targets_used == DEFAULT_TARGETS[spec.model_type]


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_training_is_planned_inference_refused(family, monkeypatch):
    """t5/mt5/bart training steps are planned (vramplan/estimate/seq2seq.py); inference stays one refusal line."""
    cls, _, spec = _spec(family, monkeypatch)
    assert spec.plan_refusal is not None
    spec.require_plannable(training=True)
    with pytest.raises(ConfigError) as exc:
        spec.require_plannable(training=False)
    msg = str(exc.value)
    assert "\n" not in msg and cls in msg and "encoder-decoder" in msg and "not inference" in msg


def test_decoder_only_specs_are_plannable():
    from vramplan.profiles import resolve_model

    spec = resolve_model("qwen2.5-0.5b").spec
    assert spec.plan_refusal is None
    spec.require_plannable()


def test_bart_is_not_built_as_its_decoder_only_causal_lm(monkeypatch):
    """transformers also maps bart to BartForCausalLM (the decoder alone): the encoder must be counted."""
    _, config, spec = _spec("bart", monkeypatch)
    causal = _real("BartForCausalLM", config)
    assert spec.params_total > sum(p.numel() for p in causal.parameters())
    assert any(t.name.startswith("model.encoder.") for t in spec.tensors)


def test_params_cli_counts_t5_with_its_default_targets(tmp_path, capsys, monkeypatch):
    from vramplan.cli.main import main

    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    cls, cfg = CONFIGS["t5"]
    config = _as_dict(cfg, cls)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    model = peft.get_peft_model(_real(cls, config), peft.LoraConfig(r=8))
    with pytest.raises(SystemExit) as exc:
        main(["params", str(path), "--rank", "8"])
    out, err = capsys.readouterr()
    assert exc.value.code in (0, None), err
    trainable, total = model.get_nb_trainable_parameters()
    assert f"trainable params: {trainable:,d} || all params: {total:,d}" in out


def test_the_refusal_survives_the_spec_cache(tmp_path, monkeypatch):
    """A cached T5 spec (the second call) still refuses a plan: plan_refusal is stored with the spec."""
    from vramplan.shapes.from_meta import spec_from_meta

    monkeypatch.setenv("VRAMPLAN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("VRAMPLAN_NO_CACHE", raising=False)
    cls, cfg = CONFIGS["t5"]
    config = _as_dict(cfg, cls)
    first, second = spec_from_meta(config, "t5"), spec_from_meta(config, "t5")
    assert list(tmp_path.rglob("*.json")), "the first call stores the spec"
    assert second == first and second.plan_refusal == first.plan_refusal is not None


@pytest.mark.parametrize("command", [["plan", "--method", "inference"]])
def test_inference_plan_on_t5_is_one_refusal_line(tmp_path, capsys, monkeypatch, command):
    """Every memory estimate starts with require_plannable (estimate/estimator.py, states.py): exit 2, one line."""
    from vramplan.cli.main import main

    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    cls, cfg = CONFIGS["t5"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_as_dict(cfg, cls)))
    with pytest.raises(SystemExit) as exc:
        main([command[0], str(path), *command[1:]])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert err.count("\n") == 1 and "not inference" in err


def test_plan_on_t5_runs(tmp_path, capsys, monkeypatch):
    from vramplan.cli.main import main

    monkeypatch.setenv("VRAMPLAN_NO_CACHE", "1")
    cls, cfg = CONFIGS["t5"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_as_dict(cfg, cls)))
    with pytest.raises(SystemExit) as exc:
        main(["plan", str(path), "--seq", "64", "--target-seq", "16", "--json"])
    out, err = capsys.readouterr()
    assert exc.value.code in (0, None), err
    assert "activations/cross_attention" in json.loads(out)["breakdown_bytes"]
