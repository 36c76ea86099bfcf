"""LoRA targeting exactly as PEFT does it, on a :class:`~vramplan.shapes.ModelSpec`, without torch.

Mirrors peft 0.21.2 on transformers 5.23, step for step in ``BaseTuner.inject_adapter``
(``peft/tuners/tuners_utils.py``):

1. ``LoraConfig.__post_init__`` (``peft/tuners/lora/config.py``): a string ``target_modules`` (a regex or
   ``all-linear``) cannot be combined with ``layers_to_transform``/``layers_pattern``, and ``layers_pattern``
   needs ``layers_to_transform``.
2. ``peft/utils/transformers_weight_conversion.py::convert_peft_config_for_transformers``: on MoE models whose
   transformers-5 layout fused the experts (model types that transformers' ``_MODEL_TO_CONVERSION_PATTERN``
   maps to ``mixtral`` or ``qwen2_moe``, plus ``mixtral`` itself; *not* ``qwen2_moe`` itself) the config is
   rewritten before anything is matched. A string target is first reduced to the *leaf names* it matches
   (``all-linear``: the leaf names of every ``nn.Linear`` except the head, plus the v4 expert and router names;
   a regex: the leaf names of the module and parameter keys it full-matches, plus a v4 expert name whenever
   ``<experts container>.<v4 name>`` would match). Then every target equal to (or ending in ``.`` +) a v4 name
   moves to ``target_parameters``: mixtral ``gate``→``gate.weight``, ``w1``/``w3``→``gate_up_proj``,
   ``w2``→``down_proj``; qwen2_moe family ``gate``→``gate.weight``, ``gate_proj``/``up_proj``→``gate_up_proj``,
   ``down_proj``→``down_proj``. Naming only one half of a fused pair raises; naming both sets
   ``rank_pattern[".*\\.gate_up_proj"] = 2r``. Consequences PEFT really has: ``targets=None`` adapts nothing
   and raises (the default targets are never filled in); the remaining targets are leaf names, so a regex
   such as ``.*layers\\.0\\.self_attn\\.q_proj`` adapts ``q_proj`` in every layer; dense ``gate_proj``/
   ``up_proj``/``down_proj`` Linears (qwen3_moe ``mlp_only_layers``) lose their adapters; ``gate_up_proj``/
   ``experts`` are not v4 names and stay module targets (``experts`` is not a Linear: PEFT raises).
3. ``LoraModel._prepare_adapter_config``: ``target_modules=None`` takes
   ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type]`` (even when ``target_parameters`` are
   given), else raises unless ``target_parameters`` are given.
4. ``_maybe_include_all_linear_layers``: ``all-linear`` is every ``nn.Linear``/``Conv1D`` except the output
   embedding (``model.get_output_embeddings()``), as a set of full names.
5. ``check_target_module_exists`` over ``named_modules``: modules covered by ``modules_to_save`` (regex
   ``(^|.*\\.)m($|\\..*)``) are excluded; a string is ``re.fullmatch``-ed; a list matches a name equal to an
   entry (which bypasses ``layers_to_transform``) or ending with ``"." + entry`` (then
   ``layers_to_transform`` keeps the first numbered segment, or the one after ``layers_pattern``). A matched
   module that is not Linear/Conv1D/Embedding raises (``LoraModel._create_new_module``).
6. ``_inject_parameters``: a parameter whose ``module.param`` key equals or ends with ``"." + entry`` of
   ``target_parameters`` is wrapped in ``lora.ParamWrapper`` (``peft/tuners/lora/layer.py``) --
   ``layers_to_transform`` and ``modules_to_save`` are not consulted. A 3-D expert tensor ``(E, a, b)`` gets
   ``lora_A`` ``(r*E, b)`` and ``lora_B`` ``(a, r*E)``; a 2-D one (the router ``gate.weight`` ``(E, H)``) gets
   ``(r, H)`` and ``(E, r)``. ParamWrapper raises with DoRA, ``lora_dropout != 0``, a 1-D parameter, or a
   module that is also a ``target_modules`` match.
7. Nothing adapted raises ``NoMatchingPeftModuleError``.
8. ``peft/utils/other.py::_set_trainable``: ``modules_to_save`` wraps every module whose name ends with an
   entry (plain ``str.endswith``) in a ``ModulesToSaveWrapper`` holding a trainable deep copy (adapters inside
   it included; the originals are frozen). Wrapping a LoRA layer, a ParamWrapper or a ModuleList raises.

Adapter sizes (``peft/tuners/lora/layer.py``): Linear/Conv1D ``lora_A`` (r, in) + ``lora_B`` (out, r); Embedding
``lora_embedding_A`` (r, num) + ``lora_embedding_B`` (dim, r); DoRA adds a magnitude vector of ``out_features``
(``peft/tuners/lora/dora.py``). Counts are what ``PeftModel.get_nb_trainable_parameters`` returns.

Not mirrored: modules that own no parameter (activations, rotary embeddings, dropout) are invisible to a
``ModelSpec``; a regex that matches only such modules raises "matches no module" here, where PEFT raises
"Target module ... is not supported" -- both refuse. A ``modules_to_save`` entry that matches nothing raises
here; PEFT silently ignores it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import TargetError, close_matches
from .memo import IdCache
from .options import option, read_pattern, read_tokens
from .shapes.spec import ModelSpec, Module, Tensor

#: the peft release the tables below mirror (and that .ci/constraints.txt pins)
PEFT_TABLE_VERSION = "0.21.2"

#: peft 0.21.2 ``peft/utils/constants.py`` TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (list entries).
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "t5": ("q", "v"), "mt5": ("q", "v"), "bart": ("q_proj", "v_proj"), "gpt2": ("c_attn",),
    "bloom": ("query_key_value",), "blip-2": ("q", "v", "q_proj", "v_proj"), "opt": ("q_proj", "v_proj"),
    "gptj": ("q_proj", "v_proj"), "gpt_neox": ("query_key_value",), "gpt_neo": ("q_proj", "v_proj"),
    "bert": ("query", "value"), "roberta": ("query", "value"), "xlm-roberta": ("query", "value"),
    "electra": ("query", "value"), "deberta-v2": ("query_proj", "value_proj"), "deberta": ("in_proj",),
    "layoutlm": ("query", "value"), "llama": ("q_proj", "v_proj"), "llama4": ("q_proj", "v_proj"),
    "chatglm": ("query_key_value",), "gpt_bigcode": ("c_attn",), "mpt": ("Wqkv",),
    "RefinedWebModel": ("query_key_value",), "RefinedWeb": ("query_key_value",), "falcon": ("query_key_value",),
    "btlm": ("c_proj", "c_attn"), "codegen": ("qkv_proj",), "mistral": ("q_proj", "v_proj"),
    "mixtral": ("q_proj", "v_proj"), "stablelm": ("q_proj", "v_proj"), "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"),
    "nemotron_h": ("q_proj", "k_proj", "v_proj", "o_proj"), "rwkv": ("key", "value", "receptance", "output"),
    "rwkv7": ("r_proj", "k_proj", "v_proj", "o_proj", "key", "value"),
}
#: The same mapping's regex entries (a string default is used as a regex).
DEFAULT_TARGET_REGEX: dict[str, str] = {"gemma4": r".*language_model\..*\.(q_proj|v_proj)"}

#: transformers 5.23 ``conversion_mapping._MODEL_TO_CONVERSION_PATTERN`` entries whose base is an MoE layout
#: PEFT converts, plus ``mixtral`` (added by peft's ``transformers_weight_conversion.py``). ``qwen2_moe`` is
#: a base, not an entry, so PEFT leaves ``qwen2_moe`` models unconverted.
MOE_CONVERSION_BASE: dict[str, str] = {
    "mixtral": "mixtral", "minimax": "mixtral", "minimax_m2": "mixtral",
    **{mt: "qwen2_moe" for mt in (
        "Dots3NoteTextModel", "UnlimitedOcrTextModel", "afmoe", "beam", "cohere2_moe", "deepseek_v2",
        "deepseek_v3", "deepseek_v32", "dots1", "ernie4_5_moe", "exaone_moe", "flex_olmo", "glm4_moe",
        "glm4_moe_lite", "glm4v_moe", "glm_moe_dsa", "hunyuan_v1_moe", "longcat_flash", "mellum", "olmoe",
        "qwen3_moe", "qwen3_next", "qwen3_omni_moe", "qwen3_omni_moe_text", "qwen3_omni_moe_thinker",
        "solar_open")},
}
#: peft ``_MOE_TARGET_MODULE_MAPPING``: v4 module name -> v5 parameter target (order matters: first match wins).
MOE_TARGET_MAPPING: dict[str, dict[str, str]] = {
    "mixtral": {"gate": "gate.weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"},
    "qwen2_moe": {"gate": "gate.weight", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
                  "down_proj": "down_proj"},
}
#: peft ``_MOE_FUSED_TARGETS``: v5 fused parameter -> the v4 names that must be targeted together.
MOE_FUSED_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "mixtral": {"gate_up_proj": ("w1", "w3")},
    "qwen2_moe": {"gate_up_proj": ("gate_proj", "up_proj")},
}

ALL_LINEAR = "all-linear"
_LORA_TYPES = ("linear", "conv1d", "embedding")
_CONTAINER = "container"   # a module that owns no tensor itself (self_attn, mlp, layers, model)


def installed_peft_default(model_type: str) -> tuple[tuple[str, ...] | str | None, str | None]:
    """The installed PEFT's default targets for a model type the mirrored table lacks.

    Returns ``(targets, source)``, or ``(None, None)`` when PEFT is not installed or does not know the type
    either. Importing peft imports torch, so this runs only on that fallback, never on the mirrored path.
    """
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        return None, None
    from importlib.metadata import version

    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table

    found = table.get(model_type)
    if found is None:
        return None, None
    return (found if isinstance(found, str) else tuple(found)), f"the installed peft {version('peft')}'s table"


#: PEFT ``LoraConfig.bias`` values (``peft/tuners/lora/config.py``)
BIAS_MODES: tuple[str, ...] = ("none", "all", "lora_only")


def _tokens_json(tokens: tuple[tuple[str, tuple[int, ...]], ...]) -> list[int] | dict[str, list[int]] | None:
    """``trainable_tokens`` as PEFT writes ``trainable_token_indices``: a list for the input embedding, else a
    mapping of module names to indices."""
    if not tokens:
        return None
    if len(tokens) == 1 and tokens[0][0] == "":
        return list(tokens[0][1])
    return {k: list(v) for k, v in tokens}


#: The largest LoRA rank accepted: beyond the width of any model (fit's rank search stops at 2**14).
MAX_RANK = 1 << 16


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:18]}...{text[-18:]} ({len(text):,} characters)"


def _finite(x: float) -> bool:
    try:
        return math.isfinite(float(x))
    except OverflowError:         # an integer beyond float range
        return False


@dataclass(frozen=True)
class LoraConfig:
    """The LoRA options that decide shapes (PEFT's ``LoraConfig`` defaults: r=8, alpha=8, dropout 0).

    ``targets=None`` with no ``target_regex`` means PEFT's default targets for the model type;
    ``targets=("all-linear",)`` is PEFT's string ``"all-linear"``. ``target_parameters`` are
    ``module.param`` suffixes wrapped with ``lora.ParamWrapper`` (e.g. ``("experts.gate_up_proj",)``).
    """

    r: int = option(8, kind="int", name="rank", short="-r", unset=True, help="LoRA rank r (PEFT default 8).")
    alpha: int = option(8, kind="number", unset=True, help="LoRA alpha (PEFT default 8; no effect on memory).")
    targets: tuple[str, ...] | None = option(
        None, kind="list", repeat_only=True,
        help="Comma list of module-name suffixes, or all-linear (PEFT default for the family, e.g. q_proj,v_proj).")
    target_regex: str | None = option(None, kind="str", repeat_only=True,
                                      help="Full-match regex over module names (PEFT's target_modules as a string).")
    modules_to_save: tuple[str, ...] = option(
        (), kind="list", unset=True, repeat_only=True,
        help="Comma list of modules trained in full as copies (e.g. embed_tokens,lm_head).")
    layers_to_transform: tuple[int, ...] | None = option(None, kind="layers", repeat_only=True,
                                                         help="Only these layer indices, e.g. 0,1,4-7.")
    layers_pattern: tuple[str, ...] | None = option(
        None, kind="list", repeat_only=True,
        help="With --layers-to-transform: the name of the layer list whose index counts (PEFT layers_pattern, "
             "e.g. layers or h; default: the first numbered segment).")
    dora: bool = option(False, kind="bool", help="DoRA: adds a magnitude vector per adapted module.")
    dropout: float = option(0.0, kind="number", name="lora_dropout", unset=True,
                            help="LoRA dropout (PEFT default 0; > 0 saves a dropped copy of each adapted input).")
    target_parameters: tuple[str, ...] = option(
        (), kind="list", unset=True, repeat_only=True,
        help="Comma list of module.param suffixes wrapped by PEFT's ParamWrapper (e.g. experts.gate_up_proj).")
    exclude_modules: tuple[str, ...] = option(
        (), kind="list", unset=True, repeat_only=True,
        help="Comma list of module names or name suffixes never adapted (PEFT exclude_modules as a list).")
    exclude_regex: str | None = option(
        None, kind="str", repeat_only=True,
        help="Full-match regex over module names never adapted (PEFT exclude_modules as a string).")
    rank_pattern: tuple[tuple[str, int], ...] = option(
        (), kind="pattern", unset=True, repeat_only=True,
        help="Per-module ranks, NAME=RANK items such as q_proj=64,v_proj=32 (PEFT rank_pattern: a key is a name "
             "suffix or a regex, the first that matches wins).")
    alpha_pattern: tuple[tuple[str, float], ...] = option(
        (), kind="pattern", unset=True, repeat_only=True,
        help="Per-module alphas, NAME=ALPHA items (PEFT alpha_pattern; no effect on memory).")
    bias: str = option("none", kind="choice", choices=BIAS_MODES, unset=True,
                       help="Which base biases train (PEFT bias): none, all (every bias), or lora_only (biases of "
                            "adapted modules). Default none.")
    lora_bias: bool = option(False, kind="bool",
                             help="A trainable bias on each lora_B (PEFT lora_bias; Linear adapters only).")
    trainable_tokens: tuple[tuple[str, tuple[int, ...]], ...] = option(
        (), kind="tokens", unset=True, repeat_only=True,
        help="Embedding rows trained (PEFT trainable_token_indices): indices such as 0,1,5-9 for the input "
             "embedding, or MODULE=INDICES groups such as embed_tokens=0-9,lm_head=0-9.")

    def to_dict(self) -> dict[str, Any]:
        """The options as a plan's ``setup.lora`` JSON (lists for tuples, mappings for patterns); :meth:`from_dict`
        reads it back. A field added after the first release is written only when it is not its default, so
        that plans written before it stay byte-identical."""
        d: dict[str, Any] = {
            "r": self.r, "alpha": self.alpha,
            "targets": list(self.targets) if self.targets is not None else None,
            "target_regex": self.target_regex, "modules_to_save": list(self.modules_to_save),
            "layers_to_transform": list(self.layers_to_transform) if self.layers_to_transform is not None else None,
            "dora": self.dora, "dropout": self.dropout}
        extra: dict[str, Any] = {
            "layers_pattern": list(self.layers_pattern) if self.layers_pattern is not None else None,
            "target_parameters": list(self.target_parameters), "exclude_modules": list(self.exclude_modules),
            "exclude_regex": self.exclude_regex, "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern), "bias": self.bias, "lora_bias": self.lora_bias,
            "trainable_tokens": _tokens_json(self.trainable_tokens)}
        d.update({k: v for k, v in extra.items() if v not in (None, [], {}, "none", False)})
        return d

    def peft_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the ``peft.LoraConfig`` a user writes for this config (the simulator's
        ``get_peft_model`` uses them); :func:`vramplan.interop.hf.lora_from_peft` reads that config back."""
        if self.target_regex is not None:
            targets: Any = self.target_regex
        elif self.targets is None:
            targets = None
        elif self.all_linear:
            targets = self.targets[0]
        else:
            targets = list(self.targets)
        kw: dict[str, Any] = {"r": self.r, "lora_alpha": self.alpha, "target_modules": targets,
                              "lora_dropout": self.dropout, "use_dora": self.dora, "bias": self.bias,
                              "lora_bias": self.lora_bias}
        optional = {
            "modules_to_save": list(self.modules_to_save) or None,
            "layers_to_transform": list(self.layers_to_transform) if self.layers_to_transform is not None else None,
            "layers_pattern": list(self.layers_pattern) if self.layers_pattern else None,
            "target_parameters": list(self.target_parameters) or None,
            "exclude_modules": self.exclude_regex if self.exclude_regex is not None
            else (list(self.exclude_modules) or None),
            "rank_pattern": dict(self.rank_pattern) or None, "alpha_pattern": dict(self.alpha_pattern) or None,
            "trainable_token_indices": _tokens_json(self.trainable_tokens)}
        kw.update({k: v for k, v in optional.items() if v is not None})
        return kw

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoraConfig:
        """A config from :meth:`to_dict`'s JSON (missing keys take PEFT's defaults)."""
        return cls(r=d.get("r", 8), alpha=d.get("alpha", 8),
                   targets=tuple(d["targets"]) if d.get("targets") is not None else None,
                   target_regex=d.get("target_regex"), modules_to_save=tuple(d.get("modules_to_save") or ()),
                   layers_to_transform=tuple(d["layers_to_transform"])
                   if d.get("layers_to_transform") is not None else None,
                   layers_pattern=tuple(d["layers_pattern"]) if d.get("layers_pattern") is not None else None,
                   dora=bool(d.get("dora", False)), dropout=float(d.get("dropout", 0.0)),
                   target_parameters=tuple(d.get("target_parameters") or ()),
                   exclude_modules=tuple(d.get("exclude_modules") or ()), exclude_regex=d.get("exclude_regex"),
                   rank_pattern=d.get("rank_pattern") or (), alpha_pattern=d.get("alpha_pattern") or (),
                   bias=d.get("bias", "none"), lora_bias=bool(d.get("lora_bias", False)),
                   trainable_tokens=d.get("trainable_tokens") or ())

    def __post_init__(self) -> None:
        self._normalize()
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise TargetError(f"--rank must be an integer >= 1, got {_quote(self.r)}")
        if self.r > MAX_RANK:
            raise TargetError(f"--rank must be at most {MAX_RANK:,}, got {_quote(self.r)}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not _finite(self.alpha):
            raise TargetError(f"--alpha must be a finite number, got {_quote(self.alpha)}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise TargetError(f"--lora-dropout must be a number in [0, 1), got {_quote(self.dropout)}")
        ltt = self.layers_to_transform
        if ltt is not None and not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1 << 20
                                       for i in ltt):
            raise TargetError(f"--layers-to-transform must be layer indices >= 0, got {_quote(ltt)}")
        if self.target_regex is not None:
            try:
                re.compile(self.target_regex)
            except re.error as exc:
                raise TargetError(f"--target-regex {self.target_regex!r} does not compile: {exc}; "
                                  "write a Python regular expression matched against full module names") from None
        if not 0.0 <= float(self.dropout) < 1.0:
            raise TargetError(f"--lora-dropout must be in [0, 1), got {self.dropout!r}")
        # peft/tuners/lora/config.py LoraConfig.__post_init__
        if self._string_target is not None and self.layers_to_transform is not None:
            raise TargetError(f"--layers-to-transform cannot be combined with {self._string_target_flag} (PEFT "
                              "applies layer indices to a list of module names only); pass --targets names instead")
        if self._string_target is not None and self.layers_pattern is not None:
            raise TargetError(f"--layers-pattern cannot be combined with {self._string_target_flag} (PEFT rule); "
                              "pass --targets names instead")
        if self.layers_pattern and self.layers_to_transform is None:
            raise TargetError(f"--layers-pattern {','.join(self.layers_pattern)!r} needs --layers-to-transform "
                              "(PEFT rule)")
        self._check_new_fields()

    def _normalize(self) -> None:
        """Accept what the Python API and config readers hand over (a dict for a pattern, a string for
        ``layers_pattern``, lists for tuples, the command line's text) and store the hashable form."""
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        flags = {"rank_pattern": "--rank-pattern", "alpha_pattern": "--alpha-pattern",
                 "trainable_tokens": "--trainable-tokens"}
        for name in ("rank_pattern", "alpha_pattern", "trainable_tokens"):
            value = getattr(self, name)
            if value is None or (isinstance(value, (tuple, list, dict, str)) and not value):
                put(name, ())       # PEFT's empty trainable_token_indices wraps nothing worth counting: none
                continue
            try:
                put(name, read_tokens(value) if name == "trainable_tokens" else read_pattern(value))
            except ValueError as exc:
                raise TargetError(f"{flags[name]} {exc}") from None
        if isinstance(self.layers_pattern, str):
            put("layers_pattern", (self.layers_pattern,) if self.layers_pattern else None)
        elif isinstance(self.layers_pattern, list):
            put("layers_pattern", tuple(self.layers_pattern) or None)
        elif self.layers_pattern == ():
            put("layers_pattern", None)
        for name in ("targets", "modules_to_save", "layers_to_transform", "target_parameters", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TargetError(f"--{name.replace('_', '-')} must be a list of names, got the string "
                                  f"{_quote(value)} (a regex goes in --target-regex / --exclude-regex)")
            if isinstance(value, (list, set, frozenset)):
                put(name, tuple(sorted(value)) if isinstance(value, (set, frozenset)) else tuple(value))
        if isinstance(self.bias, str):
            put("bias", self.bias.lower())

    def _check_new_fields(self) -> None:
        """The options added for issue 15 (PEFT fields beyond the original eight), with PEFT's own rules."""
        for name in ("layers_pattern", "target_parameters", "exclude_modules"):
            value = getattr(self, name)
            if value is not None and not all(isinstance(x, str) and x for x in value):
                raise TargetError(f"--{name.replace('_', '-')} must be non-empty names, got {_quote(value)}")
        if self.exclude_regex is not None:
            if not isinstance(self.exclude_regex, str):
                raise TargetError(f"--exclude-regex must be a regex string, got {_quote(self.exclude_regex)}")
            try:
                re.compile(self.exclude_regex)
            except re.error as exc:
                raise TargetError(f"--exclude-regex {self.exclude_regex!r} does not compile: {exc}; write a Python "
                                  "regular expression matched against full module names") from None
        if self.exclude_regex is not None and self.exclude_modules:
            raise TargetError("--exclude-modules and --exclude-regex cannot be combined (PEFT's exclude_modules is "
                              "either a list of names or one regex); fold the names into the regex")
        for flag, pattern in (("--rank-pattern", self.rank_pattern), ("--alpha-pattern", self.alpha_pattern)):
            for key, value in pattern:
                try:
                    re.compile(rf"(.*\.)?({key})$")       # peft.utils.other.get_pattern_key
                except re.error as exc:
                    raise TargetError(f"{flag} key {key!r} does not compile as a regex: {exc}") from None
                if flag == "--rank-pattern" and (isinstance(value, bool) or not isinstance(value, int)
                                                 or not 1 <= value <= MAX_RANK):
                    raise TargetError(f"--rank-pattern {key}={value!r}: a rank must be an integer from 1 to "
                                      f"{MAX_RANK:,} (PEFT refuses r <= 0)")
        if self.bias not in BIAS_MODES:
            raise TargetError(f"--bias must be one of {', '.join(BIAS_MODES)} (PEFT LoraConfig.bias), got "
                              f"{_quote(self.bias)}{close_matches(str(self.bias), BIAS_MODES)}")
        if not isinstance(self.lora_bias, bool):
            raise TargetError(f"--lora-bias must be true or false, got {_quote(self.lora_bias)}")
        if self.lora_bias and self.dora:
            # peft/tuners/lora/config.py LoraConfig.__post_init__
            raise TargetError("--lora-bias cannot be combined with --dora (PEFT: lora_bias=True is not supported for "
                              "DoRA); drop one of them")
        if not isinstance(self.dora, bool):
            raise TargetError(f"--dora must be true or false, got {_quote(self.dora)}")

    @property
    def all_linear(self) -> bool:
        s = self._string_target
        return s is not None and s.lower() == ALL_LINEAR

    @property
    def _string_target(self) -> str | None:
        """What PEFT receives as a string ``target_modules`` (a regex or ``all-linear``), if anything."""
        if self.target_regex is not None:
            return self.target_regex
        if self.targets is not None and len(self.targets) == 1 and self.targets[0].lower() == ALL_LINEAR:
            return self.targets[0]
        return None

    @property
    def _string_target_flag(self) -> str:
        return (f"--target-regex {self.target_regex!r}" if self.target_regex is not None
                else f"--targets {ALL_LINEAR}")


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter: a wrapped module, or (``parameter`` set) one ``nn.Parameter`` in a ParamWrapper.

    ``lora_A`` is ``(rank, in_features)`` and ``lora_B`` ``(out_features, rank)``. For a module, ``rank`` is
    ``r`` (``2r`` for a fused ``gate_up_proj`` after PEFT's MoE conversion); for a 3-D expert parameter it is
    ``r_eff * num_experts`` and ``in_features``/``out_features`` are per expert.
    """

    module: str
    module_type: str        # of the owning module: linear / conv1d / embedding / experts / other
    in_features: int
    out_features: int
    layer: int | None
    role: str
    lora_params: int        # rank * (in + out)
    dora_params: int        # magnitude vector (DoRA only)
    rank: int
    parameter: str | None = None    # ParamWrapper: the wrapped parameter's name (``gate_up_proj``)
    num_experts: int = 1
    frozen: bool = False    # inside a modules_to_save module: the copy trains, this original does not
    bias_params: int = 0    # lora_bias: ``lora_B``'s bias, ``out_features`` (``peft/tuners/lora/layer.py:264``)

    @property
    def name(self) -> str:
        return self.module if self.parameter is None else f"{self.module}.{self.parameter}"

    @property
    def params(self) -> int:
        return self.lora_params + self.dora_params + self.bias_params


@dataclass(frozen=True)
class TokenAdapter:
    """``trainable_token_indices`` on one module: PEFT's ``TrainableTokensLayer``
    (``peft/tuners/trainable_tokens/layer.py``).

    It holds a trainable ``trainable_tokens_delta`` of ``(len(indices), dim)`` (duplicates included), a buffer
    ``trainable_tokens_original`` of the same shape (memory, not a parameter), and in every forward
    ``get_merged_weights`` builds a full copy of the wrapped weight with the rows replaced. A ``tied`` adapter
    (the output head tied to the embedding) shares the embedding's delta and adds no parameter.
    """

    module: str
    module_type: str            # embedding or linear
    rows: int                   # len(indices)
    dim: int                    # embedding_dim, or a Linear's in_features
    weight_numel: int           # the wrapped weight: what each forward's merged copy holds
    tied: bool = False

    @property
    def params(self) -> int:
        return 0 if self.tied else self.rows * self.dim


@dataclass(frozen=True)
class SavedModule:
    """A ``modules_to_save`` copy: a full trainable duplicate of the module (and of adapters inside it)."""

    module: str
    params: int                     # everything in the copy: base tensors + adapter_params
    role: str
    tensors: tuple[str, ...] = ()   # the base tensors it copies
    adapter_params: int = 0         # copies of ParamWrapper adapters inside the module


@dataclass(frozen=True)
class LoraPlan:
    """What ``get_peft_model`` would do to a model, and PEFT's parameter counts."""

    config: LoraConfig
    adapters: tuple[Adapter, ...]
    saved: tuple[SavedModule, ...]
    base_params: int
    targets_used: tuple[str, ...] | str = field(default=())
    target_parameters_used: tuple[str, ...] = ()    # after PEFT's MoE conversion
    #: set when the default targets came from the installed PEFT's own table (a model type vramplan's mirror
    #: lacks): which table; ``None`` when targets were given or came from the mirror
    default_source: str | None = None
    #: base biases made trainable by ``bias="all"``/``"lora_only"`` (tensor names; they keep the base dtype)
    trainable_biases: tuple[str, ...] = ()
    bias_params: int = 0
    #: ``trainable_token_indices`` wrappers
    token_adapters: tuple[TokenAdapter, ...] = ()
    #: options that had no effect (a rank_pattern key no adapter takes, an exclusion that excludes nothing)
    unused: tuple[str, ...] = ()

    @property
    def token_params(self) -> int:
        return sum(t.params for t in self.token_adapters)

    @property
    def warnings(self) -> tuple[str, ...]:
        """Lines for the estimate's warnings: options that had no effect (:attr:`unused`), and what the
        trainables do to memory beyond their tensors -- the merged weight ``TrainableTokensLayer.get_merged_weights``
        builds in every forward (``W.index_copy``, in the wrapped weight's dtype): a transient for an embedding,
        saved for backward by ``F.linear`` on an output head. The tensors themselves (deltas, their buffers,
        trainable biases, lora_B biases) are data on this plan for the estimator to price."""
        out = list(self.unused)
        for t in self.token_adapters:
            kept = "saved for backward by F.linear" if t.module_type == "linear" else "a forward transient"
            out.append(f"trainable_token_indices on {t.module}: every forward builds a merged copy of its "
                       f"{t.weight_numel:,}-element weight ({kept}; peft TrainableTokensLayer.get_merged_weights) "
                       "-- not modelled")
        return tuple(out)

    @property
    def adapter_params(self) -> int:
        """Every adapter parameter that exists (frozen originals inside a saved module included)."""
        return sum(a.params for a in self.adapters)

    @property
    def saved_params(self) -> int:
        return sum(s.params for s in self.saved)

    @property
    def trainable(self) -> int:
        return sum(a.params for a in self.adapters if not a.frozen) + self.saved_params + self.bias_params \
            + self.token_params

    @property
    def total(self) -> int:
        """``all params`` as PEFT prints it: base + adapters + modules_to_save copies + trainable-token deltas
        (trainable biases are base parameters: already counted)."""
        return self.base_params + self.adapter_params + self.saved_params + self.token_params


# ------------------------------------------------------------------------------------------ the model tree
@dataclass(frozen=True)
class _Tree:
    """Every module of the model that holds a parameter somewhere below it, in ``named_modules`` order."""

    names: tuple[str, ...]
    owners: dict[str, Module]               # modules that own tensors directly
    direct: dict[str, tuple[Tensor, ...]]   # tensors owned directly, by module

    def mtype(self, name: str) -> str:
        m = self.owners.get(name)
        return m.module_type if m is not None else _CONTAINER

    def subtree(self, spec: ModelSpec, name: str) -> list[Tensor]:
        prefix = name + "."
        return [t for t in spec.tensors if t.name.startswith(prefix)]

    def is_module_list(self, spec: ModelSpec, name: str) -> bool:
        if name in self.owners:
            return False
        prefix = name + "."
        children = {t.name[len(prefix):].split(".", 1)[0] for t in spec.tensors if t.name.startswith(prefix)}
        return bool(children) and all(c.isdigit() for c in children)


_TREES = IdCache(64)


def _tree(spec: ModelSpec) -> _Tree:
    """The module tree of a spec, cached per spec object (plan_lora runs once per rank in a sweep)."""
    return _TREES.get((spec,), (), lambda: _build_tree(spec))


def _build_tree(spec: ModelSpec) -> _Tree:
    names: dict[str, None] = {}
    for t in spec.tensors:
        parts = t.name.split(".")
        for i in range(1, len(parts)):
            names.setdefault(".".join(parts[:i]))
    owners = {m.name: m for m in spec.modules()}
    direct: dict[str, list[Tensor]] = {}
    for t in spec.tensors:
        direct.setdefault(t.module, []).append(t)
    return _Tree(tuple(names), owners, {k: tuple(v) for k, v in direct.items()})


# ------------------------------------------------------------------------------------ PEFT's matching
@dataclass
class _Peft:
    """The mutable part of ``peft.LoraConfig`` that ``inject_adapter`` rewrites as it goes."""

    target_modules: str | frozenset[str] | None
    target_parameters: frozenset[str]
    modules_to_save: tuple[str, ...]
    layers_to_transform: tuple[int, ...] | None
    layers_pattern: tuple[str, ...] | None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    exclude: str | frozenset[str] | None = None     # exclude_modules: a regex or names


def _saved_excludes(name: str, modules_to_save: Iterable[str]) -> bool:
    """``check_target_module_exists``: never adapt inside a module to save."""
    return any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in modules_to_save)


def _layer_of(name: str, patterns: tuple[str, ...] | None) -> int | None:
    if patterns:
        m = None
        for pattern in patterns:        # the first pattern that matches decides
            m = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if m is not None:
                break
    else:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    return int(m.group("idx")) if m else None


def _excluded(cfg: _Peft, name: str) -> bool:
    """``check_target_module_exists``'s first test: ``exclude_modules`` as a full-match regex, or names equal to
    ``name`` or ending ``"." + entry``."""
    ex = cfg.exclude
    if not ex:
        return False
    if isinstance(ex, str):
        return re.fullmatch(ex, name) is not None
    return name in ex or any(name.endswith("." + e) for e in ex)


def _target_matches(cfg: _Peft, name: str) -> bool:
    """``peft.tuners.tuners_utils.check_target_module_exists`` (an excluded module is ``False``)."""
    if cfg.exclude and _excluded(cfg, name):
        return False
    if cfg.modules_to_save and _saved_excludes(name, cfg.modules_to_save):
        return False
    tm = cfg.target_modules
    if tm is None:
        return False
    if isinstance(tm, str):
        return re.fullmatch(tm, name) is not None
    if name in tm:
        return True     # an exact full name bypasses layers_to_transform
    found = any(name.endswith("." + t) for t in tm)
    if found and cfg.layers_to_transform is not None:
        idx = _layer_of(name, cfg.layers_pattern)
        found = idx is not None and idx in cfg.layers_to_transform
    return found


#: model types whose model class defines no ``get_output_embeddings()`` (it returns None), so PEFT's all-linear
#: keeps the output layer: ChatGLM2/3 and GLM-4's remote code (``modeling_chatglm.py``,
#: ``ChatGLMForConditionalGeneration`` defines none; ``transformer.output_layer`` is a plain ``nn.Linear``)
NO_OUTPUT_EMBEDDINGS = frozenset({"chatglm"})

#: peft 0.21.2 ``tuners_utils._check_lora_target_modules_mamba``: on these model types a LoRA target whose last
#: name is one of :data:`MAMBA_INCOMPATIBLE` raises before the module is wrapped (``all-linear`` included: it
#: names every mixer's ``out_proj``). Jamba, Zamba2, Bamba are not in PEFT's set.
MAMBA_MODEL_TYPES = frozenset({"falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h"})
MAMBA_INCOMPATIBLE = ("out_proj", "conv1d")


def _check_mamba_target(spec: ModelSpec, name: str, config: LoraConfig) -> None:
    """PEFT's Mamba guard, called as ``BaseTuner._check_target_module_compatiblity`` is: on each matched module
    before it is wrapped, in ``named_modules`` order."""
    leaf = name.rpartition(".")[2]
    if spec.model_type in MAMBA_MODEL_TYPES and leaf in MAMBA_INCOMPATIBLE:
        others = ", ".join(m for m in MAMBA_INCOMPATIBLE if m != leaf)
        raise TargetError(
            f"target {name!r}: PEFT refuses LoRA on '{leaf}' in Mamba-based models (model_type "
            f"{spec.model_type!r}; incompatible: {', '.join(MAMBA_INCOMPATIBLE)}); pass {_targets_flag(config)} "
            f"without {leaf}{' and ' + others if others else ''} (e.g. in_proj)")


def _linear_names(spec: ModelSpec, tree: _Tree) -> list[str]:
    """``_maybe_include_all_linear_layers``: every Linear/Conv1D except the module ``get_output_embeddings()``
    returns (none for :data:`NO_OUTPUT_EMBEDDINGS`)."""
    head = None if spec.model_type in NO_OUTPUT_EMBEDDINGS else spec.output_head
    return [n for n in tree.names if tree.mtype(n) in ("linear", "conv1d") and n != head]


def _convert_moe(spec: ModelSpec, tree: _Tree, cfg: _Peft, r: int) -> None:
    """``transformers_weight_conversion._convert_peft_config_moe``, in place."""
    base = MOE_CONVERSION_BASE.get(spec.model_type)
    if base is None:
        return
    mapping = MOE_TARGET_MAPPING[base]
    fused = MOE_FUSED_TARGETS[base]

    if isinstance(cfg.target_modules, str):
        if cfg.target_modules.lower() == ALL_LINEAR:
            resolved = {n.rpartition(".")[2] for n in _linear_names(spec, tree)} | set(mapping)
        else:
            param_keys = [t.name for t in spec.tensors if t.tied_to is None]   # named_parameters() dedups ties
            resolved = {k.rpartition(".")[2] for k in (*tree.names, *param_keys) if _target_matches(cfg, k)}
            containers: dict[str, list[str]] = {}
            for k in param_keys:
                c, _, leaf = k.rpartition(".")
                containers.setdefault(leaf, []).append(c)
            for old, new in mapping.items():
                if old not in resolved and any(_target_matches(cfg, f"{c}.{old}") for c in containers.get(new, ())):
                    resolved.add(old)
        if not resolved:
            return      # left for the standard "not found" error
        cfg.target_modules = frozenset(resolved)

    params = set(cfg.target_parameters)
    remaining: set[str] = set()
    present: dict[str, set[str]] = {new: set() for new in fused}
    for target in cfg.target_modules or ():
        hit = next(((old, new) for old, new in mapping.items() if target == old or target.endswith("." + old)), None)
        if hit is None:
            remaining.add(target)
            continue
        old, new = hit
        params.add(new)
        if new in fused:
            present[new].add(old)
    for new, olds in fused.items():
        have = present[new]
        if 0 < len(have) < len(olds):
            missing = sorted(set(olds) - have)
            raise TargetError(
                f"{spec.model_type} fuses {' and '.join(olds)} into the experts' {new} (transformers 5): "
                f"targeting {', '.join(sorted(have))} without {', '.join(missing)} is refused by PEFT; "
                f"target both or neither")
        if len(have) == len(olds) > 1:
            cfg.rank_pattern[rf".*\.{re.escape(new)}"] = r * len(olds)
    cfg.target_parameters = frozenset(params)
    cfg.target_modules = frozenset(remaining)


def _rank(cfg: _Peft, key: str, r: int) -> int:
    """``peft.utils.other.get_pattern_key`` on ``rank_pattern``."""
    for pat, rank in cfg.rank_pattern.items():
        if re.match(rf"(.*\.)?({pat})$", key):
            return rank
    return r


# ------------------------------------------------------------------------------------------- planning
def plan_lora(spec: ModelSpec, config: LoraConfig, frozen_roles: tuple[str, ...] = ()) -> LoraPlan:
    """Resolve targets on ``spec`` the way ``get_peft_model`` does and count parameters.

    ``frozen_roles``: parts of a multimodal checkpoint that do not train (``--train-vision``: ``vision_tower``,
    ``vision_projector``); their modules are left out of any target, as LLaMA-Factory 0.9.6
    ``model/model_utils/visual.py patch_target_modules`` drops the frozen parts' modules and ms-swift 4.6
    ``utils/transformers_utils.py get_multimodal_target_regex`` builds ``all-linear`` from the trained parts only.
    PEFT's own ``all-linear`` (``_maybe_include_all_linear_layers``) takes every Linear, the vision tower's too.

    Raises:
        TargetError: wherever ``get_peft_model`` raises: no module matches, a matched module is of a type
            LoRA cannot wrap, half of a fused MoE pair, DoRA or dropout on expert parameters, a saved module
            that is also adapted, or no default targets for the model type.
    """
    tree = _tree(spec)
    string = config._string_target
    cfg = _Peft(
        target_modules=string if string is not None else
        (frozenset(config.targets) if config.targets is not None else None),
        target_parameters=frozenset(config.target_parameters),
        modules_to_save=config.modules_to_save,
        layers_to_transform=config.layers_to_transform, layers_pattern=config.layers_pattern,
        rank_pattern=dict(config.rank_pattern),
        exclude=config.exclude_regex if config.exclude_regex is not None
        else (frozenset(config.exclude_modules) or None))

    used: tuple[str, ...] | str
    if config.target_regex is not None:
        used = config.target_regex
    elif config.targets is not None:
        used = (ALL_LINEAR,) if config.all_linear else tuple(config.targets)
    else:
        used = ()

    default_source: str | None = None
    converted = spec.model_type in MOE_CONVERSION_BASE
    if converted:
        if cfg.target_modules is None:
            cfg.target_modules = frozenset()
        _convert_moe(spec, tree, cfg, config.r)
    elif cfg.target_modules is None:       # LoraModel._prepare_adapter_config
        default = DEFAULT_TARGETS.get(spec.model_type) or DEFAULT_TARGET_REGEX.get(spec.model_type)
        if default is None:
            default, default_source = installed_peft_default(spec.model_type)
        if default is None and not cfg.target_parameters:
            raise TargetError(
                f"PEFT has no default LoRA targets for model_type {spec.model_type!r}: pass --targets "
                f"(e.g. all-linear) - modules with weights are: {_module_names_hint(spec)}")
        if default is not None:
            cfg.target_modules = default if isinstance(default, str) else frozenset(default)
            used = default if isinstance(default, str) else tuple(default)
    if isinstance(cfg.target_modules, str) and cfg.target_modules.lower() == ALL_LINEAR:
        cfg.target_modules = frozenset(_linear_names(spec, tree))

    # -- modules (named_modules order)
    chosen: list[str] = []
    frozen = {m.name for m in spec.modules() if m.role in frozen_roles} if frozen_roles else set()
    for name in tree.names:
        if name in frozen or not _target_matches(cfg, name):
            continue
        _check_mamba_target(spec, name, config)
        mtype = tree.mtype(name)
        if mtype not in _LORA_TYPES:
            what = _KIND.get(mtype, f"a module of type {mtype!r}")
            how = ""
            if mtype == "experts":
                base = MOE_CONVERSION_BASE.get(spec.model_type)
                v4 = f"--targets {','.join(o for o in MOE_TARGET_MAPPING[base] if o != 'gate')} or " if base else ""
                how = f"; adapt expert weights with {v4}target_parameters (e.g. experts.down_proj)"
            raise TargetError(
                f"target {name!r} is {what}, which LoRA cannot wrap (PEFT supports Linear, Conv1D and "
                f"Embedding); narrow {_targets_flag(config)}{how}")
        chosen.append(name)
    adapted = set(chosen)

    # -- parameters (lora.ParamWrapper)
    params: list[tuple[str, Tensor]] = []
    if cfg.target_parameters:
        for name in tree.names:
            for t in tree.direct.get(name, ()):
                key = t.name
                if not (key in cfg.target_parameters
                        or any(key.endswith("." + p) for p in cfg.target_parameters)):
                    continue
                if name in adapted:
                    raise TargetError(
                        f"{key!r} is targeted as a parameter but its module {name!r} is also a LoRA target "
                        "module; PEFT refuses both at once - drop one of them")
                if len(t.shape) not in (2, 3):
                    raise TargetError(f"target parameter {key!r} is {len(t.shape)}-D; PEFT's ParamWrapper "
                                      "wraps 2-D and 3-D parameters only")
                params.append((name, t))
    if params and config.dora:
        raise TargetError(
            f"DoRA cannot adapt parameter {params[0][1].name!r}: PEFT's ParamWrapper (fused MoE experts and "
            "routers in transformers 5) does not support use_dora; target only Linear modules or drop --dora")
    if params and config.dropout:
        raise TargetError(
            f"--lora-dropout {config.dropout!r} cannot be used with parameter {params[0][1].name!r}: PEFT's "
            "ParamWrapper (fused MoE experts and routers in transformers 5) requires lora_dropout 0")

    if not chosen and not params:
        if cfg.exclude:
            bare = _Peft(cfg.target_modules, cfg.target_parameters, (), cfg.layers_to_transform, cfg.layers_pattern)
            hidden = next((n for n in tree.names if _target_matches(bare, n)), None)
            if hidden is not None and _excluded(cfg, hidden):
                flag = "--exclude-regex" if config.exclude_regex is not None else "--exclude-modules"
                raise TargetError(
                    f"every module {_targets_flag(config)} matches (e.g. {hidden!r}) is excluded by {flag}, so "
                    "PEFT adapts nothing (\"All modules were excluded\"); narrow the exclusion")
        if config.modules_to_save:
            bare = _Peft(cfg.target_modules, cfg.target_parameters, (), cfg.layers_to_transform,
                         cfg.layers_pattern)
            hidden = next((n for n in tree.names if _target_matches(bare, n)), None)
            if hidden is not None:
                raise TargetError(
                    f"every module {_targets_flag(config)} matches (e.g. {hidden!r}) is inside --modules-to-save "
                    f"{','.join(config.modules_to_save)!r}, and PEFT never adapts a module it saves; narrow "
                    "--modules-to-save")
        raise TargetError(_no_match_message(spec, tree, config, used, converted))

    # -- modules_to_save (after injection: wrappers can't be saved, saved copies include adapters inside)
    wrapped = {name for name, _ in params}
    saved_names = [n for n in tree.names
                   if config.modules_to_save and any(n.endswith(m) for m in config.modules_to_save)]
    for n in saved_names:
        if n in adapted or n in wrapped:
            kind = "a LoRA target module" if n in adapted else "a module whose parameter LoRA wraps"
            raise TargetError(
                f"--modules-to-save cannot copy {n!r}: it is {kind} and PEFT refuses to save an adapted "
                f"module; remove it from {_targets_flag(config)} or from --modules-to-save")
        if tree.is_module_list(spec, n):
            raise TargetError(f"--modules-to-save cannot copy {n!r}: it is a ModuleList, which PEFT refuses; "
                              "name the modules inside it")
    if config.modules_to_save and not saved_names:
        raise TargetError(
            f"--modules-to-save {','.join(config.modules_to_save)!r} matches no module of {spec.name}; "
            f"modules with weights are: {_module_names_hint(spec)}")

    if config.lora_bias:
        if params:
            raise TargetError(f"--lora-bias cannot be used with parameter {params[0][1].name!r}: PEFT's ParamWrapper "
                              "(fused MoE experts and routers in transformers 5) does not work with lora_bias=True")
        emb = next((n for n in chosen if tree.mtype(n) == "embedding"), None)
        if emb is not None:
            raise TargetError(f"--lora-bias cannot be used on the embedding {emb!r}: PEFT's lora.Embedding does "
                              "not support lora_bias=True; drop it from the targets or drop --lora-bias")
    adapters = [_module_adapter(tree.owners[n], config, _rank(cfg, n, config.r)) for n in chosen]
    adapters += [_param_adapter(name, t, tree, _rank(cfg, t.name, config.r)) for name, t in params]
    saved: list[SavedModule] = []
    for n in saved_names:
        inside = [a for a in adapters if a.module.startswith(n + ".")]
        adapters = [a if a not in inside else _frozen(a) for a in adapters]
        ts = tree.subtree(spec, n)
        names_in = {t.name for t in ts}
        # a deep copy keeps ties inside the module and duplicates a weight tied to something outside it
        copied = [t for t in ts if t.tied_to is None or t.tied_to not in names_in]
        a_params = sum(a.params for a in inside)
        role = tree.owners[n].role if n in tree.owners else _CONTAINER
        saved.append(SavedModule(n, sum(t.numel for t in copied) + a_params, role,
                                 tuple(t.name for t in copied), a_params))

    biases = _trainable_biases(spec, config, chosen, wrapped, saved_names)
    tokens = _token_adapters(spec, tree, config, adapted, saved_names)
    return LoraPlan(config, tuple(adapters), tuple(saved), spec.params_total, used,
                    tuple(sorted(cfg.target_parameters)), default_source, tuple(t.name for t in biases),
                    sum(t.numel for t in biases), tokens, _unused(tree, config, cfg, chosen, params))


def _unused(tree: _Tree, config: LoraConfig, cfg: _Peft, chosen: list[str],
            params: list[tuple[str, Tensor]]) -> tuple[str, ...]:
    """A ``rank_pattern``/``alpha_pattern`` key that no adapter takes (``get_pattern_key``: the first key that
    matches wins, so a shadowed key counts too; PEFT says nothing), and an exclusion that excludes no module
    (PEFT warns: "You have passed exclude_modules=... but no modules were excluded")."""
    keys = chosen + [t.name for _, t in params]
    out = []
    for flag, pattern in (("--rank-pattern", config.rank_pattern), ("--alpha-pattern", config.alpha_pattern)):
        if not pattern:
            continue
        taken = {next((p for p, _ in pattern if re.match(rf"(.*\.)?({p})$", k)), None) for k in keys}
        for p, v in pattern:
            if p not in taken:
                out.append(f"{flag} {p}={v} matches no adapted module (an earlier key may take them): no effect")
    if cfg.exclude and not any(_excluded(cfg, n) for n in tree.names):
        flag = "--exclude-regex" if config.exclude_regex is not None else "--exclude-modules"
        out.append(f"{flag} excludes no module of the model: no effect (PEFT warns the same)")
    return tuple(out)


def _trainable_biases(spec: ModelSpec, config: LoraConfig, chosen: list[str], wrapped: set[str],
                      saved_names: list[str]) -> list[Tensor]:
    """``BaseTuner._mark_only_adapters_as_trainable`` (``peft/tuners/tuners_utils.py``): ``bias="all"`` sets
    ``requires_grad`` on every parameter named ``bias`` or ``*.bias``; ``"lora_only"`` on the bias of each LoRA
    layer (an adapted module or a ParamWrapper's module). The modules_to_save wrappers are made afterwards and
    freeze their originals, whose copies already count as trainable (measured on peft 0.21.2)."""
    if config.bias == "none":
        return []
    inside = tuple(n + "." for n in saved_names)
    owners = set(chosen) | wrapped
    out = []
    for t in spec.tensors:
        if t.tied_to is not None or t.param_name != "bias" or t.name.startswith(inside):
            continue
        if config.bias == "all" or t.module in owners:
            out.append(t)
    return out


def _token_adapters(spec: ModelSpec, tree: _Tree, config: LoraConfig, adapted: set[str],
                    saved_names: list[str]) -> tuple[TokenAdapter, ...]:
    """``peft/utils/other.py::set_additional_trainable_modules`` for ``trainable_token_indices``.

    A list targets the input embedding; a mapping names modules, each wrapping every module whose name ends with
    the key (``_set_trainable``, plain ``str.endswith``; a key that matches nothing raises). On a model with
    ``tie_word_embeddings``, the modules tied to the embedding (the output head) are wrapped as tied adapters
    sharing the embedding's delta -- unless the mapping names the head with other indices (then it gets its own
    delta, and nothing is tied) or the embedding itself is not wrapped.
    """
    if not config.trainable_tokens:
        return ()
    embedding = next((t for t in spec.tensors if t.role == "embedding" and t.tied_to is None), None)
    if embedding is None:
        raise TargetError(f"--trainable-tokens needs an input embedding, and {spec.name} has none")
    emb_name = embedding.module
    tied_heads = [t.module for t in spec.tensors if t.tied_to == embedding.name] if spec.tie_word_embeddings else []
    groups = dict(config.trainable_tokens)
    if "" in groups:
        groups = {emb_name: groups.pop(""), **groups}
    for key in groups:
        if key in config.modules_to_save:
            raise TargetError(f"--trainable-tokens {key!r} is also in --modules-to-save: PEFT trains the embedding "
                              f"either fully or by rows, not both; drop it from one of them")
    skip: set[str] = set()
    if len(groups) > 1 and tied_heads:
        tied_keys = [k for k in groups if emb_name.endswith(k)
                     or any(h.endswith(k) or k in h.split(".") for h in tied_heads)]
        mismatch = len(tied_keys) >= 2 and any(groups[k] != groups[tied_keys[0]] for k in tied_keys[1:])
        if len(tied_keys) >= 2 and not mismatch:
            skip = set(tied_keys) & set(tied_heads)
    else:
        mismatch = False
    out: list[TokenAdapter] = []
    for key, indices in groups.items():
        if key in skip:
            continue
        found = [n for n in tree.names if n.endswith(key)]
        if not found:
            raise TargetError(f"--trainable-tokens module {key!r} matches no module of {spec.name} (PEFT matches the "
                              f"end of each module name); the input embedding is {emb_name!r}")
        for n in found:
            out.append(_token_adapter(spec, tree, n, indices, adapted, saved_names))
    if tied_heads and any(t.module == emb_name for t in out) and not mismatch:
        for h in tied_heads:
            emb = next(t for t in out if t.module == emb_name)
            out.append(TokenAdapter(h, "linear", emb.rows, emb.dim, emb.weight_numel, tied=True))
    return tuple(out)


def _token_adapter(spec: ModelSpec, tree: _Tree, name: str, indices: tuple[int, ...], adapted: set[str],
                   saved_names: list[str]) -> TokenAdapter:
    mtype = tree.mtype(name)
    if name in adapted:
        raise TargetError(f"--trainable-tokens cannot wrap {name!r}: it is a LoRA target and PEFT refuses "
                          "trainable tokens on a LoRA layer; drop it from the targets")
    if mtype not in ("embedding", "linear"):
        raise TargetError(f"--trainable-tokens module {name!r} is {_KIND.get(mtype, 'not an embedding')}; PEFT's "
                          "TrainableTokensLayer wraps an nn.Embedding or nn.Linear only")
    weight = next(t for t in tree.direct[name] if t.param_name == "weight")
    rows_total, dim = weight.shape[0], weight.shape[1]
    bad = next((i for i in indices if i >= rows_total), None)
    if bad is not None:
        raise TargetError(f"--trainable-tokens index {bad:,} is beyond {name!r}'s {rows_total:,} rows (torch raises "
                          "IndexError when PEFT copies them); use indices below the vocabulary size")
    return TokenAdapter(name, mtype, len(indices), dim, weight.numel)


def _frozen(a: Adapter) -> Adapter:
    return Adapter(a.module, a.module_type, a.in_features, a.out_features, a.layer, a.role, a.lora_params,
                   a.dora_params, a.rank, a.parameter, a.num_experts, frozen=True, bias_params=a.bias_params)


def _module_adapter(m: Module, config: LoraConfig, rank: int) -> Adapter:
    lora = rank * (m.in_features + m.out_features)
    dora = m.out_features if config.dora else 0
    bias = m.out_features if config.lora_bias else 0
    return Adapter(m.name, m.module_type, m.in_features, m.out_features, m.layer, m.role, lora, dora, rank,
                   bias_params=bias)


def _param_adapter(module: str, t: Tensor, tree: _Tree, rank: int) -> Adapter:
    """``lora.ParamWrapper``: 3-D ``(E, a, b)`` -> in b, out a, ``E`` experts; 2-D ``(out, in)``.

    (``is_transposed`` experts swap in/out; the count ``rank * E * (in + out)`` is the same either way.)
    """
    if len(t.shape) == 3:
        experts, out_f, in_f = t.shape
    else:
        experts, (out_f, in_f) = 1, t.shape
    inner = rank * experts
    return Adapter(module, tree.mtype(module), in_f, out_f, t.layer, t.role, inner * (in_f + out_f), 0, inner,
                   parameter=t.param_name, num_experts=experts)


# ------------------------------------------------------------------------------------------- messages
_KIND = {_CONTAINER: "a container module (it owns no weight itself)", "norm": "a norm layer",
         "experts": "a fused-experts module (3-D expert weights, not an nn.Linear)",
         "other": "a module that is not an nn.Linear/Conv1D/Embedding"}


def _targets_flag(config: LoraConfig) -> str:
    if config.target_regex is not None:
        return "--target-regex"
    return "--targets"


def _module_names_hint(spec: ModelSpec) -> str:
    leaves: list[str] = []
    for m in spec.modules():
        leaf = m.name.rpartition(".")[2]
        if m.module_type in _LORA_TYPES and leaf not in leaves:
            leaves.append(leaf)
    return ", ".join(leaves)


#: Unfused names whose job a fused module does (Baichuan ``W_pack``, Phi-3 ``qkv_proj``/``gate_up_proj``).
_FUSED_INTO = {"attn_qkv": ("q_proj", "k_proj", "v_proj", "query", "key", "value", "q", "k", "v"),
               "mlp_gate_up": ("gate_proj", "up_proj", "w1", "w3")}


def _no_match_message(spec: ModelSpec, tree: _Tree, config: LoraConfig, used: tuple[str, ...] | str,
                      converted: bool) -> str:
    hint_names = _module_names_hint(spec)
    if config.target_regex is not None:
        what = f"--target-regex {config.target_regex!r}"
    elif config.targets is None and converted:
        return (f"{spec.name} is a {spec.model_type} MoE model: with no --targets PEFT adapts nothing (its MoE "
                "conversion drops the default targets); pass --targets (e.g. all-linear or q_proj,v_proj) - "
                f"modules with weights are: {hint_names}")
    else:
        what = f"--targets {','.join(used) if not isinstance(used, str) else used!r}"
    hint = ""
    asked = list(config.targets or ())
    for role, names in _FUSED_INTO.items():
        if any(a in names for a in asked):
            fused = sorted({n.rpartition(".")[2] for n, m in tree.owners.items() if m.role == role})
            if fused:
                hint = f" ({spec.model_type} fuses them into {', '.join(fused)}: target that instead)"
                break
    if not hint:
        for a in asked:
            owner = next((t.module for t in spec.tensors if t.param_name == a and t.param_name != "weight"), None)
            if owner is not None:
                base = MOE_CONVERSION_BASE.get(spec.model_type)
                v4 = [old for old, new in MOE_TARGET_MAPPING[base].items() if new == a] if base else []
                alt = f" or --targets {','.join(v4)}" if v4 else ""
                hint = (f" ({a!r} is a parameter of {owner!r}, not a module: target it with "
                        f"target_parameters{alt})")
                break
    leaves = hint_names.split(", ")
    if not hint and asked and asked[0] not in leaves:
        hint = close_matches(asked[0], leaves)
    base = MOE_CONVERSION_BASE.get(spec.model_type)
    if base is not None:
        hint_names += f" (and, through PEFT's MoE conversion, {', '.join(MOE_TARGET_MAPPING[base])})"
    extra = ""
    if config.layers_to_transform is not None:
        extra = f" in layers {list(config.layers_to_transform)}"
    return f"{what} matches no module of {spec.name}{extra}{hint}; modules with weights are: {hint_names}"


def peft_line(trainable: int, total: int) -> str:
    """PEFT's ``print_trainable_parameters`` line, character for character."""
    return (f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}")
