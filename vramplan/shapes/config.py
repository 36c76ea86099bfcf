"""Read the architecture numbers out of a ``config.json`` dict, whatever the family calls them.

Pure Python: no torch, no transformers. Validation errors name the config's source and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..io import brief

# Field names per meaning, in the order transformers' config classes resolve them (``attribute_map``).
_KEYS = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "n_embed", "dim", "model_dim"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num"),
    "intermediate_size": ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "d_ff"),
    "vocab_size": ("vocab_size", "padded_vocab_size", "n_vocab"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length",
                                "n_ctx"),
}


# Spellings a family reads in its own order. BLOOM and Falcon configs pop a legacy ``n_embed`` that overrides
# ``hidden_size`` (``BloomConfig.__post_init__``, ``FalconConfig.__post_init__``), and read no other spelling.
_FAMILY_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "bloom": {"hidden_size": ("n_embed", "hidden_size")},
    "falcon": {"hidden_size": ("n_embed", "hidden_size")},
}

# Config-class defaults that shapes depend on, used when the config names no key for that meaning at all
# (an explicit ``null`` still falls back as the config classes' ``__post_init__`` do). Sources: the dataclass
# fields of ``models/<family>/configuration_<family>.py`` in transformers 5.x; e.g. ``Qwen3Config.head_dim = 128``
# and ``MixtralConfig.num_key_value_heads = 8``, so "hidden // heads" would be wrong for a config without them.
_FAMILY_DEFAULTS: dict[str, dict[str, int]] = {
    "mistral": {"num_kv_heads": 8},
    "qwen2": {"num_kv_heads": 32},
    "qwen3": {"num_kv_heads": 32, "head_dim": 128},
    "gemma": {"num_kv_heads": 16, "head_dim": 256},
    "gemma2": {"num_kv_heads": 4, "head_dim": 256},
    "gemma3_text": {"num_kv_heads": 4, "head_dim": 256},
    "mixtral": {"num_kv_heads": 8},
    "qwen2_moe": {"num_kv_heads": 16},
    "qwen3_moe": {"num_kv_heads": 4},
    "gpt2": {"max_position_embeddings": 1024},     # sizes the learned ``wpe`` table
    "opt": {"max_position_embeddings": 2048},      # sizes ``embed_positions`` (+ 2)
}

# Families whose attention ignores any ``head_dim`` key: ``head_dim = hidden_size // num_heads``, and the
# model raises when that does not divide (``BloomAttention``, ``GPT2Attention``, ``GPTNeoXConfig``,
# ``OPTAttention``, ``FalconAttention``; ``FalconConfig.head_dim`` is a read-only property).
_HEAD_DIM_FROM_HIDDEN = frozenset({"bloom", "gpt2", "gpt_neox", "opt", "falcon"})


#: Most decoder layers a config may declare. The deepest released decoders have a few hundred layers; the
#: spec holds every layer's tensors, so a config with 10**9 layers would take hours and gigabytes to build.
MAX_LAYERS = 4096

#: Largest width, head count, vocabulary or expert count a config may declare (16,777,216): about 60 times the
#: widest released model, small enough that every byte count formed from them stays an exact float.
MAX_DIM = 1 << 24
#: Largest ``max_position_embeddings`` accepted (2**40; read for warnings and fit's limits only).
MAX_POSITIONS = 1 << 40

#: Boolean fields the builders read: a JSON ``true``/``false`` (or 0/1) is accepted; a string such as
#: ``"false"`` is refused, since Python (and so a config class) would read any non-empty string as true.
BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "qkv_bias", "qk_layernorm",
               "add_cross_attention", "enable_bias", "layer_norm_elementwise_affine", "do_layer_norm_before",
               "_remove_final_layer_norm", "bias", "multi_query", "parallel_attn", "new_decoder_architecture",
               "use_sliding_window")
#: Integer fields read outside :func:`read_dims` that must be integers >= 0 when given.
COUNT_FIELDS = ("num_experts_per_tok", "moe_topk", "num_experts", "num_local_experts", "num_ln_in_parallel_attn",
                "decoder_sparse_step")
#: String fields read for the spec's summary.
STR_FIELDS = ("model_type", "hidden_act", "hidden_activation", "activation_function", "activation")


def check_types(config: Any, source: str = "config.json") -> None:
    """Refuse values of the wrong JSON type in the fields the builders read, before any of them is used.

    ``architectures`` must be a list of strings, ``text_config`` and ``quantization_config`` mappings, the
    :data:`BOOL_FIELDS` booleans
    (or 0/1), the :data:`COUNT_FIELDS` integers >= 0 and the :data:`STR_FIELDS` strings (``null`` is
    "not given" everywhere, as in transformers' config classes).

    Raises:
        ConfigError: naming ``source``, the field, the value (shortened) and the type expected.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: expected a JSON object, got {type(config).__name__}")
    for key in config:
        if not isinstance(key, str):
            raise ConfigError(f"{source}: field names must be strings, got {brief(key)}")
    archs = config.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise ConfigError(f"{source}: field 'architectures' must be a list of class names such as "
                          f"[\"LlamaForCausalLM\"], got {brief(archs)}")
    qc = config.get("quantization_config")
    if qc is not None and not isinstance(qc, Mapping):
        # read by vramplan/quantized.py scheme_from_config when a plan is made (a pre-quantized checkpoint)
        raise ConfigError(f"{source}: field 'quantization_config' must be an object (transformers' "
                          f"QuantizationConfigMixin.to_dict), got {brief(qc)}")
    text = config.get("text_config")
    if text is not None and not isinstance(text, Mapping):
        raise ConfigError(f"{source}: field 'text_config' must be an object (the language model's config), "
                          f"got {brief(text)}")
    for key in BOOL_FIELDS:
        value = config.get(key)
        if value is not None and not isinstance(value, bool) and not (type(value) is int and value in (0, 1)):
            raise ConfigError(f"{source}: field '{key}' must be true or false (a JSON boolean, without quotes), "
                              f"got {brief(value)}")
    for key in COUNT_FIELDS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"{source}: field '{key}' must be an integer >= 0, got {brief(value)}")
        if value is not None and value > MAX_DIM:
            raise ConfigError(f"{source}: field '{key}' is {brief(value)}, more than the {MAX_DIM:,} vramplan "
                              "accepts; fix the config")
    for key in STR_FIELDS:
        value = config.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{source}: field '{key}' must be a string, got {brief(value)}")


def _keys(config: Mapping[str, Any], meaning: str) -> tuple[str, ...]:
    return _FAMILY_KEYS.get(str(config.get("model_type") or ""), {}).get(meaning, _KEYS[meaning])


def get(config: Mapping[str, Any], meaning: str, default: Any = None) -> Any:
    """First present key for ``meaning`` (see ``_KEYS``), else ``default``."""
    for key in _keys(config, meaning):
        value = config.get(key)
        if value is not None:
            return value
    return default


@dataclass(frozen=True)
class Dims:
    """The validated core numbers of a config."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int | None


def _positive_int(config: Mapping[str, Any], meaning: str, source: str, *, required: bool = True,
                  default: int | None = None) -> int | None:
    value = get(config, meaning)
    if value is None:
        if required and default is None:
            first, *others = _keys(config, meaning)
            also = f" (or {' / '.join(others)})" if others else ""
            raise ConfigError(f"{source}: missing field '{first}'{also}; pass the model's full config.json")
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        key = next(k for k in _keys(config, meaning) if config.get(k) is not None)
        raise ConfigError(f"{source}: field '{key}' must be a positive integer, got {brief(value)}")
    limit = MAX_POSITIONS if meaning == "max_position_embeddings" else MAX_DIM
    if value > limit and meaning != "num_layers":     # read_dims names the layer cap (MAX_LAYERS) itself
        key = next(k for k in _keys(config, meaning) if config.get(k) is not None)
        raise ConfigError(f"{source}: field '{key}' is {brief(value)}, more than the {limit:,} vramplan accepts; "
                          "fix the config")
    return value


def _family_default(config: Mapping[str, Any], meaning: str) -> int | None:
    """The config class's default for ``meaning`` when the config spells no key for it (not even null)."""
    keys = ("head_dim",) if meaning == "head_dim" else _keys(config, meaning)
    if any(k in config for k in keys):
        return None
    return _FAMILY_DEFAULTS.get(str(config.get("model_type") or ""), {}).get(meaning)


def _falcon_kv_heads(config: Mapping[str, Any], heads: int, source: str) -> int:
    """KV heads as ``FalconAttention`` builds them: ``new_decoder_architecture`` reads ``num_kv_heads``
    (default: all heads); the older layout has one shared KV head with ``multi_query`` (default True) and
    all heads without it (``query_key_value`` is then ``3 * hidden``, whatever ``num_kv_heads`` says)."""
    if config.get("new_decoder_architecture"):
        kv = _positive_int(config, "num_kv_heads", source, required=False)
        return heads if kv is None else kv
    multi_query = config.get("multi_query")
    return 1 if (multi_query is None or multi_query) else heads


def read_dims(config: Mapping[str, Any], source: str = "config.json") -> Dims:
    """Validate and return the core dimensions.

    Family defaults apply where the config names no key for a meaning (``_FAMILY_DEFAULTS``), so that both
    spec builders see what transformers' config class would.

    Raises:
        ConfigError: a missing, non-positive or inconsistent field, naming ``source`` and the field.
    """
    check_types(config, source)
    family = str(config.get("model_type") or "")
    hidden = _positive_int(config, "hidden_size", source)
    layers = _positive_int(config, "num_layers", source)
    if layers > MAX_LAYERS:
        key = next(k for k in _keys(config, "num_layers") if config.get(k) is not None)
        raise ConfigError(f"{source}: field '{key}' is {brief(layers)}, more than the {MAX_LAYERS:,} layers vramplan "
                          "plans (the deepest released decoders have a few hundred); fix the config")
    heads = _positive_int(config, "num_heads", source)
    if family == "falcon":
        kv = _falcon_kv_heads(config, heads, source)
    else:
        kv = _positive_int(config, "num_kv_heads", source, required=False,
                           default=_family_default(config, "num_kv_heads"))
        if kv is None:
            kv = 1 if config.get("multi_query") and not config.get("new_decoder_architecture") else heads
    vocab = _positive_int(config, "vocab_size", source)
    head_dim = config.get("head_dim") if family not in _HEAD_DIM_FROM_HIDDEN else None
    if head_dim is None and family not in _HEAD_DIM_FROM_HIDDEN:
        head_dim = _family_default(config, "head_dim")
    if head_dim is not None:
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or not 0 < head_dim <= MAX_DIM:
            raise ConfigError(f"{source}: field 'head_dim' must be a positive integer up to {MAX_DIM:,}, "
                              f"got {head_dim!r}")
    else:
        if hidden % heads:
            raise ConfigError(
                f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}; "
                + ("fix the config" if family in _HEAD_DIM_FROM_HIDDEN else "fix the config or give 'head_dim'")
            )
        head_dim = hidden // heads
    if heads % kv:
        raise ConfigError(f"{source}: num_attention_heads {heads} is not a multiple of "
                          f"num_key_value_heads {kv}")
    max_pos = _positive_int(config, "max_position_embeddings", source, required=False,
                            default=_family_default(config, "max_position_embeddings"))
    return Dims(hidden, layers, heads, kv, head_dim, vocab, max_pos)
