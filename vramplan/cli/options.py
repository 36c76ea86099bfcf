"""Command-line options shared by several commands (``params``, ``plan``, ``fit``, ``gpus``, ``profile``).

Every option is derived from its declaration (:data:`vramplan.setup.SETUP_OPTIONS`, the fields of ``Setup``
and ``LoraConfig``; :data:`vramplan.setup.RUN_OPTIONS`): names, help, choices and defaults are spelled there
once. Option names are a contract: scripts and CI depend on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..options import Option
from ..setup import LORA_OPTIONS, SETUP_OPTIONS, lora_from_options, option_named
from ..setup import setup_from_options as _setup_from_options


def click_option(o: Option, help: str | None = None, **overrides: Any) -> Callable[[Any], Any]:
    """The click option of a declared option: ``--x/--no-x`` for a boolean, a case-insensitive choice, a
    default shown when there is one."""
    flags = [f"{o.flag}/--no-{o.flag[2:]}" if o.kind == "bool" else o.flag]
    if o.short:
        flags.append(o.short)
    kw: dict[str, Any] = {"default": o.default, "help": help or o.help}
    if o.kind == "flag":
        kw["is_flag"] = True
    elif o.kind != "bool":
        kw["type"] = click_type(o)
    if o.default is not None and o.default is not False:
        kw["show_default"] = True
    kw.update(overrides)
    return click.option(*flags, o.name, **kw)


def click_type(o: Option) -> click.ParamType:
    """The click type that reads one value of ``o`` (lists and layer indices are read as strings)."""
    if o.kind == "choice":
        return click.Choice(o.choices, case_sensitive=False)
    return {"int": click.INT, "number": click.FLOAT, "bool": click.BOOL}.get(o.kind, click.STRING)


def apply(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorator(fn: Any) -> Any:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorator


def setup_option_list(exclude: tuple[str, ...] = ()) -> list[Callable[[Any], Any]]:
    """The click options of every setup option (:data:`vramplan.setup.SETUP_OPTIONS`), in order."""
    return [click_option(o) for o in SETUP_OPTIONS if o.name not in exclude]


lora_options = apply([click_option(o) for o in LORA_OPTIONS])
trust_option = click_option(option_named("trust_remote_code"))
gpu_option = click_option(option_named("gpu"))
margin_option = click_option(option_named("margin"))
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")


def plan_options(fn: Any) -> Any:
    """The shared options of plan and fit: setup options, LoRA options, --gpu, --trust-remote-code."""
    return apply([*setup_option_list(), gpu_option, trust_option])(fn)


def lora_config_from(opts: dict[str, Any]):
    """A :class:`vramplan.lora.LoraConfig` from CLI options, or ``None`` when no LoRA option was given."""
    try:
        return lora_from_options(opts)
    except ValueError as exc:          # a layer list that cannot be read
        raise click.BadParameter(str(exc), param_hint="--layers-to-transform") from None


def setup_from_options(opts: dict[str, Any]):
    """A validated :class:`vramplan.setup.Setup` from the parsed plan options."""
    try:
        return _setup_from_options(opts)
    except ValueError as exc:          # a layer list that cannot be read
        raise click.BadParameter(str(exc), param_hint="--layers-to-transform") from None
