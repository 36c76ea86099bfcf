"""Setup: every option of a training or inference step that decides its memory, validated.

Defaults are what a user of transformers + peft gets: bf16 weights (transformers 5 loads ``dtype="auto"``),
the HF Trainer's ``bf16=True`` autocast with fp32 trainable weights (``bf16-mixed``), PEFT's LoRA defaults
(r=8, alpha=8, the family's default targets, dropout 0), sdpa attention, the Trainer's default optimizer
(``adamw_torch_fused`` on torch >= 2.8), batch 1. QLoRA defaults to nf4 with double quantization and, as
``prepare_model_for_kbit_training`` does by default, gradient checkpointing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from .errors import SetupError
from .lora import LoraConfig
from .options import Option, option, options_of, value_text
from .shapes.config import MAX_LAYERS
from .stacks import STACK_NAMES, STACKS
from .versions import format_versions, parse_versions, runs_before

#: The largest layer index ``--layers-to-transform`` takes (the last layer of the deepest model planned).
MAX_LAYER_INDEX = MAX_LAYERS - 1

Method = Literal["full", "lora", "qlora", "inference"]
Quant = Literal["none", "nf4", "fp4", "int8", "gptq", "awq", "fp8"]
Precision = Literal["bf16-mixed", "bf16-true", "fp16-mixed", "fp16-true", "32-true"]
Optim = Literal["adamw", "adamw-foreach", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "adafactor", "sgd", "lion"]
Attn = Literal["sdpa", "flash", "eager"]
Loss = Literal["standard", "chunked", "torchtune-chunked", "litgpt-chunked", "trl-fused", "litgpt-full"]
Strategy = Literal["ddp", "fsdp", "fsdp1", "fsdp-grad-op", "zero1", "zero2", "zero3"]
Offload = Literal["none", "optimizer", "params"]

METHODS: tuple[str, ...] = ("full", "lora", "qlora", "inference")
QUANTS: tuple[str, ...] = ("none", "nf4", "fp4", "int8", "gptq", "awq", "fp8")
#: bitsandbytes quantizations (load-time, ``BitsAndBytesConfig``); the others are pre-quantized checkpoints
BNB_QUANTS: tuple[str, ...] = ("nf4", "fp4", "int8")
PRECISIONS: tuple[str, ...] = ("bf16-mixed", "bf16-true", "fp16-mixed", "fp16-true", "32-true")
OPTIMS: tuple[str, ...] = ("adamw", "adamw-foreach", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "adafactor", "sgd", "lion")
ATTNS: tuple[str, ...] = ("sdpa", "flash", "eager")
LOSSES: tuple[str, ...] = ("standard", "chunked", "torchtune-chunked", "litgpt-chunked", "trl-fused", "litgpt-full")
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp", "fsdp1", "fsdp-grad-op", "zero1", "zero2", "zero3")
#: FSDP2 unit layouts (vramplan.estimate.distributed.FSDP_UNIT_LAYOUTS, checked equal in tests)
FSDP_UNITS: tuple[str, ...] = ("accelerate", "root")
OFFLOADS: tuple[str, ...] = ("none", "optimizer", "params")
ADAPTER_DTYPES: tuple[str, ...] = ("auto", "fp32", "compute")
FROZEN_DTYPES: tuple[str, ...] = ("compute", "fp32")
DEVICE_MAP_CHOICES: tuple[str, ...] = ("none", "auto", "balanced", "balanced_low_0", "sequential")
TRAIN_VISION: tuple[str, ...] = ("all", "projector", "none")
CACHES: tuple[str, ...] = ("dynamic", "static", "sliding", "quantized-int4", "quantized-int2", "offloaded")

#: bytes per element of the dtypes vramplan reasons about
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "uint8": 1, "int64": 8, "bool": 1}


def _choice(value: Any, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise SetupError(f"{option} {value!r} is not one of: {', '.join(choices)}")
    return str(value)


#: Upper bounds of the integer options: far beyond any real setup (fit's searches stop well below them), low
#: enough that every product the estimator forms stays an exact float (``--batch 10**400`` used to overflow).
MAX_BATCH = 1 << 20
MAX_SEQ = 1 << 24
MAX_GPUS = 1 << 16


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:18]}...{text[-18:]} ({len(text):,} characters)"


def _flag(name: str) -> str:
    return next(o.flag for o in options_of(Setup) if o.field == name)


def _written(value: Any) -> str:
    """A value as the command line writes it (``true``/``false`` for a bool)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _positive(value: Any, option: str, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SetupError(f"{option} must be an integer >= 1, got {_quote(value)}")
    if maximum is not None and value > maximum:
        raise SetupError(f"{option} must be at most {maximum:,}, got {_quote(value)}")
    return value


@dataclass(frozen=True)
class Setup:
    """A validated setup. Build it with :meth:`Setup.create`, which fills method-dependent defaults.

    Each field that is a user-facing option declares it (:func:`vramplan.options.option`): its help, kind,
    choices and default. The command-line options, sweep axes, plan-file keys and sweep columns are derived
    from these declarations and from :class:`~vramplan.lora.LoraConfig`'s (:data:`SETUP_OPTIONS`).
    """

    method: str = option("lora", kind="choice", choices=METHODS,
                         help="Training method, or inference (prefill + decode).")
    quant: str = option("none", kind="choice", choices=QUANTS, unset=True,
                        help="Base-weight quantization: bitsandbytes nf4/fp4/int8 at load time, or a pre-quantized "
                             "gptq/awq/fp8 layout; a config.json with a quantization_config is planned as stored "
                             "(docs/quantized.md). qlora defaults to nf4.")
    double_quant: bool = option(True, kind="bool", unset=True,
                                help="bnb_4bit_use_double_quant (LitGPT's bnb.nf4-dq). Default: on, or the --stack's "
                                     "(LitGPT: bnb.nf4, off).")
    quant_blocksize: int = option(64, kind="int", help="4-bit quantization block size.")
    quant_bits: int = option(4, kind="int", help="Bits per weight of a GPTQ/AWQ checkpoint (2, 3, 4 or 8).")
    quant_group: int = option(128, kind="int", help="GPTQ/AWQ group size (-1 = one group per output column).")
    quant_skip: tuple[str, ...] = option((), kind="list", unset=True, repeat_only=True,
                                         help="Modules left unquantized (BitsAndBytesConfig llm_int8_skip_modules, "
                                              "a checkpoint's modules_to_not_convert).")
    quant_state_dtype: str = option("compute", kind="choice", choices=("compute", "fp16"), unset=True,
                                    help="dtype 4-bit weights are quantized from (bitsandbytes QuantState.dtype, what "
                                         "each dequantization returns): compute (transformers) or fp16 (Lightning's "
                                         "_Linear4bit.quantize). Default: compute, or the --stack's.")
    quant_head: bool = option(False, kind="bool", unset=True,
                              help="Quantize the output head too (LitGPT's BitsandbytesPrecision replaces every "
                                   "nn.Linear; transformers skips the head). Default: off, or the --stack's.")
    precision: str = option("bf16-mixed", kind="choice", choices=PRECISIONS, unset=True,
                            help="mixed = autocast with fp32 trainable weights (HF Trainer bf16=True); "
                                 "true = everything in that dtype (default: bf16-mixed, or the --stack's).")
    adapter_dtype: str = option("auto", kind="choice", choices=ADAPTER_DTYPES, unset=True,
                                help="dtype of the LoRA weights: fp32 (PEFT autocast_adapter_dtype), compute (the "
                                     "--precision dtype, as torchtune and LitGPT build them), or auto: fp32 where "
                                     "PEFT builds them or under -mixed, else compute (default: auto, or the "
                                     "--stack's).")
    frozen_dtype: str = option("compute", kind="choice", choices=FROZEN_DTYPES, unset=True,
                               help="dtype of the frozen, unquantized base weights: compute, or fp32 (LitGPT's "
                                    "bf16-mixed). Default: compute, or the --stack's.")
    fp32_norms_embeddings: bool = option(
        False, kind="bool", unset=True,
        help="Training: the embeddings, output head, norms and .gate routers in fp32, the rest in the compute dtype, "
             "under autocast, as axolotl leaves a full fine-tune without flash attention. Default: off, or the "
             "--stack's.")
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    batch: int = option(1, kind="int", help="Sequences per step (per GPU).")
    seq: int = option(2048, kind="int", help="Tokens per sequence (inference: prompt + generated).")
    target_seq: int = option(0, kind="int",
                             help="Encoder-decoder (T5, BART): decoder (target) tokens per example; --seq is the "
                                  "encoder (source) length (0 = --seq).")
    image_tokens: int = option(0, kind="int",
                               help="Multimodal: image tokens per sequence (part of --seq); the vision tower encodes "
                                    "the images they stand for (0 = text only).")
    prompt_tokens: int = option(0, kind="int",
                                help="Training: tokens at the start of every sequence whose labels are masked (-100: "
                                     "the prompt of prompt-masked SFT). The loss still scores every position unless "
                                     "--logits-to-keep computes the logits from the first supervised label on "
                                     "(0 = every label supervised).")
    train_vision: str = option("all", kind="choice", choices=TRAIN_VISION, unset=True,
                               help="Multimodal: what of the vision side --method trains: all (tower and projector, "
                                    "like the text model), projector (the tower frozen) or none (both frozen, as "
                                    "LLaMA-Factory's and ms-swift's defaults). Default: all, or the --stack's.")
    grad_ckpt: bool = option(False, kind="bool", unset=True,
                             help="Gradient checkpointing (default: on for qlora, as prepare_model_for_kbit_training "
                                  "does; off otherwise).")
    act_offload: bool = option(False, kind="bool", unset=True,
                               help="Offload saved activations to CPU (torchtune enable_activation_offloading; "
                                    "Unsloth's offloaded checkpoints). Default: off, or the --stack's.")
    attn: str = option("sdpa", kind="choice", choices=ATTNS, help="Attention kernel.")
    kv_expand: bool = option(False, kind="bool", unset=True,
                             help="K and V are repeated to every query head before attention (torchtune, LitGPT). "
                                  "Default: off, or the --stack's.")
    optim: str = option("adamw", kind="choice", choices=OPTIMS, unset=True,
                        help="Optimizer (adamw = torch fused AdamW, the HF Trainer default since transformers "
                             "4.54; adamw-foreach = torch.optim.AdamW's own CUDA default, the Trainer's adamw_torch "
                             "and its default before 4.54, LitGPT's; or the --stack's).")
    optim_in_bwd: bool = option(False, kind="bool", unset=True,
                                help="The optimizer step runs inside backward, one parameter at a time (torchtune "
                                     "optimizer_in_bwd). Default: off, or the --stack's.")
    loss: str = option("standard", kind="choice", choices=LOSSES, unset=True,
                       help="standard = full fp32 logits; chunked = Liger fused linear cross-entropy; "
                            "torchtune-chunked = CEWithChunkedOutputLoss (8 chunks); litgpt-chunked = 128-token "
                            "chunked cross-entropy; trl-fused = TRL's fused LM head; litgpt-full = LitGPT full "
                            "fine-tuning's unchunked logits (default: standard, or the --stack's).")
    logits_to_keep: bool = option(False, kind="bool", unset=True,
                                  help="Training: the forward computes the logits only from the first supervised "
                                       "label on (--prompt-tokens), as ms-swift's use_logits_to_keep. Default: off, "
                                       "or the --stack's.")
    kbit_prep: bool = option(
        True, kind="bool", unset=True,
        help="QLoRA: peft's prepare_model_for_kbit_training (fp32 copies of the non-quantized weights, fp32 residual "
             "stream, input grads for checkpointing), as the HF Trainer + PEFT recipe calls it (the default, or the "
             "--stack's: ms-swift, LLaMA-Factory, torchtune, LitGPT and recent TRL do not).")
    gpus: int = option(1, kind="int", help="Number of GPUs (data parallel ranks).")
    strategy: str = option("ddp", kind="choice", choices=STRATEGIES, unset=True,
                           help="Multi-GPU strategy (default: ddp, or the --stack's).")
    offload: str = option("none", kind="choice", choices=OFFLOADS, help="CPU offload (ZeRO / FSDP).")
    fsdp_units: str = option("accelerate", kind="choice", choices=FSDP_UNITS, unset=True,
                             help="FSDP2 units (--strategy fsdp / fsdp-grad-op): accelerate (every decoder layer, the "
                                  "input embedding, and [final norm, lm_head] kept gathered after forward, as "
                                  "accelerate's fsdp2_prepare_model) or root (every decoder layer, then one root unit "
                                  "holding the embedding, final norm and head, gathered from forward to the end of "
                                  "backward, as LitGPT and torchtune shard). Default: accelerate, or the --stack's.")
    # inference: how many of `seq` tokens are generated (the rest is the prompt); 0 = prefill only
    new_tokens: int = option(0, kind="int", help="Inference: tokens generated after the prompt (part of --seq).")
    logits: str = option("last", kind="choice", choices=("last", "all"),
                         help="Inference: logits of the last position (generate, logits_to_keep=1) or of every "
                              "position (a plain forward, logits_to_keep=0).")
    cache: str = option("dynamic", kind="choice", choices=CACHES,
                        help="Inference: the KV cache (transformers' cache_implementation).")
    cache_len: int = option(0, kind="int",
                            help="Inference: max_cache_len of a static or sliding cache (0 = --seq).")
    device_map: str = option("none", kind="choice", choices=DEVICE_MAP_CHOICES,
                             help="Inference: from_pretrained(device_map=...) over --gpus GPUs (auto, balanced, "
                                  "balanced_low_0, sequential): the split transformers makes and each GPU's peak.")
    max_memory: str | None = option(None, kind="str", repeat_only=True,
                                    help="Inference with --device-map: from_pretrained's max_memory, one size for "
                                         "every GPU (20GiB) or 0=20GiB,1=30GiB,cpu=64GiB. Default: each --gpu's "
                                         "free memory, then the CPU.")
    stack: str = option("hf", kind="choice", choices=STACK_NAMES,
                        help="The framework the run is launched with: its defaults for the options it decides "
                             "(a flag given here still wins) and what it does that is not modelled yet, as "
                             "warnings (docs/stacks.md).")
    versions: str | None = option(None, kind="str", repeat_only=True,
                                  help="Library versions the run uses, PKG=VER[,PKG=VER...] (torch, transformers, peft, "
                                       "bitsandbytes, accelerate, a stack's package): each change of memory behaviour "
                                       "they predate is a warning. Default: the installed versions, else the pinned "
                                       "ones.")
    lengths: str | None = option(None, kind="str", repeat_only=True,
                                 help="Sample lengths for a run-level reserved peak (plan): a list (300,812), a "
                                      "length,count histogram file (.csv/.json) or a profile (alpaca), then "
                                      "@RULE,... (longest|fixed|pack, truncate|drop, steps=N, seed=N). Default: "
                                      "every sample is --seq tokens (docs/allocator.md).")
    alloc_conf: str | None = option(None, kind="str", repeat_only=True,
                                    help="PYTORCH_CUDA_ALLOC_CONF of the run (e.g. expandable_segments:True), "
                                         "replayed through the caching allocator model (plan; docs/allocator.md).")

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
        stack = STACKS[_choice(kwargs.get("stack", "hf"), STACK_NAMES, "--stack")]
        # a stack's multi-GPU defaults are its training launcher's; inference on N GPUs is --device-map's
        gpus = kwargs.get("gpus", 1) if method != "inference" else 1
        gpus = gpus if isinstance(gpus, int) and not isinstance(gpus, bool) else 1     # validate() quotes a bad one
        refusal = stack.refusal_for(quant != "none", method == "full", gpus)
        if refusal is not None:
            raise SetupError(f"--stack {stack.name} {refusal.what} ({refusal.source}): use --gpus 1, or another "
                             "--stack")
        lora_defaults: dict[str, Any] = {}
        for name, d in stack.defaults_for(quant != "none", method == "full", gpus).items():   # unless given
            if name in _LORA_OPTION_NAMES:
                lora_defaults[name] = d.value       # a LoraConfig option: see setup_from_options
            elif name == "grad_ckpt":
                grad_ckpt = d.value if grad_ckpt is None else grad_ckpt
            elif kwargs.get(name) is None:
                kwargs[name] = d.value
        if kwargs.get("optim") is None and stack.hf_trainer and runs_before(
                kwargs.get("versions"), "transformers", "4.54.0"):
            # the Trainer's default optim before 4.54.0 is adamw_torch: torch.optim.AdamW, foreach on CUDA
            # (transformers 4.53.3 training_args.py default_optim; 4.54.0 training_args.py:806-811 adamw_torch_fused)
            kwargs["optim"] = "adamw-foreach"
        if kwargs.get("strategy") == "fsdp" and stack.hf_trainer and runs_before(
                kwargs.get("versions"), "accelerate", "1.6.0"):
            kwargs["strategy"] = "fsdp1"      # accelerate < 1.6.0 has no fsdp_version 2: FullyShardedDataParallel
        if method == "qlora" and quant == "none":
            raise SetupError("--method qlora needs a quantized base: use --quant nf4 (default), fp4, int8, gptq, awq "
                             "or fp8, or --method lora for a bf16 base")
        if method == "full" and quant != "none":
            raise SetupError(f"--method full cannot train a quantized base (--quant {quant}); "
                             "use --method qlora, or --quant none")
        if grad_ckpt is None:
            # prepare_model_for_kbit_training(use_gradient_checkpointing=True) is the QLoRA default.
            grad_ckpt = method == "qlora"
        if method in ("lora", "qlora"):
            lora = lora if lora is not None else lora_from_options(lora_defaults) or LoraConfig()
        else:
            lora = None
        if kwargs.get("versions") is not None:
            kwargs["versions"] = format_versions(parse_versions(kwargs["versions"]))
        s = cls(method=method, quant=quant, grad_ckpt=bool(grad_ckpt), lora=lora, **kwargs)
        s.validate()
        return s

    def validate(self) -> None:
        parse_versions(self.versions)
        for o in options_of(Setup):
            if o.kind == "choice":
                _choice(getattr(self, o.field), o.choices, o.flag)
        _positive(self.batch, "--batch", MAX_BATCH)
        _positive(self.seq, "--seq", MAX_SEQ)
        _positive(self.gpus, "--gpus", MAX_GPUS)
        if isinstance(self.new_tokens, bool) or not isinstance(self.new_tokens, int):
            raise SetupError(f"--new-tokens must be an integer >= 0, got {_quote(self.new_tokens)}")
        for o in options_of(Setup):
            if o.kind == "bool" and not isinstance(getattr(self, o.field), bool):
                raise SetupError(f"{o.flag} must be true or false, got {_quote(getattr(self, o.field))}")
        if self.quant_bits not in (2, 3, 4, 8):
            raise SetupError(f"--quant-bits must be 2, 3, 4 or 8 (GPTQ/AWQ), got {_quote(self.quant_bits)}")
        if self.quant == "awq" and self.quant_bits != 4:
            raise SetupError(f"--quant awq stores 4-bit weights (AutoAWQ), got --quant-bits {self.quant_bits}")
        if self.quant_group != -1 and self.quant_group not in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise SetupError(f"--quant-group must be -1 or a power of two from 16 to 4096, got "
                             f"{_quote(self.quant_group)}")
        if isinstance(self.cache_len, bool) or not isinstance(self.cache_len, int) or not 0 <= self.cache_len <= MAX_SEQ:
            raise SetupError(f"--cache-len must be an integer from 0 (= --seq) to {MAX_SEQ:,}, got "
                             f"{_quote(self.cache_len)}")
        for name, flag, upper in (("target_seq", "--target-seq", MAX_SEQ), ("image_tokens", "--image-tokens", self.seq)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
                raise SetupError(f"{flag} must be an integer from 0 to {upper:,}"
                                 f"{' (--seq)' if name == 'image_tokens' else ''}, got {_quote(value)}")
        if isinstance(self.prompt_tokens, bool) or not isinstance(self.prompt_tokens, int) \
                or not 0 <= self.prompt_tokens < self.seq:
            raise SetupError(f"--prompt-tokens must be an integer from 0 to {self.seq - 1:,} (less than --seq "
                             f"{self.seq:,}: a sequence needs a supervised label), got {_quote(self.prompt_tokens)}")
        if self.quant_blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise SetupError(f"--quant-blocksize must be a power of two from 32 to 4096 (bitsandbytes), "
                             f"got {self.quant_blocksize!r}")
        if self.new_tokens < 0 or self.new_tokens >= self.seq:
            raise SetupError(f"--new-tokens must be >= 0 and smaller than --seq {self.seq}, "
                             f"got {_quote(self.new_tokens)}")
        if self.offload == "params" and self.strategy not in ("zero3", "fsdp", "fsdp1"):
            raise SetupError(f"--offload params needs --strategy zero3, fsdp or fsdp1 (got --strategy {self.strategy}): "
                             "only ZeRO-3 and FSDP shard parameters")
        if self.offload == "optimizer" and self.strategy not in ("zero1", "zero2", "zero3"):
            raise SetupError(f"--offload optimizer needs --strategy zero1, zero2 or zero3 (got --strategy "
                             f"{self.strategy}): it is DeepSpeed's offload_optimizer; FSDP offloads parameters, "
                             "gradients and optimizer states together (--strategy fsdp --offload params)")
        if self.device_map != "none" and self.method != "inference":
            raise SetupError(f"--device-map {self.device_map} splits a model for inference (--method inference); "
                             "training across GPUs is --gpus N --strategy ...")
        if self.max_memory is not None and self.device_map == "none":
            raise SetupError("--max-memory is the budget of --device-map: add --device-map auto")
        stack = STACKS[self.stack]
        bad = stack.rejected(vars(self), quantized=self.quant != "none", full=self.method == "full",
                             gpus=self.gpus if self.training else 1)
        if bad is not None:
            flag = _flag(bad.option)
            shown = ", ".join(_written(v) for v in bad.values)
            raise SetupError(f"--stack {stack.name} {bad.what} ({bad.source}): got {flag} "
                             f"{_written(getattr(self, bad.option))}; use {flag} {shown}, or another --stack")
        if self.offload != "none" and self.method == "inference":
            raise SetupError(f"--offload {self.offload} is a training option (ZeRO/FSDP offload); "
                             "use --offload none with --method inference")

    # ------------------------------------------------------------------------------------- derived
    @property
    def training(self) -> bool:
        return self.method != "inference"

    @property
    def distributed(self) -> bool:
        """Whether one rank's share replaces the single-GPU model states (``estimate/distributed.py``): training
        on N > 1 GPUs, or a sharding engine on one. ``--gpus 1 --strategy ddp`` is plain single-GPU training."""
        return self.training and (self.gpus > 1 or self.strategy != "ddp")

    @property
    def compute_dtype(self) -> str:
        return {"bf16": "bf16", "fp16": "fp16", "32": "fp32"}[self.precision.split("-")[0]]

    @property
    def mixed(self) -> bool:
        """Autocast with fp32 trainable weights (HF Trainer ``bf16=True``/``fp16=True``)."""
        return self.precision.endswith("-mixed")

    @property
    def autocast(self) -> bool:
        """The step runs under ``torch.autocast(compute dtype)``: -mixed precision, or fp32 norms and embeddings
        around compute-dtype Linears (axolotl's Trainer bf16 autocast over its mixed-dtype model)."""
        return (self.mixed or (self.fp32_norms_embeddings and self.training)) and self.compute_dtype != "fp32"

    @property
    def base_dtype(self) -> str:
        """dtype of the frozen, unquantized base weights as loaded (``from_pretrained(dtype=...)``)."""
        if self.method == "full" and self.mixed:
            return "fp32"       # trainable weights are fp32 masters under mixed precision
        if self.frozen_dtype == "fp32" and self.training and self.mixed:
            return "fp32"       # LitGPT's bf16-mixed: autocast over an fp32 module (under -true it is converted)
        return self.compute_dtype

    @property
    def trainable_dtype(self) -> str:
        """dtype of trainable parameters: fp32 under mixed precision (PEFT ``autocast_adapter_dtype``)."""
        return "fp32" if self.mixed else self.compute_dtype

    @property
    def adapter_weight_dtype(self) -> str:
        """dtype of the LoRA weights: ``--adapter-dtype``, where ``auto`` is fp32 when PEFT builds the adapters
        (``get_peft_model(autocast_adapter_dtype=True)``, its default, upcasts bf16/fp16 adapters whatever the
        precision) or under -mixed, and the compute dtype where the stack builds its own under -true (torchtune,
        LitGPT)."""
        if self.adapter_dtype == "auto":
            peft = STACKS[self.stack].peft_adapters
            if peft and runs_before(self.versions, "peft", "0.12.0"):
                # peft 0.11.1 tuners/lora/layer.py:123-131 LoraLayer.update_layer: self.to(dtype=weight.dtype) for
                # a floating-point base weight; a 4/8-bit or GPTQ base (uint8/int8/int32) leaves them fp32
                return "fp32" if self.quantized else self.base_dtype
            return "fp32" if self.mixed or peft else self.compute_dtype
        return {"fp32": "fp32", "compute": self.compute_dtype}[self.adapter_dtype]

    @property
    def quantized(self) -> bool:
        return self.quant != "none"

    @property
    def bnb(self) -> bool:
        """Quantized by bitsandbytes at load time (nf4, fp4, int8), not a pre-quantized GPTQ/AWQ/FP8 checkpoint."""
        return self.quant in BNB_QUANTS

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def with_(self, **changes: Any) -> Setup:
        s = replace(self, **changes)
        s.validate()
        return s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("lengths", "alloc_conf", "max_memory"):     # only when given: plans without them keep their JSON
            if d[k] is None:
                del d[k]
        for k, default in (("device_map", "none"), ("target_seq", 0), ("image_tokens", 0), ("train_vision", "all"),
                           ("fsdp_units", "accelerate")):
            if d[k] == default:     # only when given: plans of text-only decoder models keep their JSON
                del d[k]
        d["quant_skip"] = list(self.quant_skip)
        if self.lora is not None:
            d["lora"] = self.lora.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Setup:
        d = dict(d)
        lora = d.pop("lora", None)
        lc = LoraConfig.from_dict(lora) if lora is not None else None
        if "quant_skip" in d:
            d["quant_skip"] = tuple(d["quant_skip"] or ())
        s = cls(lora=lc, **d)
        s.validate()
        return s


# ------------------------------------------------------------------------------------------ the options
#: every option of a setup, in command-line order: the Setup fields that declare one, then LoraConfig's
SETUP_OPTIONS: tuple[Option, ...] = (*options_of(Setup), *options_of(LoraConfig))
#: the options of LoraConfig (``rank`` sets ``LoraConfig.r``, ``lora_dropout`` sets ``dropout``)
LORA_OPTIONS: tuple[Option, ...] = options_of(LoraConfig)
_LORA_OPTION_NAMES = frozenset(o.name for o in LORA_OPTIONS)
#: the options of a plan that are not part of its setup: where it runs and what may run
RUN_OPTIONS: tuple[Option, ...] = (
    Option("gpu", "size-or-name",
           "A card from `vramplan gpus` (rtx-4090, a100-80gb, ...) or a size (24GB, 24GiB, 80G)."),
    Option("margin", "margin", "Headroom kept free on --gpu, e.g. 10%.", default="0%"),
    Option("trust_remote_code", "flag", "Allow a model folder's own modeling code (auto_map) for shapes.",
           default=False),
)


def option_named(name: str) -> Option:
    """The setup or run option called ``name`` (underscores or dashes)."""
    key = name.replace("-", "_")
    for o in (*SETUP_OPTIONS, *RUN_OPTIONS):
        if o.name == key:
            return o
    raise KeyError(name)


def split_list(value: str | None) -> tuple[str, ...] | None:
    """``"q_proj, v_proj"`` -> ``("q_proj", "v_proj")``; ``None``/empty -> ``None``."""
    if value is None:
        return None
    items = tuple(v.strip() for v in str(value).split(",") if v.strip())
    return items or None


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    """``"0,1,4-7"`` -> ``(0, 1, 4, 5, 6, 7)``; indices from 0 to :data:`MAX_LAYER_INDEX`, so that a range never
    builds more than :data:`~vramplan.shapes.config.MAX_LAYERS` entries (``0-999999999`` is refused, not built).

    Raises:
        ValueError: a part that is not an index or a range ``low-high``, a range written high to low, or an
            index beyond :data:`MAX_LAYER_INDEX`; the message quotes the part and says how to write it.
    """
    if value is None:
        return None
    out: list[int] = []
    for part in str(value).split(","):
        part = part.strip()
        if not part:
            continue
        lo_s, dash, hi_s = part.partition("-")
        if not (lo_s.strip().isdecimal() and (not dash or hi_s.strip().isdecimal())):
            raise ValueError(f"cannot read {_quote(part)} in layer list {_quote(value)}: write indices >= 0 "
                             "and ranges low-high, such as 0,1,4-7")
        if max(len(lo_s.strip()), len(hi_s.strip())) > 12:
            raise ValueError(f"layer index in {_quote(part)} is beyond {MAX_LAYER_INDEX:,}: models vramplan plans "
                             f"have at most {MAX_LAYERS:,} layers")
        lo = int(lo_s)
        hi = int(hi_s) if dash else lo
        if hi > MAX_LAYER_INDEX:
            raise ValueError(f"layer index {hi:,} in {_quote(part)} is beyond {MAX_LAYER_INDEX:,}: models vramplan "
                             f"plans have at most {MAX_LAYERS:,} layers")
        if lo > hi:
            raise ValueError(f"layer range {_quote(part)} runs high to low: write low-high, e.g. {hi}-{lo}")
        out.extend(range(lo, hi + 1))
    return tuple(out)


_FIELD_DEFAULTS = {f.name: f.default for cls in (LoraConfig, Setup) for f in fields(cls)}


def _option_value(o: Option, value: Any) -> Any:
    """A command-line value (a string for lists and layers) as the dataclass field holds it."""
    if o.kind == "list":       # an empty list is the field's own default: None (PEFT's targets) or ()
        return split_list(value) or _FIELD_DEFAULTS.get(o.field)
    if o.kind == "layers":
        return parse_layers(value)
    if o.kind == "choice" and isinstance(value, str):
        return value.lower()
    return value


def lora_from_options(values: dict[str, Any]) -> LoraConfig | None:
    """A :class:`LoraConfig` from option values by name (``rank``, ``targets``...), or ``None`` when no LoRA
    option is given (a ``False`` boolean counts as not given)."""
    given = {o: values[o.name] for o in LORA_OPTIONS if values.get(o.name) is not None
             and not (o.kind == "bool" and values[o.name] is False)}
    if not given:
        return None
    return LoraConfig(**{o.field: _option_value(o, v) for o, v in given.items()})


def setup_from_options(values: dict[str, Any]) -> Setup:
    """A validated :class:`Setup` from option values by name, as the command line and plan files give them
    (``None`` = not given; lists and layers as their comma strings).

    Raises:
        SetupError: an invalid value or combination.
        TargetError: an invalid LoRA option.
    """
    kwargs = {o.field: _option_value(o, values[o.name]) for o in options_of(Setup)
              if values.get(o.name) is not None}
    return Setup.create(lora=lora_from_options({**stack_lora_defaults(values), **values}), **kwargs)


def stack_lora_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """The LoRA options the run's ``--stack`` decides and ``values`` (option values by name) leave unset, e.g.
    ms-swift's ``target_modules=['all-linear']`` and ``lora_dropout=0.05``; a ``--target-regex`` is a choice of
    targets. Invalid stacks are left to :meth:`Setup.create`'s error."""
    stack = STACKS.get(str(values.get("stack") or "hf").lower())
    if stack is None:
        return {}
    quantized = str(values.get("quant") or "none").lower() != "none" or str(values.get("method")).lower() == "qlora"
    return {n: d.value for n, d in stack.defaults_for(quantized).items()
            if n in _LORA_OPTION_NAMES and values.get(n) is None
            and not (n == "targets" and values.get("target_regex") is not None)}


def setup_kwargs(s: Setup, **changes: Any) -> dict[str, Any]:
    """The keywords of :meth:`Setup.create` that rebuild ``s``, with ``changes`` applied."""
    d = {f.name: getattr(s, f.name) for f in fields(Setup)}
    d.update(changes)
    return d


def option_columns(s: Setup) -> dict[str, Any]:
    """The effective value of every option of ``s`` (defaults filled in) as a table column: lists and layer
    indices as comma strings (``None`` when empty), LoRA options ``None`` without LoRA."""
    row = {o.name: getattr(s, o.field) for o in options_of(Setup)}
    for o in LORA_OPTIONS:
        v = getattr(s.lora, o.field) if s.lora is not None else None
        if o.kind in ("list", "layers") and v is not None:
            v = ",".join(map(str, v)) or None
        elif o.kind in ("pattern", "tokens") and v is not None:
            v = value_text(o, v)
        row[o.name] = v
    return row


def ignored_options(given: dict[str, Any], s: Setup) -> list[str]:
    """One warning per option that was given (by name, as on the command line or in a plan file) but that
    ``s`` does not use, so that it is not dropped silently: LoRA options without LoRA (``--method full`` or
    ``inference``), ``--new-tokens`` in training, ``--optim``/``--grad-ckpt`` in inference, and 4-bit
    quantization options without a 4-bit ``--quant``.

    ``given`` holds only what the user wrote (``None`` values are not given).
    """
    names = [n for n, v in given.items() if v is not None and n in {o.name for o in SETUP_OPTIONS}]

    def flags(which: tuple[str, ...] | list[str]) -> str:
        return ", ".join(option_named(n).flag for n in which)

    out = []
    lora_given = [n for n in names if n in {o.name for o in LORA_OPTIONS}
                  and not (option_named(n).kind == "bool" and given[n] is False)]
    if lora_given and s.lora is None:
        what = "runs without adapters" if s.method == "inference" else "trains every weight, without adapters"
        out.append(f"{flags(lora_given)} ignored: --method {s.method} {what} "
                   "(use --method lora or qlora for LoRA options)")
    if "new_tokens" in names and s.training and given["new_tokens"]:
        out.append(f"--new-tokens {given['new_tokens']} ignored: it is the tokens generated by --method inference; "
                   f"--method {s.method} trains on --seq tokens")
    if not s.training:
        train_only = [n for n in ("optim", "grad_ckpt") if n in names]
        if train_only:
            out.append(f"{flags(train_only)} ignored: --method inference has no optimizer and no backward pass")
    if s.quant not in ("gptq", "awq"):
        group = [n for n in ("quant_bits", "quant_group") if n in names]
        if group:
            out.append(f"{flags(group)} ignored: {'they apply' if len(group) > 1 else 'it applies'} to --quant gptq "
                       f"or awq (a GPTQ/AWQ checkpoint's own quantization_config sets {'them' if len(group) > 1 else 'it'})")
    if "frozen_dtype" in names and given["frozen_dtype"] == "fp32" and s.training and not s.mixed:
        out.append(f"--frozen-dtype fp32 ignored: --precision {s.precision} converts the whole model to "
                   f"{s.compute_dtype} (fp32 frozen weights go with -mixed precision, as LitGPT's bf16-mixed)")
    if "fp32_norms_embeddings" in names and given["fp32_norms_embeddings"] and s.training and s.method == "full" \
            and s.mixed:
        out.append(f"--fp32-norms-embeddings ignored: --precision {s.precision} full fine-tuning keeps every weight "
                   "in fp32 already")
    if not s.quantized:
        base_q = [n for n in ("quant_skip", "quant_head") if n in names and given[n]]
        if base_q:
            out.append(f"{flags(base_q)} ignored: --quant none has no quantized weights")
    if s.training:
        serve_only = [n for n in ("cache", "cache_len", "logits") if n in names]
        if serve_only:
            out.append(f"{flags(serve_only)} ignored: {'they are inference options' if len(serve_only) > 1 else 'an inference option'} "
                       f"(--method inference); --method {s.method} trains")
    else:
        train_only = [n for n in ("act_offload", "optim_in_bwd", "adapter_dtype", "frozen_dtype", "prompt_tokens",
                                  "logits_to_keep", "fp32_norms_embeddings") if n in names and given[n] not in (False, "auto", "compute", 0)]
        if train_only:
            out.append(f"{flags(train_only)} ignored: --method inference does not train")
    if s.quant not in ("nf4", "fp4"):
        four_bit = [n for n in ("double_quant", "quant_blocksize") if n in names]
        if four_bit:
            out.append(f"{flags(four_bit)} ignored: {'they apply' if len(four_bit) > 1 else 'it applies'} to 4-bit "
                       "quantization (--quant nf4 or fp4), "
                       f"not --quant {s.quant}")
    return out
