"""Units at the edge of vramplan.

Inside the library every size is an ``int`` number of bytes. Only renderers divide, and they label the
result correctly: a value divided by 2**30 is GiB, by 10**9 is GB (torchtune's ``_BYTES_IN_GIB = 1024**3``).
"""

from __future__ import annotations

import re

from .errors import VramplanError

KiB = 2**10
MiB = 2**20
GiB = 2**30
TiB = 2**40
KB = 10**3
MB = 10**6
GB = 10**9
TB = 10**12

_UNITS = {
    "b": 1,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
    "kb": KB, "mb": MB, "gb": GB, "tb": TB,
    # A bare letter is read the way nvidia-smi, torch and most users mean it: binary. "80G" = 80 GiB.
    "k": KiB, "m": MiB, "g": GiB, "t": TiB,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


class SizeError(VramplanError):
    """A size string that cannot be parsed."""


def parse_size(text: str) -> int:
    """Parse ``"24GB"``, ``"24GiB"``, ``"80G"``, ``"512MiB"`` or a plain byte count into bytes.

    GB/MB/KB/TB are decimal (10**9 ...), GiB/MiB/KiB/TiB binary (2**30 ...); a bare ``G``/``M``/``K``/``T``
    is binary, as ``nvidia-smi`` and PyTorch report memory. A number without unit is bytes.

    Raises:
        SizeError: the text is not a number followed by one of the units above.
    """
    m = _SIZE_RE.match(str(text))
    if not m:
        raise SizeError(f"cannot read size {text!r}: write a number and a unit such as 24GB, 24GiB or 80G")
    number, unit = m.group(1), m.group(2).lower()
    if unit not in _UNITS:
        raise SizeError(
            f"unknown unit {m.group(2)!r} in size {text!r}: use B, KB, MB, GB, TB (10**3 steps), "
            "KiB, MiB, GiB, TiB (2**10 steps) or K, M, G, T (binary)"
        )
    value = float(number) * _UNITS[unit]
    if value <= 0:
        raise SizeError(f"size {text!r} must be greater than zero")
    return int(round(value))


def gib(n_bytes: int) -> float:
    """Bytes to GiB (2**30) as a float, for rendering only."""
    return n_bytes / GiB


def format_bytes(n_bytes: int, unit: str = "GiB", digits: int = 2) -> str:
    """Render bytes in one labelled unit: ``format_bytes(2**30) == "1.00 GiB"``."""
    scale = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB, "KB": KB, "MB": MB, "GB": GB, "TB": TB}
    if unit not in scale:
        raise ValueError(f"unknown unit {unit!r}; choose one of {', '.join(scale)}")
    if unit == "B":
        return f"{n_bytes:,} B"
    return f"{n_bytes / scale[unit]:,.{digits}f} {unit}"


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling division for non-negative ints."""
    return -(-a // b)


def round_up(n: int, multiple: int) -> int:
    """Round ``n`` up to a multiple of ``multiple``."""
    return ceil_div(n, multiple) * multiple
