"""Where every weight ends up and in which dtype: base weights, quantized data and constants, adapters.

Rules, from the code that runs:

* transformers ``from_pretrained(dtype="auto")`` loads the checkpoint dtype (bf16 for current models); the
  estimate uses the compute dtype of ``--precision`` for the frozen base, fp32 masters for ``full`` under
  mixed precision (HF Trainer ``bf16=True`` keeps fp32 weights and autocasts).
* bitsandbytes via ``BitsAndBytesConfig`` (``transformers/integrations/bitsandbytes.py::replace_with_bnb_linear``)
  swaps every ``nn.Linear`` except ``get_keys_to_not_convert`` (the output embedding, tied weights, the last
  module: ``transformers/quantizers/base.py``) for ``Linear4bit``/``Linear8bitLt``. Fused MoE expert
  parameters (transformers >= 5) and routers are not ``nn.Linear`` and stay unquantized.
* ``peft.prepare_model_for_kbit_training`` casts every fp16/bf16 parameter that is not ``Params4bit`` to
  fp32 (``peft/utils/other.py``): embeddings, norms, the head, biases, experts. ``Linear4bit.forward``
  casts its bias back to the compute dtype on the first call (``bitsandbytes/nn/modules.py``).
* PEFT creates LoRA weights in fp32 on a 16-bit base (``autocast_adapter_dtype=True``); ``modules_to_save``
  wraps a deep copy in the module's own dtype (``peft/utils/other.py::ModulesToSaveWrapper``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import BYTES, alloc, bnb_4bit_parts, bnb_int8_parts, torchao_nf4_parts
from ..lora import LoraPlan
from ..quantized import KBIT_UPCAST_SKIPPED, converted, linear_parts, setup_scheme, skipped
from ..setup import Setup
from ..shapes.spec import OUTSIDE_LANGUAGE_MODEL, ModelSpec, Tensor
from ..stacks import STACKS
from ..units import ceil_div


@dataclass(frozen=True)
class Placement:
    """One weight tensor as it sits on the GPU: allocations by component, dtype, trainability."""

    tensor: Tensor
    dtype: str                         # storage dtype; the --quant value for quantized weights
    quant: str                         # "none", "nf4", "fp4", "int8", "gptq", "awq", "fp8"
    trainable: bool
    parts: tuple[tuple[str, int], ...]  # (component, bytes) per CUDA allocation

    @property
    def allocated(self) -> int:
        return sum(alloc(b) for _, b in self.parts)

    @property
    def numel(self) -> int:
        return self.tensor.numel

    @property
    def compute_dtype(self) -> str:
        return self.dtype if self.quant == "none" else "bf16"


@dataclass(frozen=True)
class TrainableTensor:
    """A tensor the optimizer updates: its gradient and states follow its dtype."""

    name: str
    numel: int
    dtype: str
    component: str                     # "adapters/lora", "adapters/modules_to_save", "weights/..."
    shape: tuple[int, ...]
    frozen: bool = False               # takes memory but gets no gradient or optimizer state
    #: False: it requires grad but the optimizer does not hold it (LitGPT's StableEmbedding): a gradient that is
    #: never stepped nor zeroed, alive from the first backward on, and no optimizer state
    in_optimizer: bool = True


def nf4_kernel(setup: Setup) -> str:
    """The library that stores and runs the nf4 base weights: ``"torchao"`` (its ``NF4Tensor`` layout, and
    ``linear_nf4``, which saves the NF4 weight only) where the stack says so (``Stack.nf4_kernel``: torchtune 0.6.1
    builds q/k/v/o and the MLP as ``LoRALinear(quantize_base=True)`` or ``FrozenNF4Linear``, models/llama3/
    _component_builders.py:265-276; modules/peft/lora.py:73-79 ``to_nf4(linear.weight)``; modules/low_precision/
    nf4_linear.py:50-58, and has no bitsandbytes path), else ``"bnb"`` (``Linear4bit``). :func:`place_weights` and
    :class:`vramplan.estimate.layers.Program` take it as an argument."""
    return STACKS[setup.stack].nf4_kernel if setup.quant == "nf4" else "bnb"


#: ``--train-vision`` value -> the roles of a multimodal checkpoint that do not train (``vision.py``)
FROZEN_VISION: dict[str, tuple[str, ...]] = {"all": (), "projector": ("vision_tower",),
                                             "none": ("vision_tower", "vision_projector")}


def frozen_vision_roles(setup: Setup) -> tuple[str, ...]:
    """The roles ``--train-vision`` freezes (none when nothing trains)."""
    return FROZEN_VISION.get(setup.train_vision, ()) if setup.training else ()


def weight_component(t: Tensor) -> str:
    if t.role in OUTSIDE_LANGUAGE_MODEL:          # a multimodal checkpoint's vision tower and projector
        return f"weights/{t.role}"
    if t.role in ("embedding", "position_embedding"):
        return "weights/embeddings"
    if t.role == "replaced_embedding":
        return "weights/replaced_embedding"
    if t.role == "embedding_norm":
        return "weights/norms"
    if t.role == "lm_head":
        return "weights/lm_head"
    if t.role == "norm":
        return "weights/norms"
    if t.role == "bias":
        return "weights/biases"
    if t.module_type == "experts" or t.role.startswith("moe_expert"):
        return "weights/moe_experts"
    if t.module_type in ("linear", "conv1d"):
        return "weights/linear"
    return "weights/other"


def quantizable(t: Tensor, spec: ModelSpec, skip: tuple[str, ...] = (), quant: str = "nf4", head: bool = False) -> bool:
    """``replace_with_bnb_linear`` (and ``replace_with_awq_linear``, ``replace_with_fp8_linear``) converts this
    weight: an ``nn.Linear`` weight outside the skip list (the output head, ``skip``: ``llm_int8_skip_modules``,
    ``modules_to_not_convert``, matched as transformers' ``should_convert_module``). GPTQ converts only the Linear
    modules inside the decoder blocks (optimum ``GPTQQuantizer.convert_model``: ``block_name_to_quantize``).

    ``head=True`` (``--quant-head`` on a bitsandbytes base): the untied output head too, as Lightning's
    ``BitsandbytesPrecision`` replaces every ``nn.Linear`` not under ``ignore_modules`` (lightning 2.6.6
    fabric/plugins/precision/bitsandbytes.py:425-448 ``_convert_layers``; litgpt 0.5.13 finetune/lora.py:149 gives
    none). A tied head is the embedding matrix and stays as it is."""
    is_head = t.role == "lm_head" or t.module == spec.output_head
    return (t.module_type == "linear" and t.param_name == "weight" and (head or not is_head)
            and t.tied_to is None
            and not (skip and skipped(t.module, skip)) and (quant != "gptq" or t.layer is not None))


def fp32_upcast_target(t: Tensor) -> bool:
    """What axolotl's ``_convert_embedding_modules_dtype(torch.float32, before_kbit_train_or_finetune=True)``
    moves to fp32: every module whose name contains ``norm``, every module named ``*.gate`` (a MoE router), and the
    input embedding and output head (``get_linear_embedding_layers``: ``embed_tokens``/``lm_head``, per family)
    (axolotl 0.21.0 loaders/model.py:1446-1468, loaders/utils.py:325-335). A full fine-tune keeps them there unless
    ``should_convert_embedding_dtypes`` (an adapter, FSDP, an attention kernel other than eager/sdpa, or Cut
    Cross-Entropy: loaders/model.py:174-188, utils/schemas/enums.py:171) casts them back."""
    return t.role in ("embedding", "lm_head", "norm") or "norm" in t.module or t.module.endswith(".gate")


def place_weights(spec: ModelSpec, setup: Setup, kernel: str | None = None) -> list[Placement]:
    """Every non-tied weight tensor of the base model with its dtype and allocations; ``kernel``: the nf4
    library (:func:`nf4_kernel`, its default): ``"torchao"`` stores each nf4 weight as an ``NF4Tensor`` of the
    compute dtype (:func:`vramplan.dtypes.torchao_nf4_parts`; torchtune builds the model under
    ``set_default_dtype(bf16)``, recipes/lora_finetune_single_device.py:431)."""
    kernel = nf4_kernel(setup) if kernel is None else kernel
    out: list[Placement] = []
    quant = setup.quant if setup.quantized else "none"
    scheme = setup_scheme(setup, spec.config) if setup.quantized else None
    skip = scheme.skip if scheme is not None else ()
    # peft prepare_model_for_kbit_training leaves a GPTQ model's dtypes alone (KBIT_UPCAST_SKIPPED)
    kbit_prep = setup.quantized and setup.training and setup.kbit_prep and quant not in KBIT_UPCAST_SKIPPED
    quantized_modules = set()
    frozen_vision = frozen_vision_roles(setup)
    for t in spec.tensors:
        if t.tied_to is not None:
            continue
        comp = weight_component(t)
        if quant != "none" and quantizable(t, spec, skip, quant, head=setup.quant_head and setup.bnb) \
                and (scheme is None or not scheme.only or converted(t.module, scheme)):
            quantized_modules.add(t.module)
            if scheme is not None and not setup.bnb:
                out.append(Placement(t, quant, quant, False, tuple(linear_parts(scheme, t.shape[0], t.shape[1]))))
                continue
            if quant == "nf4" and kernel == "torchao":
                p = torchao_nf4_parts(t.numel, setup.compute_dtype, setup.quant_blocksize)
                parts = [("weights/quantized", p.pop("quantized_data"))] + \
                    [("weights/quant_constants", b) for b in p.values()]
            elif quant in ("nf4", "fp4"):
                p = bnb_4bit_parts(t.numel, setup.quant_blocksize, setup.double_quant)
                parts = [("weights/quantized", p.pop("packed"))] + [("weights/quant_constants", b) for b in p.values()]
            else:
                p = bnb_int8_parts(t.shape[0], t.shape[1])
                parts = [("weights/quantized", p["packed"]), ("weights/quant_constants", p["scb"])]
            out.append(Placement(t, quant, quant, False, tuple(parts)))
            continue
        if setup.training and setup.fp32_norms_embeddings and fp32_upcast_target(t):
            dtype, trainable = "fp32", setup.method == "full" and t.role not in frozen_vision
        elif setup.method == "full" and t.role not in frozen_vision:
            dtype, trainable = setup.trainable_dtype, True
        elif setup.method == "full":     # --train-vision: a frozen part stays in the base dtype, untrained
            # ... or in the checkpoint's 16-bit dtype where the stack upcasts only what trains (LLaMA-Factory)
            dtype, trainable = (setup.compute_dtype if STACKS[setup.stack].frozen_in_checkpoint_dtype
                                else setup.base_dtype), False
        else:
            dtype, trainable = setup.base_dtype, False
            if kbit_prep and dtype in ("bf16", "fp16"):
                dtype = "fp32"
            if quant in ("nf4", "fp4") and t.role == "bias" and t.module in quantized_modules:
                dtype = setup.compute_dtype if setup.compute_dtype != "fp32" else "fp32"
            if quant in ("gptq", "awq") and t.role == "bias" and t.module in quantized_modules:
                dtype = "fp16"       # an fp16 buffer of the quant linear (register_buffer("bias", fp16)): no upcast
        out.append(Placement(t, dtype, "none", trainable, ((comp, t.numel * BYTES[dtype]),)))
    if stable_embedding(setup):
        out += _stable_embedding_placements(spec, out)
    return out


def stable_embedding(setup: Setup) -> bool:
    """Whether the stack swaps a quantized base's input embedding for a bitsandbytes ``StableEmbedding`` after
    the optimizer is built (``Stack.stable_embedding``: litgpt 0.5.13 finetune/lora.py:217-230)."""
    return STACKS[setup.stack].stable_embedding and setup.training and setup.quantized and setup.method != "full"


def _stable_embedding_placements(spec: ModelSpec, placed: list[Placement]) -> list[Placement]:
    """What the swap adds next to the (new) embedding weight, which keeps the old one's placement (``weight.
    copy_(old)`` then ``.to(old dtype, device)``, litgpt 0.5.13 finetune/lora.py:224-228): the replaced weight,
    which ``instantiate_bnb_optimizer(optimizer, model.parameters())``'s ``param_groups`` still reference
    (finetune/lora.py:217-220: built before the swap), and ``StableEmbedding``'s ``LayerNorm(embedding_dim)``
    weight and bias (bitsandbytes 0.50.2 nn/modules.py ``StableEmbedding.__init__``: ``torch.nn.LayerNorm(
    embedding_dim, device=device)``), moved to the embedding's dtype by the same ``.to``. A tied embedding is the
    head's weight too: the head keeps it, no extra copy is counted for it."""
    out: list[Placement] = []
    for p in placed:
        t = p.tensor
        if t.role != "embedding":
            continue
        comp_bytes = t.numel * BYTES[p.dtype]
        if not spec.tie_word_embeddings:
            kept = Tensor(f"{t.module}.replaced.weight", t.shape, "replaced_embedding", t.module_type)
            out.append(Placement(kept, p.dtype, "none", False, (("weights/replaced_embedding", comp_bytes),)))
        hidden = t.shape[-1]
        for name in ("weight", "bias"):
            n = Tensor(f"{t.module}.norm.{name}", (hidden,), "embedding_norm", "norm")
            out.append(Placement(n, p.dtype, "none", False, (("weights/norms", hidden * BYTES[p.dtype]),)))
    return out


def stable_embedding_tensors(placements: list[Placement] | tuple[Placement, ...],
                             setup: Setup) -> list[TrainableTensor]:
    """The swapped-in ``StableEmbedding``'s parameters: its weight and its LayerNorm's weight and bias require grad
    (``nn.Embedding`` and ``nn.LayerNorm`` parameters do by default; the swap runs after
    ``mark_only_lora_as_trainable``, litgpt 0.5.13 finetune/lora.py:210-230) but are not in the optimizer
    (``in_optimizer=False``): each gets a gradient in its dtype that ``optimizer.zero_grad()`` never frees."""
    if not stable_embedding(setup):
        return []
    return [TrainableTensor(p.tensor.name, p.numel, p.dtype, weight_component(p.tensor), p.tensor.shape,
                            in_optimizer=False)
            for p in placements if p.tensor.role in ("embedding", "embedding_norm")]


def adapter_tensors(plan: LoraPlan | None, placements: list[Placement], setup: Setup) -> list[TrainableTensor]:
    """LoRA A/B (module and ParamWrapper adapters), DoRA magnitudes and ``modules_to_save`` copies, in the
    dtypes PEFT gives them. Adapters frozen inside a saved module still take memory (``frozen=True``)."""
    if plan is None:
        return []
    dtype = setup.adapter_weight_dtype
    placed = {p.tensor.name: p for p in placements}
    out: list[TrainableTensor] = []
    for a in plan.adapters:
        k = a.rank
        dtype = setup.adapter_weight_dtype
        if a.parameter is not None and dtype != "fp32":
            # a ParamWrapper adapter takes the wrapped parameter's dtype (fp32 after kbit preparation)
            wrapped = placed.get(f"{a.module}.{a.parameter}")
            if wrapped is not None and wrapped.quant == "none":
                dtype = wrapped.dtype
        a_name, b_name = ("lora_embedding_A", "lora_embedding_B") if a.module_type == "embedding" \
            else ("lora_A", "lora_B")
        out.append(TrainableTensor(f"{a.name}.{a_name}", k * a.in_features, dtype, "adapters/lora",
                                   (k, a.in_features), a.frozen))
        out.append(TrainableTensor(f"{a.name}.{b_name}", a.out_features * k, dtype, "adapters/lora",
                                   (a.out_features, k), a.frozen))
        if a.dora_params:
            out.append(TrainableTensor(f"{a.name}.lora_magnitude_vector", a.dora_params, dtype,
                                       "adapters/dora_magnitude", (a.dora_params,), a.frozen))
        if a.bias_params:        # lora_bias: nn.Linear(r, out, bias=True) (peft/tuners/lora/layer.py:264)
            out.append(TrainableTensor(f"{a.name}.{b_name}.bias", a.bias_params, dtype, "adapters/lora",
                                       (a.bias_params,), a.frozen))
    for t in plan.token_adapters:
        # TrainableTokensLayer: a trainable delta and a buffer of the original rows, both (rows, dim) in the
        # adapter dtype (autocast_adapter_dtype casts the layer's ParameterDict and BufferDict; measured fp32 on
        # a bf16 base, peft 0.21.2); a tied head shares the embedding's
        if not t.tied:
            out.append(TrainableTensor(f"{t.module}.token_adapter.trainable_tokens_delta", t.params,
                                       setup.adapter_weight_dtype, "adapters/trainable_tokens", (t.rows, t.dim)))
            out.append(TrainableTensor(f"{t.module}.token_adapter.trainable_tokens_original", t.params,
                                       setup.adapter_weight_dtype, "adapters/trainable_tokens", (t.rows, t.dim),
                                       frozen=True))
    by_name = {p.tensor.name: p for p in placements}
    for s in plan.saved:
        names = s.tensors or tuple(n for n in by_name if n.startswith(s.module + "."))
        for n in names:
            p = by_name.get(n)
            if p is None:
                continue
            d = p.dtype if p.quant == "none" else setup.compute_dtype
            out.append(TrainableTensor(f"{s.module}.modules_to_save.{n[len(s.module) + 1:]}", p.numel, d,
                                       "adapters/modules_to_save", p.tensor.shape))
        if s.adapter_params:
            out.append(TrainableTensor(f"{s.module}.modules_to_save.adapters", s.adapter_params, dtype,
                                       "adapters/modules_to_save", (s.adapter_params,)))
    return out


def trainable_tensors(placements: list[Placement], adapters: list[TrainableTensor],
                      plan: LoraPlan | None = None) -> list[TrainableTensor]:
    """Everything the optimizer steps: trainable base weights (full), base biases LoRA's ``bias`` option trains
    (in their placed dtype; their weight bytes are the placement's) and adapters."""
    biases = set(plan.trainable_biases) if plan is not None else set()
    out = [TrainableTensor(p.tensor.name, p.numel, p.dtype, weight_component(p.tensor), p.tensor.shape)
           for p in placements if p.trainable or p.tensor.name in biases]
    return out + [a for a in adapters if not a.frozen]


def head_component(trainables: tuple[TrainableTensor, ...] | list[TrainableTensor]) -> str:
    """The component whose gradient backward produces first: the output head's (the embedding's, when tied)."""
    return "weights/lm_head" if any(t.component == "weights/lm_head" for t in trainables) else "weights/embeddings"


def gradient_bytes(tensors: tuple[TrainableTensor, ...] | list[TrainableTensor], *, component: str | None = None,
                   width: int | None = None) -> int:
    """Allocator bytes of one gradient per tensor the optimizer holds, in its dtype (or ``width`` B per element), of
    ``component`` only when given (:func:`unstepped_gradient_bytes`: those it does not hold)."""
    return sum(alloc(t.numel * (width or BYTES[t.dtype])) for t in tensors
               if t.in_optimizer and (component is None or t.component == component))


def stepped(tensors: tuple[TrainableTensor, ...] | list[TrainableTensor]) -> tuple[TrainableTensor, ...]:
    """The tensors the optimizer holds: those it keeps states for and steps."""
    return tuple(t for t in tensors if t.in_optimizer)


def unstepped_gradient_bytes(tensors: tuple[TrainableTensor, ...] | list[TrainableTensor]) -> int:
    """Allocator bytes of the gradients of tensors that require grad but are not in the optimizer: made by the first
    backward, accumulated into by every later one and never zeroed, so alive in every phase of every later step."""
    return sum(alloc(t.numel * BYTES[t.dtype]) for t in tensors if not t.in_optimizer)


# ----------------------------------------------------------------------------------------- explanations
def weight_formula(comp: str, ps: list[Placement], setup: Setup) -> str:
    """The explanation of a ``weights/*`` component placed as ``ps``."""
    n = sum(p.numel for p in ps)
    dtypes = sorted({p.dtype for p in ps})
    if comp in ("weights/quantized", "weights/quant_constants") and not setup.bnb:
        return checkpoint_formula(comp, ps, setup)
    if comp == "weights/quantized":
        if setup.quant == "int8":
            return f"{n:,} int8 elements (bitsandbytes Int8Params), 1 B each, in {len(ps)} Linear weights"
        return (f"{n:,} elements of {len(ps)} Linear weights packed two per byte: ceil(n/2) B each "
                "(bitsandbytes/functional.py quantize_4bit)")
    if comp == "weights/quant_constants":
        if setup.quant == "int8":
            return "one fp32 row scale (SCB) per output row (bitsandbytes Int8Params)"
        blocks = sum(ceil_div(p.numel, setup.quant_blocksize) for p in ps)
        if setup.double_quant:
            return (f"{blocks:,} blocks of {setup.quant_blocksize}: uint8 absmax (1 B each) + fp32 nested absmax per "
                    "256 blocks + 1 KiB nested code + 4 B offset + 64 B code per weight, each allocation rounded "
                    "to 512 B (double quantization, QLoRA §2)")
        return f"{blocks:,} blocks of {setup.quant_blocksize}: fp32 absmax (4 B each) + 64 B code per weight"
    return f"{n:,} elements in {', '.join(dtypes)} ({len(ps)} tensors, each allocation rounded to 512 B)"


def checkpoint_formula(comp: str, ps: list[Placement], setup: Setup) -> str:
    """The explanation of a GPTQ/AWQ/FP8 checkpoint's ``weights/quantized`` or ``weights/quant_constants``."""
    n = sum(p.numel for p in ps)
    q = setup.quant
    if comp == "weights/quantized":
        return {"gptq": f"{n:,} weights of {len(ps)} Linear modules, {setup.quant_bits} bits packed into int32 "
                        "qweight [ceil(in*bits/32), out] (gptqmodel GPTQQuantLinear._register_gptq_buffers)",
                "awq": f"{n:,} weights of {len(ps)} Linear modules, 4 bits packed into int32 qweight (gptqmodel "
                       "AWQuantLinear / AutoAWQ WQLinear)",
                "fp8": f"{n:,} float8_e4m3fn weights of {len(ps)} Linear modules, 1 B each (transformers "
                       "FP8Linear)"}[q]
    return {"gptq": f"per group of {setup.quant_group} input rows: int32 qzeros + fp16 scales; int32 g_idx per input "
                    "row (gptqmodel GPTQQuantLinear), each allocation rounded to 512 B",
            "awq": f"per group of {setup.quant_group} input rows: int32 qzeros + fp16 scales (gptqmodel AWQuantLinear), "
                   "each allocation rounded to 512 B",
            "fp8": "fp32 weight_scale_inv per 128x128 block (or per tensor/channel as the checkpoint says; "
                   "transformers FP8Linear), each allocation rounded to 512 B"}[q]


def adapter_formula(comp: str, adapters: tuple[TrainableTensor, ...], plan: LoraPlan | None) -> str:
    """The explanation of an ``adapters/*`` component."""
    ts = [t for t in adapters if t.component == comp]
    n = sum(t.numel for t in ts)
    dt = ", ".join(sorted({t.dtype for t in ts}))
    if comp == "adapters/lora" and plan is not None:
        return (f"r={plan.config.r} × (in + out) for {len(plan.adapters)} adapted modules = {n:,} params in "
                f"{dt} (PEFT keeps adapters in fp32 on a 16-bit base: autocast_adapter_dtype)")
    return f"{n:,} params in {dt}"
