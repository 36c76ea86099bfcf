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
Kind = Literal["choice", "int", "number", "bool", "flag", "str", "list", "layers", "size-or-name", "margin",
               "pattern", "tokens"]
KINDS: tuple[str, ...] = ("choice", "int", "number", "bool", "flag", "str", "list", "layers", "size-or-name",
                          "margin", "pattern", "tokens")

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
            ``size-or-name`` (a card or a size), ``margin`` (``10%`` or ``0.1``), ``pattern`` (module names or
            regexes to numbers: ``q_proj=64,v_proj=32`` on the command line, a mapping in plan files; PEFT's
            ``rank_pattern``), ``tokens`` (token indices, optionally per module: ``0,1,5-9`` or
            ``embed_tokens=0-9,lm_head=0-9``, a list or a mapping in plan files; PEFT's
            ``trainable_token_indices``).
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


#: bounds of the ``pattern`` and ``tokens`` readers (a pasted file must not build a million-entry table)
MAX_PATTERN_TEXT = 100_000
MAX_PATTERN_ENTRIES = 10_000
MAX_TOKEN_INDICES = 1 << 20
MAX_TOKEN_INDEX = (1 << 31) - 1

_PATTERN_HOW = "write NAME=NUMBER items such as q_proj=64,v_proj=32 (a mapping in a plan file)"
_TOKENS_HOW = "write token indices such as 0,1,5-9, or MODULE=INDICES groups such as embed_tokens=0-9,lm_head=0-9"


def _pattern_number(text: str) -> int | float | None:
    t = text.strip()
    if t.removeprefix("-").isdecimal() and len(t) <= 20:
        return int(t)
    try:
        x = float(t)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def read_pattern(v: Any) -> tuple[tuple[str, int | float], ...]:
    """A ``pattern`` value -> ``((key, number), ...)`` in the order given (PEFT's ``get_pattern_key`` takes the
    first key that matches, so order matters).

    Accepts a mapping (plan files, PEFT's ``rank_pattern``), a sequence of ``(key, number)`` pairs, or the
    command-line text ``KEY=NUMBER,KEY=NUMBER``. A key may hold ``,`` and ``=`` (a regex such as
    ``layers\\.{0,3}``): the text is cut at each comma after which the collected part ends in ``=NUMBER``.

    Raises:
        ValueError: a value of the wrong shape, quoted, with how to write it.
    """
    pairs: list[tuple[Any, Any]]
    if isinstance(v, str):
        if len(v) > MAX_PATTERN_TEXT:
            raise ValueError(f"must be at most {MAX_PATTERN_TEXT:,} characters, got {len(v):,}")
        pairs, part = [], None
        for piece in v.split(","):
            part = f"{part},{piece}" if part else piece       # an empty item (a doubled comma) is skipped
            key, eq, num = part.rpartition("=")
            if eq and key.strip() and _pattern_number(num) is not None:
                pairs.append((key.strip(), _pattern_number(num)))
                part = None
        if part is not None and part.strip():
            raise ValueError(f"item {brief(part.strip())} is not NAME=NUMBER: {_PATTERN_HOW}")
    elif isinstance(v, dict) or (hasattr(v, "items") and hasattr(v, "keys")):
        pairs = list(v.items())
    elif isinstance(v, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in v):
        pairs = [tuple(p) for p in v]
    else:
        raise ValueError(f"must be a mapping of module names or regexes to numbers, got {brief(v)}: {_PATTERN_HOW}")
    if len(pairs) > MAX_PATTERN_ENTRIES:
        raise ValueError(f"must have at most {MAX_PATTERN_ENTRIES:,} entries, got {len(pairs):,}")
    out: dict[str, int | float] = {}
    for key, num in pairs:
        if not isinstance(key, str) or not key.strip() or len(key) > 1000:
            raise ValueError(f"key {brief(key)} must be a module name or regex (1 to 1,000 characters)")
        given = num
        if isinstance(num, str):
            num = _pattern_number(num)
        if isinstance(num, bool) or not isinstance(num, (int, float)) or not _finite_number(num):
            raise ValueError(f"value of {brief(key)} must be a number, got {brief(given)}")
        out[key] = num          # a repeated key keeps its first place and its last value, as a dict does
    return tuple(out.items())


def _finite_number(x: int | float) -> bool:
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _token_indices(v: Any, where: str) -> tuple[int, ...]:
    if isinstance(v, bool):
        raise ValueError(f"{where}must be token indices, got {brief(v)}: {_TOKENS_HOW}")
    if isinstance(v, int):
        v = [v]
    if isinstance(v, str):
        items: list[int] = []
        for part in (p.strip() for p in v.split(",")):
            if not part:
                continue
            lo_s, dash, hi_s = part.partition("-")
            if not lo_s.strip().isdecimal() or (dash and not hi_s.strip().isdecimal()) \
                    or len(lo_s.strip()) > 12 or len(hi_s.strip()) > 12:
                raise ValueError(f"{where}{brief(part)} is not a token index or a range low-high: {_TOKENS_HOW}")
            lo = int(lo_s)
            hi = int(hi_s) if dash else lo
            if lo > hi:
                raise ValueError(f"{where}token range {brief(part)} runs high to low: write low-high")
            if hi > MAX_TOKEN_INDEX or len(items) + hi - lo + 1 > MAX_TOKEN_INDICES:
                raise ValueError(f"{where}{brief(part)}: at most {MAX_TOKEN_INDICES:,} token indices, each below "
                                 f"2**31")
            items.extend(range(lo, hi + 1))
        return tuple(items)
    if isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        if len(v) > MAX_TOKEN_INDICES:
            raise ValueError(f"{where}at most {MAX_TOKEN_INDICES:,} token indices, got {len(v):,}")
        bad = next((x for x in v if not 0 <= x <= MAX_TOKEN_INDEX), None)
        if bad is not None:
            raise ValueError(f"{where}token index {bad!r} must be from 0 to 2**31 - 1")
        return tuple(v)
    raise ValueError(f"{where}must be token indices, got {brief(v)}: {_TOKENS_HOW}")


def read_tokens(v: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """A ``tokens`` value -> ``((module, indices), ...)``, module ``""`` for "the input embedding" (PEFT's
    ``trainable_token_indices`` as a list); a mapping names modules (matched by name suffix, as PEFT does).

    Accepts a list of indices, a mapping ``{module: indices}``, or the command-line text ``0,1,5-9`` /
    ``embed_tokens=0-9,lm_head=0-9`` (an item with ``=`` starts a module's group).

    Raises:
        ValueError: a value of the wrong shape, quoted, with how to write it.
    """
    if isinstance(v, str):
        if len(v) > MAX_PATTERN_TEXT:
            raise ValueError(f"must be at most {MAX_PATTERN_TEXT:,} characters, got {len(v):,}")
        if "=" not in v:
            return (("", _token_indices(v, "")),)
        groups: dict[str, list[str]] = {}
        current: list[str] | None = None
        for piece in v.split(","):
            name, eq, rest = piece.partition("=")
            if eq:
                if not name.strip():
                    raise ValueError(f"{brief(piece)} names no module: {_TOKENS_HOW}")
                current = groups.setdefault(name.strip(), [])
                current.append(rest)
            elif current is None:
                raise ValueError(f"{brief(v)} mixes bare indices and MODULE=INDICES groups: {_TOKENS_HOW}")
            else:
                current.append(piece)
        return tuple((k, _token_indices(",".join(p), f"{k}: ")) for k, p in groups.items())
    if isinstance(v, dict) or (hasattr(v, "items") and hasattr(v, "keys")):
        if len(v) > MAX_PATTERN_ENTRIES:
            raise ValueError(f"must name at most {MAX_PATTERN_ENTRIES:,} modules, got {len(v):,}")
        out = []
        for k, idx in v.items():
            if not isinstance(k, str) or not k.strip() or len(k) > 1000:
                raise ValueError(f"module {brief(k)} must be a module name (1 to 1,000 characters)")
            out.append((k.strip(), _token_indices(idx, f"{k}: ")))
        return tuple(out)
    if isinstance(v, (list, tuple)) and v and all(isinstance(p, (list, tuple)) and len(p) == 2
                                                 and isinstance(p[0], str) for p in v):
        return tuple((k, _token_indices(idx, f"{k}: ")) for k, idx in v)
    return (("", _token_indices(v, "")),)


def value_text(o: Option, value: Any) -> str | None:
    """A ``pattern`` or ``tokens`` value as its command-line text (``q_proj=64,v_proj=32``;
    ``0,1,2`` or ``embed_tokens=0,1,lm_head=2``), which :func:`read_pattern` / :func:`read_tokens` read back;
    ``None`` when empty. For a table column (the sweep's)."""
    if not value:
        return None
    if o.kind == "pattern":
        return ",".join(f"{k}={v!r}" for k, v in value)
    if o.kind == "tokens":
        return ",".join(",".join(map(str, idx)) if not k else f"{k}=" + ",".join(map(str, idx)) for k, idx in value)
    raise ValueError(f"option {brief(o.name)}: value_text reads pattern and tokens options, not {brief(o.kind)}")


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
            "layers": read_layers, "margin": read_margin, "pattern": read_pattern, "tokens": read_tokens}[o.kind](value)
