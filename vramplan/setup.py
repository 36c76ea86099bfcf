"""Setup: every option of a training or inference step that decides its memory, validated.

Defaults are what a user of transformers + peft gets: bf16 weights (transformers 5 loads ``dtype="auto"``),
the HF Trainer's ``bf16=True`` autocast with fp32 trainable weights (``bf16-mixed``), PEFT's LoRA defaults
(r=8, alpha=8, the family's default targets, dropout 0), sdpa attention, the Trainer's default optimizer
(``adamw_torch_fused`` on torch >= 2.8), batch 1. QLoRA defaults to nf4 with double quantization and, as
``prepare_model_for_kbit_training`` does by default, gradient checkpointing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from .errors import SetupError
from .lora import LoraConfig

Method = Literal["full", "lora", "qlora", "inference"]
Quant = Literal["none", "nf4", "fp4", "int8"]
Precision = Literal["bf16-mixed", "bf16-true", "fp16-mixed", "fp16-true", "32-true"]
Optim = Literal["adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "adafactor", "sgd", "lion"]
Attn = Literal["sdpa", "flash", "eager"]
Loss = Literal["standard", "chunked"]
Strategy = Literal["ddp", "fsdp", "fsdp-grad-op", "zero1", "zero2", "zero3"]
Offload = Literal["none", "optimizer", "params"]

METHODS: tuple[str, ...] = ("full", "lora", "qlora", "inference")
QUANTS: tuple[str, ...] = ("none", "nf4", "fp4", "int8")
PRECISIONS: tuple[str, ...] = ("bf16-mixed", "bf16-true", "fp16-mixed", "fp16-true", "32-true")
OPTIMS: tuple[str, ...] = ("adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "adafactor", "sgd", "lion")
ATTNS: tuple[str, ...] = ("sdpa", "flash", "eager")
LOSSES: tuple[str, ...] = ("standard", "chunked")
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp", "fsdp-grad-op", "zero1", "zero2", "zero3")
OFFLOADS: tuple[str, ...] = ("none", "optimizer", "params")

#: bytes per element of the dtypes vramplan reasons about
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "uint8": 1, "int64": 8, "bool": 1}


def _choice(value: Any, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise SetupError(f"{option} {value!r} is not one of: {', '.join(choices)}")
    return str(value)


def _positive(value: Any, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SetupError(f"{option} must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class Setup:
    """A validated setup. Build it with :meth:`Setup.create`, which fills method-dependent defaults."""

    method: str = "lora"
    quant: str = "none"
    double_quant: bool = True
    quant_blocksize: int = 64
    precision: str = "bf16-mixed"
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    batch: int = 1
    seq: int = 2048
    grad_ckpt: bool = False
    attn: str = "sdpa"
    optim: str = "adamw"
    loss: str = "standard"
    kbit_prep: bool = True              # prepare_model_for_kbit_training (qlora / int8 LoRA)
    gpus: int = 1
    strategy: str = "ddp"
    offload: str = "none"
    # inference: how many of `seq` tokens are generated (the rest is the prompt); 0 = prefill only
    new_tokens: int = 0

    # ------------------------------------------------------------------------------------------ create
    @classmethod
    def create(cls, *, method: str = "lora", quant: str | None = None, grad_ckpt: bool | None = None,
               lora: LoraConfig | None = None, **kwargs: Any) -> Setup:
        """Validate options and apply defaults that depend on the method.

        Raises:
            SetupError: an invalid value or combination, quoting it and listing what is accepted.
        """
        method = _choice(method, METHODS, "--method")
        if quant is None:
            quant = "nf4" if method == "qlora" else "none"
        quant = _choice(quant, QUANTS, "--quant")
        if method == "qlora" and quant == "none":
            raise SetupError("--method qlora needs a quantized base: use --quant nf4 (default), fp4 or int8, "
                             "or --method lora for a bf16 base")
        if method == "full" and quant != "none":
            raise SetupError(f"--method full cannot train a quantized base (--quant {quant}); "
                             "use --method qlora, or --quant none")
        if grad_ckpt is None:
            # prepare_model_for_kbit_training(use_gradient_checkpointing=True) is the QLoRA default.
            grad_ckpt = method == "qlora"
        if method in ("lora", "qlora"):
            lora = lora if lora is not None else LoraConfig()
        else:
            lora = None
        s = cls(method=method, quant=quant, grad_ckpt=bool(grad_ckpt), lora=lora, **kwargs)
        s.validate()
        return s

    def validate(self) -> None:
        _choice(self.method, METHODS, "--method")
        _choice(self.quant, QUANTS, "--quant")
        _choice(self.precision, PRECISIONS, "--precision")
        _choice(self.attn, ATTNS, "--attn")
        _choice(self.optim, OPTIMS, "--optim")
        _choice(self.loss, LOSSES, "--loss")
        _choice(self.strategy, STRATEGIES, "--strategy")
        _choice(self.offload, OFFLOADS, "--offload")
        _positive(self.batch, "--batch")
        _positive(self.seq, "--seq")
        _positive(self.gpus, "--gpus")
        if self.quant_blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise SetupError(f"--quant-blocksize must be a power of two from 32 to 4096 (bitsandbytes), "
                             f"got {self.quant_blocksize!r}")
        if self.new_tokens < 0 or self.new_tokens >= self.seq:
            raise SetupError(f"--new-tokens must be >= 0 and smaller than --seq {self.seq}, got {self.new_tokens}")
        if self.offload == "params" and self.strategy not in ("zero3", "fsdp"):
            raise SetupError(f"--offload params needs --strategy zero3 or fsdp (got --strategy {self.strategy}): "
                             "only ZeRO-3 and FSDP shard parameters")
        if self.offload == "optimizer" and self.strategy not in ("zero1", "zero2", "zero3"):
            raise SetupError(f"--offload optimizer needs --strategy zero1, zero2 or zero3 (got --strategy "
                             f"{self.strategy}): it is DeepSpeed's offload_optimizer; FSDP offloads parameters, "
                             "gradients and optimizer states together (--strategy fsdp --offload params)")
        if self.offload != "none" and self.method == "inference":
            raise SetupError(f"--offload {self.offload} is a training option (ZeRO/FSDP offload); "
                             "use --offload none with --method inference")

    # ------------------------------------------------------------------------------------- derived
    @property
    def training(self) -> bool:
        return self.method != "inference"

    @property
    def compute_dtype(self) -> str:
        return {"bf16": "bf16", "fp16": "fp16", "32": "fp32"}[self.precision.split("-")[0]]

    @property
    def mixed(self) -> bool:
        """Autocast with fp32 trainable weights (HF Trainer ``bf16=True``/``fp16=True``)."""
        return self.precision.endswith("-mixed")

    @property
    def autocast(self) -> bool:
        return self.mixed and self.compute_dtype != "fp32"

    @property
    def base_dtype(self) -> str:
        """dtype of the frozen, unquantized base weights as loaded (``from_pretrained(dtype=...)``)."""
        if self.method == "full" and self.mixed:
            return "fp32"       # trainable weights are fp32 masters under mixed precision
        return self.compute_dtype

    @property
    def trainable_dtype(self) -> str:
        """dtype of trainable parameters: fp32 under mixed precision (PEFT ``autocast_adapter_dtype``)."""
        return "fp32" if self.mixed else self.compute_dtype

    @property
    def quantized(self) -> bool:
        return self.quant != "none"

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def with_(self, **changes: Any) -> Setup:
        s = replace(self, **changes)
        s.validate()
        return s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.lora is not None:
            lc = self.lora
            d["lora"] = {"r": lc.r, "alpha": lc.alpha,
                         "targets": list(lc.targets) if lc.targets is not None else None,
                         "target_regex": lc.target_regex, "modules_to_save": list(lc.modules_to_save),
                         "layers_to_transform": list(lc.layers_to_transform)
                         if lc.layers_to_transform is not None else None,
                         "dora": lc.dora, "dropout": lc.dropout}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Setup:
        d = dict(d)
        lora = d.pop("lora", None)
        lc = None
        if lora is not None:
            lc = LoraConfig(r=lora.get("r", 8), alpha=lora.get("alpha", 8),
                            targets=tuple(lora["targets"]) if lora.get("targets") is not None else None,
                            target_regex=lora.get("target_regex"),
                            modules_to_save=tuple(lora.get("modules_to_save") or ()),
                            layers_to_transform=tuple(lora["layers_to_transform"])
                            if lora.get("layers_to_transform") is not None else None,
                            dora=bool(lora.get("dora", False)), dropout=float(lora.get("dropout", 0.0)))
        s = cls(lora=lc, **d)
        s.validate()
        return s
