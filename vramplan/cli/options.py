"""Options shared by several commands (``params``, ``plan``, ``fit``, ``sweep``, ``profile``).

Option names are a contract: scripts and CI depend on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def split_list(value: str | None) -> tuple[str, ...] | None:
    """``"q_proj, v_proj"`` -> ``("q_proj", "v_proj")``; ``None``/empty -> ``None``."""
    if value is None:
        return None
    items = tuple(v.strip() for v in str(value).split(",") if v.strip())
    return items or None


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    """``"0,1,4-7"`` -> ``(0, 1, 4, 5, 6, 7)``."""
    if value is None:
        return None
    out: list[int] = []
    for part in str(value).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise click.BadParameter(f"cannot read layer list {value!r}: write indices such as 0,1,4-7",
                                     param_hint="--layers-to-transform") from None
    return tuple(out)


LORA_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--rank", "-r", type=int, default=None,
                 help="LoRA rank r (PEFT default 8)."),
    click.option("--alpha", type=float, default=None, help="LoRA alpha (PEFT default 8; no effect on memory)."),
    click.option("--targets", default=None,
                 help="Comma list of module-name suffixes, or all-linear (PEFT default for the family, "
                      "e.g. q_proj,v_proj)."),
    click.option("--target-regex", default=None,
                 help="Full-match regex over module names (PEFT's target_modules as a string)."),
    click.option("--modules-to-save", default=None,
                 help="Comma list of modules trained in full as copies (e.g. embed_tokens,lm_head)."),
    click.option("--layers-to-transform", default=None, help="Only these layer indices, e.g. 0,1,4-7."),
    click.option("--dora/--no-dora", default=False, help="DoRA: adds a magnitude vector per adapted module."),
    click.option("--lora-dropout", type=float, default=None,
                 help="LoRA dropout (PEFT default 0; > 0 saves a dropped copy of each adapted input)."),
]


def apply(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorator(fn: Any) -> Any:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorator


lora_options = apply(LORA_OPTIONS)


def lora_config_from(opts: dict[str, Any]):
    """A :class:`vramplan.lora.LoraConfig` from CLI options, or ``None`` when no LoRA option was given."""
    from ..lora import LoraConfig

    keys = ("rank", "alpha", "targets", "target_regex", "modules_to_save", "layers_to_transform", "lora_dropout")
    if all(opts.get(k) is None for k in keys) and not opts.get("dora"):
        return None
    kwargs: dict[str, Any] = {}
    if opts.get("rank") is not None:
        kwargs["r"] = opts["rank"]
    if opts.get("alpha") is not None:
        kwargs["alpha"] = opts["alpha"]
    if opts.get("targets") is not None:
        kwargs["targets"] = split_list(opts["targets"])
    if opts.get("target_regex") is not None:
        kwargs["target_regex"] = opts["target_regex"]
    if opts.get("modules_to_save") is not None:
        kwargs["modules_to_save"] = split_list(opts["modules_to_save"]) or ()
    if opts.get("layers_to_transform") is not None:
        kwargs["layers_to_transform"] = parse_layers(opts["layers_to_transform"])
    if opts.get("lora_dropout") is not None:
        kwargs["dropout"] = opts["lora_dropout"]
    kwargs["dora"] = bool(opts.get("dora"))
    return LoraConfig(**kwargs)


trust_option = click.option("--trust-remote-code", is_flag=True, default=False,
                            help="Allow a model folder's own modeling code (auto_map) for shapes.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")


# --------------------------------------------------------------------------------------------- plan options
def _choice(choices: tuple[str, ...]) -> click.Choice:
    return click.Choice(choices, case_sensitive=False)


def plan_option_specs() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """The plan options as data, so that ``sweep`` can declare the same names taking comma lists."""
    from ..setup import ATTNS, LOSSES, METHODS, OFFLOADS, OPTIMS, PRECISIONS, QUANTS, STRATEGIES

    return [
        (("--method",), dict(type=_choice(METHODS), default="lora", show_default=True,
                             help="Training method, or inference (prefill + decode).")),
        (("--quant",), dict(type=_choice(QUANTS), default=None,
                            help="Base-weight quantization (bitsandbytes); qlora defaults to nf4.")),
        (("--double-quant/--no-double-quant",), dict(default=True, show_default=True,
                                                     help="bnb_4bit_use_double_quant.")),
        (("--quant-blocksize",), dict(type=int, default=64, show_default=True, help="4-bit quantization block size.")),
        (("--precision",), dict(type=_choice(PRECISIONS), default="bf16-mixed", show_default=True,
                                help="mixed = autocast with fp32 trainable weights (HF Trainer bf16=True); "
                                     "true = everything in that dtype.")),
        (("--batch",), dict(type=int, default=1, show_default=True, help="Sequences per step (per GPU).")),
        (("--seq",), dict(type=int, default=2048, show_default=True,
                          help="Tokens per sequence (inference: prompt + generated).")),
        (("--grad-ckpt/--no-grad-ckpt",), dict(default=None,
                                               help="Gradient checkpointing (default: on for qlora, as "
                                                    "prepare_model_for_kbit_training does; off otherwise).")),
        (("--attn",), dict(type=_choice(ATTNS), default="sdpa", show_default=True, help="Attention kernel.")),
        (("--optim",), dict(type=_choice(OPTIMS), default="adamw", show_default=True,
                            help="Optimizer (adamw = torch fused AdamW, the HF Trainer default).")),
        (("--loss",), dict(type=_choice(LOSSES), default="standard", show_default=True,
                           help="standard = full fp32 logits; chunked = fused linear cross-entropy.")),
        (("--new-tokens",), dict(type=int, default=0, show_default=True,
                                 help="Inference: tokens generated after the prompt (part of --seq).")),
        (("--gpus",), dict(type=int, default=1, show_default=True, help="Number of GPUs (data parallel ranks).")),
        (("--strategy",), dict(type=_choice(STRATEGIES), default="ddp", show_default=True,
                               help="Multi-GPU strategy.")),
        (("--offload",), dict(type=_choice(OFFLOADS), default="none", show_default=True,
                              help="CPU offload (ZeRO / FSDP).")),
    ]


def plan_options(fn: Any) -> Any:
    """The shared options of plan, fit, profile: setup options, LoRA options, --gpu, --trust-remote-code."""
    opts = [click.option(*flags, **kw) for flags, kw in plan_option_specs()]
    opts += LORA_OPTIONS
    opts.append(click.option("--gpu", default=None,
                             help="A card from `vramplan gpus` (rtx-4090, a100-80gb, ...) or a size (24GB, 24GiB, 80G)."))
    opts.append(trust_option)
    return apply(opts)(fn)


SETUP_KEYS = ("method", "quant", "double_quant", "quant_blocksize", "precision", "batch", "seq", "grad_ckpt", "attn",
              "optim", "loss", "new_tokens", "gpus", "strategy", "offload")


def setup_from_options(opts: dict[str, Any]):
    """A validated :class:`vramplan.setup.Setup` from the parsed plan options."""
    from ..setup import Setup

    kwargs = {k: opts[k] for k in SETUP_KEYS if k in opts and opts[k] is not None}
    for k in ("method", "quant", "precision", "attn", "optim", "loss", "strategy", "offload"):
        if isinstance(kwargs.get(k), str):
            kwargs[k] = kwargs[k].lower()
    lora = lora_config_from(opts)
    return Setup.create(lora=lora, **kwargs)
