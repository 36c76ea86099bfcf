"""ModelSpec: a model described as data — every weight tensor with its name, shape and role.

Two builders produce it and must agree tensor for tensor: :func:`vramplan.shapes.from_config.spec_from_config`
(pure Python, per family, no torch) and :func:`vramplan.shapes.from_meta.spec_from_meta` (any architecture
transformers knows, instantiated on the ``meta`` device). Tensor names are the names transformers gives the
parameters (``model.layers.0.self_attn.q_proj.weight``), so LoRA targeting can match them as PEFT does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

#: What a weight tensor does. Fused projections have their own role (``attn_qkv``, ``mlp_gate_up``).
Role = Literal[
    "embedding",            # token embedding
    "position_embedding",   # learned absolute positions (gpt2 wpe, opt embed_positions)
    "attn_q", "attn_k", "attn_v", "attn_o",
    "attn_qkv",             # fused q/k/v (phi3 qkv_proj, bloom/falcon/neox query_key_value, baichuan W_pack, gpt2 c_attn)
    "mlp_gate", "mlp_up", "mlp_down",
    "mlp_gate_up",          # fused gate+up (phi3 gate_up_proj)
    "moe_router",           # the router / gate Linear of a sparse MoE block
    "moe_experts_gate_up",  # fused expert weights [E, 2*I, H] (transformers >= 5)
    "moe_experts_down",     # fused expert weights [E, H, I]
    "moe_expert_gate", "moe_expert_up", "moe_expert_down",   # per-expert Linear modules (older layouts)
    "shared_expert_gate", "shared_expert_up", "shared_expert_down", "shared_expert_router",
    "norm",                 # RMSNorm/LayerNorm weight (and LayerNorm bias)
    "bias",                 # the bias of a Linear/Conv1D
    "lm_head",              # output projection
    "vision_tower",         # any tensor of a multimodal checkpoint's vision encoder (SigLIP, CLIP, Qwen2-VL visual)
    "vision_projector",     # the vision-to-text projector (multi_modal_projector, Qwen2-VL visual.merger)
    "ssm_in", "ssm_x", "ssm_dt", "ssm_out",   # Mamba mixer Linears: in_proj, x_proj, dt_proj, out_proj
    "ssm_conv",             # the mixer's depthwise nn.Conv1d (weight and bias)
    "ssm_param",            # the mixer's bare A_log / D / dt_bias parameters
    "other",
]

#: Roles outside the language model of a multimodal checkpoint (no decoder layer, no LoRA default target).
OUTSIDE_LANGUAGE_MODEL = ("vision_tower", "vision_projector")

#: encoder-decoder families whose training steps are planned (``vramplan/estimate/seq2seq.py``); other
#: encoder-decoder models keep their :attr:`ModelSpec.plan_refusal`
PLANNED_SEQ2SEQ = ("t5", "mt5", "bart")

#: The kind of module that owns the tensor; decides what PEFT can wrap and what bitsandbytes quantizes.
ModuleType = Literal["linear", "conv1d", "embedding", "norm", "experts", "other"]


@dataclass(frozen=True, slots=True)
class Tensor:
    """One weight tensor of the model.

    Attributes:
        name: full parameter name as transformers names it (``model.layers.0.mlp.up_proj.weight``).
        shape: its shape. Linear weights are ``(out_features, in_features)``; transformers' ``Conv1D`` (gpt2)
            stores ``(in_features, out_features)``.
        role: what it does (:data:`Role`).
        module_type: the kind of module that owns it (:data:`ModuleType`).
        layer: the decoder layer index, ``None`` outside the layer stack.
        tied_to: for a tied weight (``lm_head.weight`` with tied embeddings), the name of the tensor whose
            storage it shares; it is not counted again.
    """

    name: str
    shape: tuple[int, ...]
    role: str
    module_type: str
    layer: int | None = None
    tied_to: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def module(self) -> str:
        """The owning module's name (``model.layers.0.mlp.up_proj``)."""
        return self.name.rpartition(".")[0]

    @property
    def param_name(self) -> str:
        """The attribute name inside the module (``weight``, ``bias``, ``gate_up_proj``)."""
        return self.name.rpartition(".")[2]


@dataclass(frozen=True, slots=True)
class Module:
    """A module that owns weights: what PEFT matches against ``target_modules``."""

    name: str
    module_type: str
    in_features: int
    out_features: int
    has_bias: bool
    layer: int | None
    role: str
    tensors: tuple[Tensor, ...]


@dataclass(frozen=True)
class ModelSpec:
    """The exact shapes of a model: a causal language model, the checkpoint's own multimodal class (its vision
    tower and projector as their own roles), an encoder-decoder model (counted, not planned: ``plan_refusal``).

    ``tensors`` holds every weight tensor in transformers' ``named_modules`` order. Scalar fields summarize
    the architecture for the estimator. Two specs compare equal when all of these agree; ``config`` (the raw
    config dict) and ``origin`` (which builder made it) are not compared.
    """

    name: str
    model_type: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    hidden_act: str
    mlp_gated: bool
    norm_type: Literal["rmsnorm", "layernorm"]
    max_position_embeddings: int | None
    sliding_window: int | None
    num_experts: int
    experts_per_token: int
    moe_intermediate_size: int
    tensors: tuple[Tensor, ...]
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False, hash=False)
    origin: str = field(default="config", compare=False)
    #: what every plan of this model must say it does not model (a multimodal checkpoint's vision tower
    #: activations, a state-space mixer's activations); one sentence each
    notes: tuple[str, ...] = ()
    #: why a memory plan cannot be made for this model although its parameters are counted exactly (an
    #: encoder-decoder model); ``None`` when it can
    plan_refusal: str | None = None

    def __post_init__(self) -> None:
        # the on-disk spec cache (cache.py) stores tuples as JSON lists
        if not isinstance(self.notes, tuple):
            object.__setattr__(self, "notes", tuple(self.notes))

    # ----------------------------------------------------------------------------------------- counts
    @property
    def params_total(self) -> int:
        """Unique parameters, as ``sum(p.numel() for p in model.parameters())`` counts them."""
        return sum(t.numel for t in self.tensors if t.tied_to is None)

    def params_by_role(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            if t.tied_to is None:
                out[t.role] = out.get(t.role, 0) + t.numel
        return out

    def params_by_component(self) -> dict[str, int]:
        """Unique parameters by part of the checkpoint: ``language_model`` and, for a multimodal one,
        ``vision_tower`` and ``vision_projector`` (the roles in :data:`OUTSIDE_LANGUAGE_MODEL`)."""
        out = {"language_model": 0}
        for t in self.tensors:
            if t.tied_to is None:
                part = t.role if t.role in OUTSIDE_LANGUAGE_MODEL else "language_model"
                out[part] = out.get(part, 0) + t.numel
        return out

    def require_plannable(self, training: bool = True) -> None:
        """Raise the one-line :class:`~vramplan.errors.ConfigError` of :attr:`plan_refusal`, if any: what a
        memory estimate calls before it models anything. The encoder-decoder families of
        :data:`PLANNED_SEQ2SEQ` are planned for training (``vramplan/estimate/seq2seq.py``), not for inference."""
        if self.plan_refusal is None:
            return
        from ..errors import ConfigError

        if self.model_type in PLANNED_SEQ2SEQ:
            if training:
                return
            raise ConfigError(f"{self.name or self.model_type}: {self.architecture} is an encoder-decoder model: "
                              "vramplan plans its training steps (--seq source, --target-seq target tokens) but not "
                              "inference (the encoder pass, the cross-attention cache and the decoder's generate "
                              "loop are not modelled)")
        raise ConfigError(f"{self.name or self.model_type}: {self.plan_refusal}")

    @property
    def is_multimodal(self) -> bool:
        return any(t.role in OUTSIDE_LANGUAGE_MODEL for t in self.tensors)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    # ---------------------------------------------------------------------------------------- modules
    def modules(self) -> Iterator[Module]:
        """Modules that own weights, in order, with Linear/Conv1D in/out features."""
        return iter(self._modules)

    @cached_property
    def _modules(self) -> tuple[Module, ...]:
        return tuple(self._build_modules())

    def _build_modules(self) -> Iterator[Module]:
        groups: dict[str, list[Tensor]] = {}
        for t in self.tensors:
            groups.setdefault(t.module, []).append(t)
        for name, ts in groups.items():
            main = next((t for t in ts if t.role != "bias"), ts[0])
            mtype = main.module_type
            in_f = out_f = 0
            if mtype == "linear" and len(main.shape) == 2:
                out_f, in_f = main.shape
            elif mtype == "conv1d" and len(main.shape) == 2:
                in_f, out_f = main.shape
            elif mtype == "embedding" and len(main.shape) == 2:
                in_f, out_f = main.shape   # num_embeddings, embedding_dim (PEFT's convention for LoRA A/B)
            has_bias = any(t.role == "bias" or (t.module_type != "norm" and t.param_name == "bias") for t in ts)
            yield Module(name, mtype, in_f, out_f, has_bias, main.layer, main.role, tuple(ts))

    def tensor(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def layer_tensors(self, layer: int) -> tuple[Tensor, ...]:
        return tuple(t for t in self.tensors if t.layer == layer)

    @cached_property
    def output_head(self) -> str | None:
        """Name of the output-embedding module (``lm_head``), which PEFT's ``all-linear`` leaves out."""
        for t in reversed(self.tensors):
            if t.role == "lm_head":
                return t.module
        return None
