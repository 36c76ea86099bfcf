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
