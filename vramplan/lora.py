"""LoRA targeting exactly as PEFT does it, on a :class:`~vramplan.spec.ModelSpec`, without torch.

Mirrors peft 0.21 (``peft/tuners/tuners_utils.py``):

* ``check_target_module_exists``: a string ``target_modules`` is a ``re.fullmatch`` over the full module
  name; a list matches a module whose name equals an entry or ends with ``"." + entry``;
  ``layers_to_transform`` keeps modules whose first numbered segment (or ``layers_pattern``) is listed.
* ``_maybe_include_all_linear_layers``: ``all-linear`` is every ``nn.Linear``/``Conv1D`` except the output
  embedding (``model.get_output_embeddings()``).
* ``peft/utils/other.py::_set_trainable``: ``modules_to_save`` wraps every module whose name ends with an
  entry (plain ``str.endswith``) in a ``ModulesToSaveWrapper`` holding a trainable deep copy; modules it
  matches are never LoRA targets.
* Adapter sizes (``peft/tuners/lora/layer.py``): Linear/Conv1D ``lora_A`` (r, in) + ``lora_B`` (out, r);
  Embedding ``lora_embedding_A`` (r, num) + ``lora_embedding_B`` (dim, r); DoRA adds a magnitude vector of
  ``out_features`` (``peft/tuners/lora/dora.py``).
* Counts as ``PeftModel.get_nb_trainable_parameters`` returns them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import TargetError, close_matches
from .spec.model import ModelSpec, Module

#: peft/utils/constants.py TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (peft 0.21), our families.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn",), "bloom": ("query_key_value",), "opt": ("q_proj", "v_proj"),
    "gpt_neox": ("query_key_value",), "llama": ("q_proj", "v_proj"), "falcon": ("query_key_value",),
    "mistral": ("q_proj", "v_proj"), "mixtral": ("q_proj", "v_proj"), "phi": ("q_proj", "v_proj", "fc1", "fc2"),
    "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"), "gemma3_text": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"), "gptj": ("q_proj", "v_proj"),
    "gpt_neo": ("q_proj", "v_proj"), "stablelm": ("q_proj", "v_proj"), "mpt": ("Wqkv",),
}

ALL_LINEAR = "all-linear"
_LORA_TYPES = ("linear", "conv1d", "embedding")


@dataclass(frozen=True)
class LoraConfig:
    """The LoRA options that decide shapes (PEFT's ``LoraConfig`` defaults: r=8, alpha=8, dropout 0).

    ``targets=None`` with no ``target_regex`` means PEFT's default targets for the model type.
    """

    r: int = 8
    alpha: int = 8
    targets: tuple[str, ...] | None = None
    target_regex: str | None = None
    modules_to_save: tuple[str, ...] = ()
    layers_to_transform: tuple[int, ...] | None = None
    layers_pattern: str | None = None
    dora: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise TargetError(f"--rank must be an integer >= 1, got {self.r!r}")
        if self.target_regex is not None:
            try:
                re.compile(self.target_regex)
            except re.error as exc:
                raise TargetError(f"--target-regex {self.target_regex!r} does not compile: {exc}; "
                                  "write a Python regular expression matched against full module names") from None
        if not 0.0 <= float(self.dropout) < 1.0:
            raise TargetError(f"--lora-dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def all_linear(self) -> bool:
        return self.targets is not None and len(self.targets) == 1 and self.targets[0].lower() == ALL_LINEAR


@dataclass(frozen=True)
class Adapter:
    """One LoRA-wrapped module and its trainable parameters."""

    module: str
    module_type: str
    in_features: int
    out_features: int
    layer: int | None
    role: str
    lora_params: int        # r * (in + out)
    dora_params: int        # magnitude vector (DoRA only)

    @property
    def params(self) -> int:
        return self.lora_params + self.dora_params


@dataclass(frozen=True)
class SavedModule:
    """A ``modules_to_save`` copy: a full trainable duplicate of the module's weights."""

    module: str
    params: int
    role: str


@dataclass(frozen=True)
class LoraPlan:
    """What ``get_peft_model`` would do to a model, and PEFT's parameter counts."""

    config: LoraConfig
    adapters: tuple[Adapter, ...]
    saved: tuple[SavedModule, ...]
    base_params: int
    targets_used: tuple[str, ...] | str = field(default=())

    @property
    def adapter_params(self) -> int:
        return sum(a.params for a in self.adapters)

    @property
    def saved_params(self) -> int:
        return sum(s.params for s in self.saved)

    @property
    def trainable(self) -> int:
        return self.adapter_params + self.saved_params

    @property
    def total(self) -> int:
        """``all params`` as PEFT prints it: base + adapters + modules_to_save copies."""
        return self.base_params + self.trainable


def _matches_list(name: str, targets: tuple[str, ...] | frozenset[str]) -> bool:
    return name in targets or any(name.endswith("." + t) for t in targets)


def _layer_of(name: str, pattern: str | None) -> int | None:
    if pattern:
        m = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
    else:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    return int(m.group("idx")) if m else None


def _module_names_hint(spec: ModelSpec) -> str:
    leaves: list[str] = []
    for m in spec.modules():
        leaf = m.name.rpartition(".")[2]
        if m.module_type in _LORA_TYPES and leaf not in leaves:
            leaves.append(leaf)
    return ", ".join(leaves)


def plan_lora(spec: ModelSpec, config: LoraConfig) -> LoraPlan:
    """Resolve targets on ``spec`` the way ``get_peft_model`` does and count parameters.

    Raises:
        TargetError: no module matches, a matched module is of a type LoRA cannot wrap, or the model type has
            no PEFT default targets and none were given.
    """
    modules = list(spec.modules())
    head = spec.output_head

    # modules_to_save first: PEFT never puts an adapter inside a module it saves.
    saved: list[SavedModule] = []
    saved_names: list[str] = []
    for m in modules:
        if config.modules_to_save and any(m.name.endswith(t) for t in config.modules_to_save):
            n = sum(t.numel for t in m.tensors)
            saved.append(SavedModule(m.name, n, m.role))
            saved_names.append(m.name)
    if config.modules_to_save and not saved:
        raise TargetError(
            f"--modules-to-save {','.join(config.modules_to_save)!r} matches no module of {spec.name}; "
            f"modules with weights are: {_module_names_hint(spec)}")

    def excluded(name: str) -> bool:
        return any(re.match(rf"(^|.*\.){s}($|\..*)", name) for s in config.modules_to_save)

    if config.target_regex is not None:
        regex = re.compile(config.target_regex)
        chosen = [m for m in modules if regex.fullmatch(m.name)]
        used: tuple[str, ...] | str = config.target_regex
    else:
        if config.all_linear:
            targets = frozenset(m.name for m in modules if m.module_type in ("linear", "conv1d") and m.name != head)
            used = (ALL_LINEAR,)
        else:
            t = config.targets if config.targets is not None else DEFAULT_TARGETS.get(spec.model_type)
            if t is None:
                raise TargetError(
                    f"PEFT has no default LoRA targets for model_type {spec.model_type!r}: pass --targets "
                    f"(e.g. all-linear) — modules with weights are: {_module_names_hint(spec)}")
            targets = frozenset(t)
            used = tuple(t)
        chosen = [m for m in modules if _matches_list(m.name, targets)]
        if config.layers_to_transform is not None:
            keep = set(config.layers_to_transform)
            chosen = [m for m in chosen if _layer_of(m.name, config.layers_pattern) in keep]

    chosen = [m for m in chosen if not excluded(m.name)]
    if not chosen:
        what = (f"--target-regex {config.target_regex!r}" if config.target_regex is not None
                else f"--targets {','.join(used)!r}")
        hint = ""
        if config.targets:
            hint = close_matches(config.targets[0], _module_names_hint(spec).split(", "))
        raise TargetError(f"{what} matches no module of {spec.name}{hint}; "
                          f"modules with weights are: {_module_names_hint(spec)}")
    bad = [m for m in chosen if m.module_type not in _LORA_TYPES]
    if bad:
        raise TargetError(
            f"target module {bad[0].name!r} is a {bad[0].module_type} module, which LoRA cannot wrap; PEFT "
            "supports Linear, Conv1D and Embedding layers — narrow --targets/--target-regex")

    adapters = tuple(_adapter(m, config) for m in chosen)
    return LoraPlan(config, adapters, tuple(saved), spec.params_total, used)


def _adapter(m: Module, config: LoraConfig) -> Adapter:
    r = config.r
    lora = r * (m.in_features + m.out_features)
    dora = m.out_features if config.dora else 0
    return Adapter(m.name, m.module_type, m.in_features, m.out_features, m.layer, m.role, lora, dora)


def peft_line(trainable: int, total: int) -> str:
    """PEFT's ``print_trainable_parameters`` line, character for character."""
    return (f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}")
