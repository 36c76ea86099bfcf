"""Build the model a user would train, on the target device, in the target dtype.

Real weights when MODEL is a local folder with ``*.safetensors``; otherwise the exact architecture from the
config with random weights — memory does not depend on their values.

How random weights are loaded (and why): the model goes through the user's own call,
``AutoModelForCausalLM.from_pretrained(..., quantization_config=BitsAndBytesConfig(...), dtype=...,
device_map={"": device}, attn_implementation=...)``, with ``state_dict=`` a lazy *random checkpoint*
(:class:`RandomCheckpoint`) instead of files. transformers 5 loads a state dict through the same
``convert_and_load_state_dict_in_model`` as safetensors shards, whose values are lazy slices materialised by
``tensor[...]``; our values are lazy too, and materialise a random tensor directly on the device in the
load dtype. So the bitsandbytes quantizer replaces ``nn.Linear`` with ``Linear4bit``/``Linear8bitLt``
(``replace_with_bnb_linear``), quantizes each weight on the device (``Bnb4bitQuantize``/``Bnb8bitQuantize``),
ties weights, keeps ``_keep_in_fp32_modules``, exactly as it does for a downloaded checkpoint. With on-the-fly
quantization transformers loads tensors one at a time, so the load peak is one full-precision tensor on top
of what is already quantized — as for the user. Alternatives rejected: ``save_pretrained`` of a random model
then ``from_pretrained(tmpdir)`` needs the whole bf16 model in host RAM and on disk (140 GB for 70B);
``from_pretrained(state_dict={})`` leaves the missing Linear4bit weights unquantized (bf16) — wrong memory;
calling ``replace_with_bnb_linear`` by hand skips the rest of the loader (tying, fp32 modules, hooks).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import SetupError
from ..estimate.overhead import uses_bitsandbytes

ATTN_IMPLEMENTATION = {"sdpa": "sdpa", "flash": "flash_attention_2", "eager": "eager"}
TORCH_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: strategies that shard parameters (4-bit weights are then stored in the compute dtype, see quantization_config)
SHARDS_PARAMETERS = ("fsdp", "fsdp-grad-op", "zero3")


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, TORCH_DTYPE[name])


def has_weights(path: str) -> bool:
    """``path`` is a local model folder with safetensors weights."""
    return os.path.isdir(path) and bool(glob.glob(os.path.join(path, "*.safetensors")))


class RandomTensor:
    """A lazy checkpoint entry: shape and dtype now, a random tensor on ``device`` when sliced with ``[...]``.

    Mimics the safetensors slice transformers puts in a state dict (``get_shape``/``get_dtype``/``[...]``).
    Norm weights are ones and biases zeros so that the forward stays finite; the rest is N(0, std).
    """

    def __init__(self, name: str, shape: tuple[int, ...], dtype: Any, device: Any, std: float) -> None:
        self.name = name
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device
        self.std = std

    def get_shape(self) -> list[int]:
        return list(self.shape)

    def get_dtype(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def __getitem__(self, index: Any) -> Any:
        import torch

        leaf = self.name.rpartition(".")[2]
        with torch.no_grad():
            if leaf == "bias":
                t = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
            elif len(self.shape) == 1 or "norm" in self.name.lower():
                t = torch.ones(self.shape, dtype=self.dtype, device=self.device)
            else:
                t = torch.empty(self.shape, dtype=self.dtype, device=self.device).normal_(0.0, self.std)
        return t[index]


class RandomCheckpoint(dict):
    """``{parameter name: RandomTensor}`` for every parameter and persistent buffer of a meta model.

    Names come from ``named_parameters()`` (which lists a tied weight once, as ``save_pretrained`` does).
    """

    def __init__(self, meta_model: Any, *, dtype: Any, device: Any, std: float = 0.02) -> None:
        super().__init__()
        for name, p in meta_model.named_parameters():
            self[name] = RandomTensor(name, tuple(p.shape), dtype, device, std)
        non_persistent: set[str] = set()
        for mod_name, mod in meta_model.named_modules():
            for b in getattr(mod, "_non_persistent_buffers_set", ()):
                non_persistent.add(f"{mod_name}.{b}" if mod_name else b)
        for name, b in meta_model.named_buffers():
            if name not in non_persistent and b.is_floating_point():
                self[name] = RandomTensor(name, tuple(b.shape), dtype, device, std)


@dataclass
class BuiltModel:
    """The model ready for the loop, and how it was made."""

    model: Any
    weights: str                 # "real" (from safetensors) or "random"
    trainable_params: int
    total_params: int
    notes: list[str]
    bytes_by_dtype: dict[str, int]      # parameter storage as built, e.g. {"uint8": ..., "float32": ...}


def quantization_config(setup: Any) -> Any:
    """The ``BitsAndBytesConfig`` a user passes for ``setup.quant``, or ``None``."""
    if not setup.quantized:
        return None
    from transformers import BitsAndBytesConfig

    skip = {"llm_int8_skip_modules": list(setup.quant_skip)} if setup.quant_skip else {}
    if setup.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, **skip)
    extra: dict[str, Any] = dict(skip)
    if setup.strategy in SHARDS_PARAMETERS:
        # FSDP-QLoRA / ZeRO-3 recipe: the packed 4-bit data in a floating dtype so that the engine can shard it
        # (the estimator assumes it: docs/multi-gpu.md, FSDP-QLoRA)
        extra["bnb_4bit_quant_storage"] = torch_dtype(setup.compute_dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=setup.quant,
                              bnb_4bit_use_double_quant=setup.double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(setup.compute_dtype), **extra)


@contextlib.contextmanager
def _bnb_blocksize(blocksize: int) -> Iterator[None]:
    """Quantize 4-bit weights with ``blocksize`` (transformers has no option for it; bitsandbytes' default is 64).

    ``Bnb4bitQuantize.convert`` builds each ``Params4bit`` from the attributes of the placeholder weight that
    ``replace_with_bnb_linear`` created, so setting ``blocksize`` on those placeholders right after the
    replacement is enough. The patch is undone on exit.
    """
    if blocksize == 64:
        yield
        return
    import bitsandbytes as bnb
    from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer

    original = Bnb4BitHfQuantizer._process_model_before_weight_loading

    def patched(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, model, *args, **kwargs)
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.weight.blocksize = blocksize
        return out

    Bnb4BitHfQuantizer._process_model_before_weight_loading = patched  # type: ignore[method-assign]
    try:
        yield
    finally:
        Bnb4BitHfQuantizer._process_model_before_weight_loading = original  # type: ignore[method-assign]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading report, progress bars and deprecation chatter for the block."""
    import transformers

    tl = transformers.utils.logging
    level = tl.get_verbosity()
    bars = tl.is_progress_bar_enabled()
    tl.set_verbosity_error()
    tl.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tl.set_verbosity(level)
        if bars:
            tl.enable_progress_bar()


def peft_lora_config(lora: Any) -> Any:
    """Map :class:`vramplan.lora.LoraConfig` to ``peft.LoraConfig`` (field for field)."""
    import peft

    if lora.target_regex is not None:
        targets: Any = lora.target_regex
    elif lora.all_linear:
        targets = "all-linear"
    else:
        targets = list(lora.targets) if lora.targets is not None else None
    return peft.LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=float(lora.dropout), target_modules=targets,
        modules_to_save=list(lora.modules_to_save) or None,
        layers_to_transform=list(lora.layers_to_transform) if lora.layers_to_transform is not None else None,
        layers_pattern=lora.layers_pattern, use_dora=lora.dora, task_type="CAUSAL_LM")


def import_stack(setup: Any) -> None:
    """Import what building and training will import, so that its cost is not measured as loading."""
    import transformers  # noqa: F401
    from transformers import Trainer  # noqa: F401

    if uses_bitsandbytes(setup):
        import bitsandbytes  # noqa: F401
    if setup.method in ("lora", "qlora") or setup.quantized:
        import peft  # noqa: F401


def load_base(source: str | None, config: dict[str, Any], setup: Any, device: Any) -> tuple[Any, str]:
    """``from_pretrained`` of real weights (``source`` a folder with safetensors) or of a random checkpoint."""
    import torch
    import transformers

    from ..shapes.from_meta import hf_config

    dtype = torch_dtype(setup.base_dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": device},
                              "attn_implementation": ATTN_IMPLEMENTATION[setup.attn]}
    qc = quantization_config(setup)
    if qc is not None:
        kwargs["quantization_config"] = qc
    blocksize = setup.quant_blocksize if setup.quant in ("nf4", "fp4") else 64
    try:
        with _bnb_blocksize(blocksize), quiet_transformers():
            if source is not None and has_weights(source):
                model = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
                return model, "real"
            cfg = hf_config(config)
            with torch.device("meta"):
                meta = transformers.AutoModelForCausalLM.from_config(cfg)
            std = float(getattr(cfg, "initializer_range", 0.02) or 0.02)
            checkpoint = RandomCheckpoint(meta, dtype=dtype, device=device, std=std)
            cls = type(meta)
            del meta
            model = cls.from_pretrained(None, config=cfg, state_dict=checkpoint, **kwargs)
            return model, "random"
    except ImportError as exc:
        if setup.attn == "flash":
            raise SetupError(f"--attn flash needs the flash-attn package and a CUDA GPU ({exc}); "
                             "use --attn sdpa") from None
        raise


def build_model(source: str | None, config: dict[str, Any], setup: Any, device: Any) -> BuiltModel:
    """Load the base, then do what the user's script does for ``setup``.

    k-bit: ``prepare_model_for_kbit_training`` (fp32 upcast of non-quantized weights, checkpointing as
    ``setup.grad_ckpt``); LoRA: ``get_peft_model`` (adapters in fp32 under mixed precision, in the compute
    dtype under ``*-true``); otherwise checkpointing with transformers' ``activation_checkpointing_enable``
    (non-reentrant). Inference: ``eval()``, nothing trainable.
    """
    notes: list[str] = []
    model, weights = load_base(source, config, setup, device)
    with quiet_transformers():
        if not setup.training:
            model.eval()
            model.requires_grad_(False)
        else:
            if setup.quantized and setup.kbit_prep:
                from peft import prepare_model_for_kbit_training

                model = prepare_model_for_kbit_training(
                    model, use_gradient_checkpointing=setup.grad_ckpt,
                    gradient_checkpointing_kwargs={"use_reentrant": False})
                notes.append("prepare_model_for_kbit_training")
            elif setup.grad_ckpt:
                model.activation_checkpointing_enable()
            if setup.grad_ckpt:
                notes.append("activation checkpointing (non-reentrant)")
            if setup.method in ("lora", "qlora"):
                from peft import get_peft_model

                upcast = setup.adapter_weight_dtype == "fp32"      # --adapter-dtype (PEFT's default: fp32)
                model = get_peft_model(model, peft_lora_config(setup.lora), autocast_adapter_dtype=upcast)
                if not upcast:         # compute-dtype adapters (TRL's QLoRA cast, sft_trainer.py:902-911)
                    for p in model.parameters():
                        if p.requires_grad and p.dtype != torch_dtype(setup.compute_dtype):
                            p.data = p.data.to(torch_dtype(setup.compute_dtype))
                notes.append("get_peft_model")
            elif setup.method == "full":
                model.requires_grad_(True)
            model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    by_dtype: dict[str, int] = {}
    for p in model.parameters():
        key = str(p.dtype).replace("torch.", "") + ("/trainable" if p.requires_grad else "")
        by_dtype[key] = by_dtype.get(key, 0) + p.numel() * p.element_size()
    logging.getLogger(__name__).debug("built %s model: %s trainable of %s", weights, trainable, total)
    return BuiltModel(model, weights, int(trainable), int(total), notes, dict(sorted(by_dtype.items())))
