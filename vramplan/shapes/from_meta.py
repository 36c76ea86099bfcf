"""ModelSpec for any architecture transformers knows: instantiate it on the ``meta`` device and walk it.

torch and transformers are imported inside the functions, never at module import, so the analytic path
stays torch-free. Building on ``meta`` allocates no storage (Llama-3-8B: 0.06–0.08 s, FINDINGS.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from . import cache
from .config import Dims, read_dims
from .from_config import assemble, language_config, model_type_of
from .roles import classify, component_of, layer_index
from .spec import ModelSpec, Tensor

#: The shape keys read from transformers' resolved config object (``attribute_map`` aliases such as T5's
#: ``d_model`` -> ``hidden_size``, and the config class's defaults) where the config dict does not spell them.
RESOLVED_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "vocab_size", "max_position_embeddings")
#: Spellings of attention shape keys that mean something else in an attention-free config (``Mamba2Config``:
#: ``num_heads`` / ``head_dim`` are SSM heads).
_ATTENTION_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "num_key_value_heads", "num_kv_heads",
                   "n_head_kv", "multi_query_group_num", "head_dim")

#: Model kinds, with the auto class that builds each (transformers ``models/auto/modeling_auto.py``).
KIND_CLASSES = {"causal": "AutoModelForCausalLM", "multimodal": "AutoModelForImageTextToText",
                "seq2seq": "AutoModelForSeq2SeqLM"}


def hf_config(config: Mapping[str, Any] | str, *, trust_remote_code: bool = False, source: str = "config.json"):
    """A transformers ``PretrainedConfig`` from a config dict or a local model folder."""
    import transformers

    if isinstance(config, str):
        if not trust_remote_code:
            raise ConfigError(f"{source}: this model folder ships its own modeling code (auto_map); "
                              "pass --trust-remote-code to run it")
        try:
            return transformers.AutoConfig.from_pretrained(config, trust_remote_code=True)
        except (OSError, ValueError, ImportError, AttributeError) as exc:
            raise ConfigError(f"{source}: cannot load the folder's own config code: "
                              f"{str(exc).splitlines()[0]}") from None
    # Drop bookkeeping keys (``_name_or_path``, ``_commit_hash``, ...) but keep the one underscored key that
    # shapes a model: OPT's ``_remove_final_layer_norm`` (``OPTDecoder.__init__``).
    kwargs = {k: v for k, v in config.items()
              if k != "model_type" and (not k.startswith("_") or k == "_remove_final_layer_norm")}
    mt = model_type_of(config)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if mt not in CONFIG_MAPPING:
        raise ConfigError(f"{source}: transformers {transformers.__version__} does not know model_type {mt!r} "
                          "(pass a model folder with its modeling code and --trust-remote-code)")
    logging.getLogger("transformers").setLevel(logging.ERROR)   # token ids outside tiny vocabularies, etc.
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return transformers.AutoConfig.for_model(mt, **kwargs)
    except Exception as exc:    # the config class's own validation (huggingface_hub StrictDataclassError, ValueError)
        reason = str(getattr(exc, "__cause__", None) or exc).strip().splitlines() or [type(exc).__name__]
        raise ConfigError(f"{source}: transformers {transformers.__version__} refuses this {mt} config: "
                          f"{reason[-1].strip()}") from exc


def model_kind(cfg: Any) -> str:
    """``seq2seq`` (an encoder-decoder config transformers maps to a seq2seq LM: t5, mt5, bart, ...),
    ``multimodal`` (a model type with an image-text-to-text class: gemma3, llava, qwen2_vl, mllama, llama4, ...;
    these win over the text-only causal class some of them also map to, such as ``MllamaForCausalLM``), else
    ``causal``."""
    from transformers.models.auto import modeling_auto as auto

    mt = getattr(cfg, "model_type", "")
    if getattr(cfg, "is_encoder_decoder", False) and mt in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "seq2seq"
    if mt in auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return "multimodal"
    return "causal"


def _own_class(cfg: Any, architectures: Any) -> Any:
    """The class the checkpoint names first in ``architectures``, when transformers has it for this config class."""
    import transformers

    if not isinstance(architectures, list) or not architectures or not isinstance(architectures[0], str):
        return None
    cls = getattr(transformers, architectures[0], None)
    return cls if isinstance(cls, type) and getattr(cls, "config_class", None) is type(cfg) else None


def meta_model(config: Mapping[str, Any] | str, *, trust_remote_code: bool = False, source: str = "config.json"):
    """Instantiate the model class for ``config`` on the meta device (no storage).

    Causal LMs through ``AutoModelForCausalLM``; multimodal and encoder-decoder checkpoints as their own class
    (the first ``architectures`` entry when transformers has it for this config class, else
    ``AutoModelForImageTextToText`` / ``AutoModelForSeq2SeqLM``), so that a vision tower or an encoder is counted.
    """
    import torch
    import transformers

    cfg = hf_config(config, trust_remote_code=trust_remote_code, source=source)
    kind = "causal" if isinstance(config, str) else model_kind(cfg)
    auto = getattr(transformers, KIND_CLASSES[kind])
    own = _own_class(cfg, config.get("architectures")) if kind != "causal" and not isinstance(config, str) else None
    # transformers warns about token ids outside tiny test vocabularies; that is not our user's concern.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with torch.device("meta"), contextlib.redirect_stderr(io.StringIO()):
        try:
            model = own._from_config(cfg) if own is not None else \
                auto.from_config(cfg, trust_remote_code=trust_remote_code)
            if kind == "seq2seq":
                untie_stored_head(model, config)
            return model
        except (ValueError, OSError, ImportError, AttributeError, TypeError, AssertionError) as exc:
            what = {"causal": "a causal LM", "multimodal": "an image-text-to-text model",
                    "seq2seq": "a seq2seq LM"}[kind]
            raise ConfigError(f"{source}: transformers cannot build {what} ({KIND_CLASSES[kind]}) for model_type "
                              f"{getattr(cfg, 'model_type', '?')!r}: {str(exc).splitlines()[0]}") from exc


def untie_stored_head(model: Any, config: Mapping[str, Any]) -> bool:
    """Give ``lm_head`` its own (meta) weight where the checkpoint stores one that the built class ties anyway.

    transformers 5.24.0 ``T5Config.__post_init__`` (also ``MT5Config``, ``UMT5Config``) forces
    ``tie_word_embeddings = True`` ("we tie weights always"), so ``from_config`` ties ``lm_head`` to ``shared``.
    T5 v1.1, flan-t5, mT5 and umT5 checkpoints were trained untied: their config.json says
    ``tie_word_embeddings: false`` (re-saved by transformers 5: ``scale_decoder_outputs: false``) and their weights
    hold a separate ``lm_head.weight``, which ``from_pretrained`` leaves untied (``modeling_utils.py
    PreTrainedModel.tie_weights``: "both are present in the checkpoints with different values, so we will NOT tie
    them"; measured on a tiny saved T5). google/flan-t5-base: 247,577,856 parameters, not the tied build's
    222,903,552. Returns whether the head was untied."""
    import torch

    if not (config.get("tie_word_embeddings") is False or config.get("scale_decoder_outputs") is False):
        return False
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or emb is None or head.weight is not emb.weight:
        return False
    head.weight = torch.nn.Parameter(torch.empty_like(emb.weight, device="meta"))
    return True


def module_type_of(module: Any) -> str:
    """linear / conv1d / embedding / norm / experts / other, from the module's class."""
    import torch.nn as nn

    if isinstance(module, nn.Linear):          # bitsandbytes Linear4bit/Linear8bitLt subclass nn.Linear
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    cls = type(module).__name__
    if cls == "Conv1D":
        return "conv1d"
    if isinstance(module, nn.LayerNorm) or "Norm" in cls:
        return "norm"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "other"      # Mamba's depthwise nn.Conv1d, a vision tower's patch nn.Conv2d: 3-D+ weights, no experts
    if any(p.dim() == 3 for p in module.parameters(recurse=False)):
        return "experts"
    return "other"


def tensors_of(model: Any) -> list[Tensor]:
    """Every parameter of ``model`` in ``named_modules`` order; a parameter seen before is marked tied."""
    out: list[Tensor] = []
    seen: dict[int, str] = {}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for mod_name, module in model.named_modules():
        mtype = module_type_of(module)
        if mtype == "experts" and component_of(mod_name) is not None:
            mtype = "other"             # a 3-D parameter of a vision tower (SigLIP's pooling probe) is no expert
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{pname}" if mod_name else pname
            tied = seen.get(id(p))
            if tied is None:
                seen[id(p)] = full
            role = "lm_head" if (module is head and pname == "weight") else classify(mod_name, pname, mtype)
            if module is head and pname == "bias":
                role = "bias"
            out.append(Tensor(full, tuple(int(d) for d in p.shape), role, mtype, layer_index(mod_name), tied))
    return out


def spec_from_meta(config: Mapping[str, Any] | str, name: str = "", *, trust_remote_code: bool = False,
                   source: str = "config.json") -> ModelSpec:
    """Build a :class:`ModelSpec` by instantiating the model on the meta device.

    Args:
        config: a config dict (as in ``config.json``) or a local model folder.
        name: the spec's name.
        trust_remote_code: allow a folder's own modeling code (``auto_map``); off unless the user asks.

    A config dict's spec is cached on disk (:mod:`vramplan.shapes.cache`, keyed by the config's content and the
    installed transformers/torch versions): a second call with the same config imports neither.
    """
    key = None
    if isinstance(config, str):
        from ..io import read_json

        cfg_dict = read_json(os.path.join(config, "config.json"), error=ConfigError, what="config.json")
    else:
        # Only config dicts are cached: a folder's own modeling code (trust_remote_code) is not in the key.
        cfg_dict = dict(config)
        key = cache.spec_key(cfg_dict)
        if key is not None:
            hit = cache.load(key, language_config(cfg_dict), name)
            if hit is not None:
                # the same validation errors as a fresh build, the resolved keys taken from the cached spec
                cached = {"hidden_size": hit.hidden_size, "num_hidden_layers": hit.num_layers,
                          "num_attention_heads": hit.num_heads or None, "num_key_value_heads": hit.num_kv_heads or None,
                          "head_dim": hit.head_dim or None, "vocab_size": hit.vocab_size,
                          "max_position_embeddings": hit.max_position_embeddings}
                resolved_dims(language_config(cfg_dict), cached, source, always=hit.is_multimodal)
                return hit
    model = meta_model(config, trust_remote_code=trust_remote_code, source=source)
    flat = language_config(cfg_dict)
    text_cfg = model.config.get_text_config(decoder=True)
    kind = "causal" if isinstance(config, str) else model_kind(model.config)
    dims = resolved_dims(flat, {k: getattr(text_cfg, k, None) for k in RESOLVED_KEYS}, source,
                         always=kind == "multimodal")
    arch = type(model).__name__ if kind != "causal" else None
    refusal = None
    if kind == "seq2seq":
        refusal = (f"{arch} is an encoder-decoder model: vramplan counts its parameters and LoRA adapters exactly "
                   "(vramplan params), but does not model its memory (encoder and decoder activations at separate "
                   "source and target lengths, cross-attention, the encoder output every decoder layer reads); "
                   "only decoder-only and multimodal decoder models can be planned")
    spec = assemble(flat, dims, tensors_of(model), name=name or str(cfg_dict.get("_name_or_path", "")),
                    model_type=model_type_of(cfg_dict) or getattr(model.config, "model_type", ""),
                    origin="meta", architecture=arch, plan_refusal=refusal)
    if key is not None:
        cache.store(key, spec)
    return spec


def resolved_dims(flat: Mapping[str, Any], resolved: Mapping[str, Any], source: str, *, always: bool = False) -> Dims:
    """:func:`vramplan.shapes.config.read_dims` on ``flat`` with the shape keys it does not spell taken from
    ``resolved`` (what transformers' config object answers: ``attribute_map`` aliases and class defaults), so a
    config transformers builds is not refused for a key it leaves to its class.

    An attention-free model (``resolved`` has no ``num_attention_heads``: Mamba, Mamba-2, Falcon-Mamba) has 0
    heads, 0 KV heads and head_dim 0; its own ``num_heads`` / ``head_dim`` (Mamba-2's SSM heads) are not read as
    attention heads. Unless ``always`` (a multimodal config: the pure-Python Gemma-3 builder fills its text
    config's defaults the same way), the keys are filled only where the config alone does not read.
    """
    from dataclasses import replace

    attention_free = resolved.get("num_attention_heads") is None
    if not attention_free and not always:
        try:
            return read_dims(flat, source)      # a config that spells its shape keys reads as it always did
        except ConfigError:
            pass                                # retried with the keys it leaves to its config class
    filled = dict(flat)
    if attention_free:
        for k in _ATTENTION_KEYS:
            filled.pop(k, None)
        filled.update(num_attention_heads=1, num_key_value_heads=1, head_dim=1)   # placeholders, replaced below
    spelled = {k: k in flat for k in RESOLVED_KEYS}
    from .config import get

    meanings = {"hidden_size": "hidden_size", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                "num_key_value_heads": "num_kv_heads", "vocab_size": "vocab_size",
                "max_position_embeddings": "max_position_embeddings"}
    for k, value in resolved.items():
        if value is None or k not in RESOLVED_KEYS or (attention_free and k in _ATTENTION_KEYS):
            continue
        meaning = meanings.get(k)
        present = flat.get(k) is not None if meaning is None else get(flat, meaning) is not None
        if not present and not spelled[k]:
            filled[k] = value
    d = read_dims(filled, source)
    return replace(d, num_heads=0, num_kv_heads=0, head_dim=0) if attention_free else d
