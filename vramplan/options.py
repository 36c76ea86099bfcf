"""Options declared once: a dataclass field carries its option's help, kind, choices and default.

peft's ``LoraConfig`` fields carry ``metadata={"help": ...}``; vramplan's :class:`~vramplan.setup.Setup` and
:class:`~vramplan.lora.LoraConfig` fields carry an :class:`Option` the same way (:func:`option`). Everything
that spells an option is derived from these declarations (:func:`options_of`): the command-line options of
``plan``, ``fit``, ``profile`` and ``sweep`` (``vramplan/cli/options.py``), the sweep axes and the sweep table's
columns, and the keys of plan files (``vramplan/planner.py``). Option names are a contract: scripts, plan files
and CI depend on them.

This module is a leaf (it imports only :mod:`vramplan.errors` and :func:`vramplan.io.brief`), so that the
dataclasses it describes can use it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

from .errors import close_matches
from .io import brief

#: how an option's value is written and read: a command-line value or a plan-file value
Kind = Literal["choice", "int", "number", "bool", "flag", "str", "list", "layers", "size-or-name", "margin"]
KINDS: tuple[str, ...] = ("choice", "int", "number", "bool", "flag", "str", "list", "layers", "size-or-name",
                          "margin")

#: a field's metadata key holding its :class:`Option`
METADATA_KEY = "vramplan_option"


@dataclass(frozen=True)
class Option:
    """One option of a setup.

    Attributes:
        name: the option's name with underscores: the Python keyword, the plan-file key and the sweep column
            (``quant_blocksize``); the command-line flag is ``--quant-blocksize``.
        kind: how a value is written: ``choice`` (one of ``choices``), ``int``, ``number`` (a float), ``bool``
            (``--x/--no-x`` on the command line, ``true``/``false`` in a sweep), ``flag`` (``--x`` only),
            ``str``, ``list`` (comma-separated names), ``layers`` (indices such as ``0,1,4-7``),
            ``size-or-name`` (a card or a size), ``margin`` (``10%`` or ``0.1``).
        help: one sentence for ``--help``.
        default: the value when the option is not given. ``None`` means "decided elsewhere": by
            :meth:`Setup.create <vramplan.setup.Setup.create>` from the method (``quant``, ``grad_ckpt``), or,
            for a LoRA option, PEFT's default (``help`` says which).
        choices: the accepted values of a ``choice`` option.
        field: the dataclass field the option sets, when it is not ``name`` (``rank`` sets ``LoraConfig.r``).
        short: a one-letter alias such as ``-r``.
        repeat_only: a single value already holds commas (a list of targets), so a sweep takes alternatives by
            repeating the option rather than as a comma list.
    """

    name: str
    kind: str
    help: str
    default: Any = None
    choices: tuple[str, ...] = ()
    field: str = ""
    short: str | None = None
    repeat_only: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {brief(self.name)}: kind {brief(self.kind)} is not one of {', '.join(KINDS)}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"option {brief(self.name)}: choices go with kind 'choice' and only with it")
        if not self.field:
            object.__setattr__(self, "field", self.name)

    @property
    def flag(self) -> str:
        """``--quant-blocksize``."""
        return "--" + self.name.replace("_", "-")


def option(default: Any = dataclasses.MISSING, *, kind: str, help: str, name: str | None = None,
           choices: tuple[str, ...] = (), unset: bool = False, short: str | None = None,
           repeat_only: bool = False) -> Any:
    """A dataclass field declaring its option (``name`` defaults to the field's own name).

    ``default`` is the field's default; the option's default is the same unless ``unset`` (the option is
    ``None`` when not given, and the dataclass or :meth:`Setup.create` fills the value: a method-dependent
    default, or PEFT's).
    """
    spec = {"kind": kind, "help": help, "name": name, "choices": tuple(choices), "short": short,
            "repeat_only": repeat_only, "default": None if unset else default}
    return dataclasses.field(default=default, metadata={METADATA_KEY: spec})


@functools.cache
def options_of(cls: type) -> tuple[Option, ...]:
    """The options a dataclass declares with :func:`option`, in field order (computed once per class: setup
    validation reads it for every setup a sweep builds)."""
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(METADATA_KEY)
        if spec is None:
            continue
        spec = dict(spec)
        name = spec.pop("name") or f.name
        out.append(Option(name=name, field=f.name, **spec))
    return tuple(out)


# ------------------------------------------------------------------------------------ reading values
# Plan files (YAML/JSON) give typed values; a command line gives strings. These read either into the form
# the command line passes on (lists and layer indices stay comma strings), raising ValueError with a message
# that quotes the value and says how to write it.
def read_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return v.strip().lower() in ("true", "yes", "on", "1")
    raise ValueError(f"must be true or false, got {brief(v)}")


def read_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(f"must be an integer, got {brief(v)}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().removeprefix("-").isdecimal():
        if len(v.strip()) > 4000:           # int() refuses beyond sys.get_int_max_str_digits()
            raise ValueError(f"must be an integer, got a {len(v.strip()):,}-digit number")
        return int(v.strip())
    raise ValueError(f"must be an integer, got {brief(v)}")


def read_number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"must be a number, got {brief(v)}")
    try:
        return float(v)
    except (ValueError, OverflowError):       # OverflowError: an integer beyond float range
        raise ValueError(f"must be a number, got {brief(v)}") from None


def read_list(v: Any) -> str:
    """A list of names or a comma string -> the comma string the CLI option takes."""
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return ",".join(v)
    raise ValueError(f"must be a list of names or a comma-separated string, got {brief(v)}")


def read_layers(v: Any) -> str:
    if isinstance(v, bool):
        raise ValueError(f"must be layer indices such as [0, 1] or '0,1,4-7', got {brief(v)}")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return ",".join(map(str, v))
    raise ValueError(f"must be layer indices such as [0, 1] or '0,1,4-7', got {brief(v)}")


def read_margin(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(f"must be a percentage such as 10% or a fraction such as 0.1, got {brief(v)}")
    if isinstance(v, (int, float)):
        value = float(v) if not isinstance(v, int) or abs(v) < 10**300 else math.inf
    elif isinstance(v, str):
        t = v.strip()
        try:
            value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
        except ValueError:
            raise ValueError(f"must be a percentage such as 10% or a fraction such as 0.1, got {brief(v)}") from None
    else:
        raise ValueError(f"must be a percentage such as 10% or a fraction such as 0.1, got {brief(v)}")
    if not 0 <= value < 1:
        bare = not (isinstance(v, str) and v.strip().endswith("%"))
        if bare and 1 <= value < 100:
            shown = f"{value:g}"
            raise ValueError(f"must be a fraction below 1 or a percentage, got {brief(v)}: for {shown} percent "
                             f"write {shown}% (or {value / 100:g})")
        raise ValueError(f"must be between 0% and 100% (a fraction from 0 to below 1), got {brief(v)}")
    return value


def read_value(o: Option, value: Any) -> Any:
    """A plan-file value of option ``o``, checked and read by its kind.

    Raises:
        ValueError: a value of the wrong kind, quoted, with what ``o`` accepts.
    """
    if o.kind in ("str", "size-or-name"):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"must be a string, got {brief(value)}")
        return str(value)
    if o.kind == "choice":
        if not isinstance(value, str) or value.lower() not in o.choices:
            raise ValueError(f"{brief(value)} is not one of: {', '.join(o.choices)}{close_matches(str(value), o.choices)}")
        return value.lower()
    return {"bool": read_bool, "flag": read_bool, "int": read_int, "number": read_number, "list": read_list,
            "layers": read_layers, "margin": read_margin}[o.kind](value)
