"""Build the model of a setup on the ``meta`` device, the way a user script does.

``from_pretrained(dtype=...)`` → (``BitsAndBytesConfig``: ``replace_with_bnb_linear`` + quantization through
bitsandbytes' registered fake kernels) → ``prepare_model_for_kbit_training`` → ``get_peft_model`` →
gradient checkpointing (``activation_checkpointing_enable``, non-reentrant, as the HF Trainer sets it) →
``model.train()``. Nothing is allocated: every parameter is a meta tensor whose storage has the size the GPU
would allocate, which is all the tracker needs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SimulationError
from ..estimate.weights import nf4_kernel
from ..setup import Setup
from ..shapes.spec import ModelSpec

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

_PEFT_PREFIX = re.compile(r"^(base_model\.model\.)")


@dataclass
class Built:
    """A model ready to step, with what the tracker must know about its tensors."""

    model: Any
    config: Any
    num_layers: int
    layers: Any                          # the ModuleList of decoder layers
    trainable: list[torch.nn.Parameter]
    components: dict[int, str] = field(default_factory=dict)       # id(tensor) -> component, persistent state
    persistent: list[tuple[torch.Tensor, str, str]] = field(default_factory=list)  # (tensor, tag, component)
    attn_implementation: str = ""
    notes: list[str] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)              # base tensor name -> component


def hf_config_for(spec: ModelSpec, num_layers: int | None):
    """The transformers config of ``spec`` with ``num_layers`` decoder layers (per-layer lists truncated)."""
    from ..shapes.from_meta import hf_config

    cfg = hf_config(dict(spec.config), source=spec.name or "config")
    full = int(getattr(cfg, "num_hidden_layers", spec.num_layers) or spec.num_layers)
    if num_layers is not None and num_layers != full:
        for key, value in list(vars(cfg).items()):
            if isinstance(value, list) and len(value) == full and key != "architectures":
                setattr(cfg, key, value[:num_layers])
        cfg.num_hidden_layers = num_layers
    return cfg


def _quiet():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("peft").setLevel(logging.ERROR)
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def _instantiate(cfg, dtype: torch.dtype, attn: str, notes: list[str]):
    import copy

    import transformers

    want = {"eager": "eager", "sdpa": "sdpa"}.get(attn)
    if attn == "flash":
        from .kernels import FLASH_IMPLEMENTATION, register_flash

        register_flash()
        want = FLASH_IMPLEMENTATION
    pristine = copy.deepcopy(cfg)
    with torch.device("meta"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=want)
        except ValueError as exc:
            if want != "sdpa" or "does not support" not in str(exc):
                raise
            # what from_pretrained gives a user who does not ask: the model's default implementation
            model = transformers.AutoModelForCausalLM.from_config(pristine, dtype=dtype)
            notes.append(f"{type(model).__name__} does not support sdpa in transformers {transformers.__version__}; "
                         f"it runs {model.config._attn_implementation!r} attention (what from_pretrained picks)")
    return model


def _decoder_layers(model, n: int):
    best = None
    for _name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            best = mod
            break
    return best


def peft_config(setup: Setup, spec: ModelSpec):
    """The ``peft.LoraConfig`` a user writes for ``setup.lora``."""
    import peft

    lc = setup.lora
    assert lc is not None
    kwargs: dict[str, Any] = {**lc.peft_kwargs(), "task_type": "CAUSAL_LM"}
    return peft.LoraConfig(**kwargs)


def _quantize(model, setup: Setup, compute: torch.dtype) -> None:
    """``BitsAndBytesConfig`` → ``replace_with_bnb_linear`` (the skip list of ``get_keys_to_not_convert``) →
    quantize every weight on meta (``Params4bit._quantize`` / ``Int8Params._quantize`` run bitsandbytes'
    registered fake kernels)."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.base import get_keys_to_not_convert

    if setup.quant == "int8":
        qcfg = BitsAndBytesConfig(load_in_8bit=True)
    else:
        qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=setup.quant,
                                  bnb_4bit_use_double_quant=setup.double_quant, bnb_4bit_compute_dtype=compute)
    skip = get_keys_to_not_convert(model)
    replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=qcfg)
    for mod in model.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            w = mod.weight
            w.blocksize = setup.quant_blocksize
            w._quantize("meta")
            mod.quant_state = w.quant_state
            if mod.bias is not None:      # loaded from the checkpoint in the model dtype
                mod.bias = torch.nn.Parameter(mod.bias.data.to(compute), requires_grad=False)
        elif isinstance(mod, bnb.nn.Linear8bitLt):
            w = mod.weight
            w.data = w.data.to(torch.float16)
            w._quantize("meta")
            if mod.bias is not None:
                mod.bias = torch.nn.Parameter(mod.bias.data.to(compute), requires_grad=False)
    model.is_loaded_in_4bit = setup.quant in ("nf4", "fp4")
    model.is_loaded_in_8bit = setup.quant == "int8"
    model.quantization_method = "bitsandbytes"
    model.config.quantization_config = qcfg


def _quantize_torchao(model, setup: Setup, notes: list[str]) -> None:
    """The stack stores its nf4 base as torchao ``NF4Tensor`` s (torchtune: ``Stack.nf4_kernel == "torchao"``):
    the same Linears as bitsandbytes' replacement, each an :class:`~vramplan.simulate.torchao_nf4.NF4Linear` in
    the model's dtype; no ``BitsAndBytesConfig``, no quantization flags on the model (PEFT then wraps them as
    plain Linears, as torchtune's ``LoRALinear`` adds its adapters to ``linear_nf4``'s output)."""
    from transformers.quantizers.base import get_keys_to_not_convert

    from .torchao_nf4 import replace_linears

    try:
        replace_linears(model, get_keys_to_not_convert(model), setup.quant_blocksize)
    except ValueError as exc:
        raise SimulationError(f"{exc}: the stack's code cannot quantize this model; use --mode analytic") from exc
    notes.append("torchao NF4Tensor and linear_nf4 emulated on meta from torchao 0.10.0 dtypes/nf4tensor.py "
                 "(from_tensor's stored layout, get_original_weight's transient, LinearNF4's saved weight; "
                 "torchao is not imported)")


def build(spec: ModelSpec, setup: Setup, num_layers: int | None = None) -> Built:
    """Build ``spec`` with ``num_layers`` decoder layers (all by default) as ``setup`` prescribes.

    Raises:
        SimulationError: transformers cannot build the model, or PEFT refuses the LoRA config.
    """
    notes: list[str] = []
    n = num_layers if num_layers is not None else spec.num_layers
    cfg = hf_config_for(spec, n)
    base_dtype = TORCH_DTYPES[setup.compute_dtype if setup.quantized else setup.base_dtype]
    compute = TORCH_DTYPES[setup.compute_dtype]
    with _quiet():
        try:
            model = _instantiate(cfg, base_dtype, setup.attn, notes)
        except Exception as exc:  # noqa: BLE001 - any failure to build is one message for the user
            raise SimulationError(f"transformers cannot build {spec.name or spec.model_type!r} on the meta device "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                  "use --mode analytic") from exc
        if setup.quantized and nf4_kernel(setup) == "torchao":
            _quantize_torchao(model, setup, notes)
        elif setup.quantized:
            _quantize(model, setup, compute)
        if setup.training:
            if setup.quantized and setup.kbit_prep:
                from peft import prepare_model_for_kbit_training

                with _nf4_weights_aside(model):
                    model = prepare_model_for_kbit_training(
                        model, use_gradient_checkpointing=setup.grad_ckpt,
                        gradient_checkpointing_kwargs={"use_reentrant": False})
                _biases_as_after_first_forward(model, compute)
            elif setup.grad_ckpt:
                _enable_ckpt(model)
            if setup.method in ("lora", "qlora"):
                import peft

                try:
                    # adapters born on meta (no CPU init); fp32 adapters (PEFT's default
                    # autocast_adapter_dtype=True) under mixed precision or --adapter-dtype fp32, the model's
                    # dtype when everything runs in one dtype or --adapter-dtype compute
                    upcast = setup.adapter_weight_dtype == "fp32"
                    with torch.device("meta"):
                        model = peft.get_peft_model(model, peft_config(setup, spec), autocast_adapter_dtype=upcast)
                    if not upcast:
                        _adapters_in_base_dtype(model)
                except Exception as exc:  # noqa: BLE001
                    raise SimulationError(f"peft.get_peft_model refused the LoRA config: {exc}") from exc
                if setup.grad_ckpt and not (setup.quantized and setup.kbit_prep):
                    # HF Trainer(gradient_checkpointing=True) enables it on the PeftModel after wrapping
                    _enable_ckpt(model)
            else:
                for p in model.parameters():
                    p.requires_grad_(True)
            model.train()
        else:
            for p in model.parameters():
                p.requires_grad_(False)
            model.eval()
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = _decoder_layers(inner, n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    built = Built(model, inner.config, n, layers, trainable,
                  attn_implementation=str(getattr(inner.config, "_attn_implementation", "")), notes=notes)
    _persistent_state(built, spec)
    return built


@contextlib.contextmanager
def _nf4_weights_aside(model):
    """``--kbit-prep`` asked of a torchao stack, priced as the analytic path prices it: what
    ``prepare_model_for_kbit_training`` does to a 4-bit model (peft 0.21.2 utils/other.py: every 16-bit parameter
    but bitsandbytes' ``Params4bit`` cast to fp32; checkpointing and input gradients when the model says
    ``is_loaded_in_4bit``), the NF4 weights staying quantized: they are out of the model while it runs."""
    from .torchao_nf4 import NF4Linear

    held = [(m, m._parameters.pop("weight")) for m in model.modules() if isinstance(m, NF4Linear)]
    flag = held and not getattr(model, "is_loaded_in_4bit", False)
    if flag:
        model.is_loaded_in_4bit = True
    try:
        yield
    finally:
        for m, w in held:
            m._parameters["weight"] = w
        if flag:
            del model.is_loaded_in_4bit


def _biases_as_after_first_forward(model, compute: torch.dtype) -> None:
    """``bnb.nn.Linear4bit.forward`` casts its bias (fp32 after kbit preparation) to the compute dtype at the
    first call, for good; the measured step is a steady-state one, so do it now."""
    import bitsandbytes as bnb

    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit) and m.bias is not None and m.bias.dtype != compute:
            m.bias.data = m.bias.data.to(compute)


def _adapters_in_base_dtype(model) -> None:
    """PEFT moves new adapters to the dtype of a float base layer
    (``BaseTuner._move_adapter_to_device_of_base_layer``) but skips adapters on meta; without the fp32 upcast
    (``autocast_adapter_dtype=False``) they would be in the base dtype: do that move here."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in model.modules():
        if not isinstance(m, BaseTunerLayer):
            continue
        w = getattr(m.get_base_layer(), "weight", None)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            continue
        for name, p in m.named_parameters():
            if "lora_" in name and p.is_floating_point() and p.dtype != w.dtype:
                p.data = p.data.to(w.dtype)


def _enable_ckpt(model) -> None:
    fn = getattr(model, "activation_checkpointing_enable", None)
    if fn is not None:
        fn(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# ------------------------------------------------------------------------------------- what stays resident
def base_name(name: str) -> str:
    """A PEFT-wrapped parameter name -> the base model's name (``...q_proj.base_layer.weight`` -> ``...q_proj.weight``)."""
    name = _PEFT_PREFIX.sub("", name)
    return re.sub(r"(\.(base_layer|original_module))+\.", ".", name)


def param_component(name: str, p: torch.nn.Parameter, spec_roles: dict[str, str]) -> str:
    """The estimator's component for one parameter (``weights/linear``, ``adapters/lora``, ...)."""
    if ".lora_magnitude_vector" in name:
        return "adapters/dora_magnitude"
    if ".lora_" in name:
        return "adapters/lora"
    if ".modules_to_save." in name:
        return "adapters/modules_to_save"
    cls = type(p).__name__
    if cls in ("Params4bit", "Int8Params"):
        return "weights/quantized"
    comp = spec_roles.get(base_name(name))
    return comp or "weights/other"


def _persistent_state(built: Built, spec: ModelSpec) -> None:
    from ..estimate.weights import weight_component

    roles = built.roles = {t.name: weight_component(t) for t in spec.tensors}
    seen: set[int] = set()
    for name, p in built.model.named_parameters(remove_duplicate=True):
        comp = param_component(name, p, roles)
        _add(built, p, "parameter", comp, seen)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            for t in quant_state_tensors(qs):
                _add(built, t, "parameter", "weights/quant_constants", seen)
        scb = getattr(p, "SCB", None)
        if isinstance(scb, torch.Tensor):
            _add(built, scb, "parameter", "weights/quant_constants", seen)
    for t, comp in nf4_inner_tensors(built.model):
        _add(built, t, "parameter", comp, seen)
    for _name, b in built.model.named_buffers():
        _add(built, b, "buffer", "buffers/model", seen)


def nf4_inner_tensors(model):
    """(tensor, component) of every torchao NF4 weight's inner tensors (:mod:`vramplan.simulate.torchao_nf4`)."""
    from .torchao_nf4 import COMPONENT, NF4Linear

    for m in model.modules():
        if isinstance(m, NF4Linear):
            for name in COMPONENT:
                yield getattr(m, name), COMPONENT[name]


def _add(built: Built, t: torch.Tensor, tag: str, comp: str, seen: set[int]) -> None:
    try:
        key = id(t.untyped_storage())
    except (RuntimeError, NotImplementedError):
        return
    if key in seen:
        return
    seen.add(key)
    built.persistent.append((t, tag, comp))
    built.components[key] = comp


def quant_state_tensors(qs: Any):
    for attr in ("absmax", "code", "offset"):
        t = getattr(qs, attr, None)
        if isinstance(t, torch.Tensor):
            yield t
    s2 = getattr(qs, "state2", None)
    if s2 is not None:
        yield from quant_state_tensors(s2)
