"""Units at the edge of vramplan.

Inside the library every size is an ``int`` number of bytes. Only renderers divide, and they label the
result correctly: a value divided by 2**30 is GiB, by 10**9 is GB (torchtune's ``_BYTES_IN_GIB = 1024**3``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import VramplanError

KiB = 2**10
MiB = 2**20
GiB = 2**30
TiB = 2**40
KB = 10**3
MB = 10**6
GB = 10**9
TB = 10**12

# unit (lower case) -> (bytes per unit, the unit as meant). A bare letter is read the way nvidia-smi, torch
# and most users mean it: binary, so "80G" is 80 GiB.
_UNITS: dict[str, tuple[int, str]] = {
    "b": (1, "B"),
    "kib": (KiB, "KiB"), "mib": (MiB, "MiB"), "gib": (GiB, "GiB"), "tib": (TiB, "TiB"),
    "kb": (KB, "KB"), "mb": (MB, "MB"), "gb": (GB, "GB"), "tb": (TB, "TB"),
    "k": (KiB, "KiB"), "m": (MiB, "MiB"), "g": (GiB, "GiB"), "t": (TiB, "TiB"),
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


class SizeError(VramplanError):
    """A size string that cannot be parsed."""


@dataclass(frozen=True)
class Size:
    """A size as read from text: its exact bytes and which unit the text meant."""

    bytes: int
    unit: str       # the unit as meant: "GB" (10**9), "GiB" (2**30), ..., "B"; a bare "G" means "GiB"
    written: str    # the unit as written: "GB", "gib", "G", "b"
    number: str     # the number as written: "24", "1.5"

    @property
    def binary(self) -> bool:
        """True for KiB/MiB/GiB/TiB (powers of 2**10), False for KB/MB/GB/TB (powers of 10**3) and bytes."""
        return self.unit.endswith("iB")

    def describe(self) -> str:
        """``"80G = 80 GiB = 85,899,345,920 B"``: what was written, how it was read, the exact bytes."""
        written = f"{self.number}{self.written}"
        read = f"{self.number} {self.unit}"
        return f"{written} = {self.bytes:,} B" if self.unit == "B" else f"{written} = {read} = {self.bytes:,} B"


def read_size(text: str) -> Size:
    """Parse a size like :func:`parse_size` and say which unit it was read in.

    ``read_size("80G")`` is ``Size(bytes=85_899_345_920, unit="GiB", written="G", number="80")``.

    Raises:
        SizeError: the text is not a number followed by one of the units :func:`parse_size` lists, or it is
            less than one byte.
    """
    m = _SIZE_RE.match(str(text))
    if not m:
        raise SizeError(f"cannot read size {text!r}: write a number and a unit such as 24GB, 24GiB or 80G")
    number, written = m.group(1), m.group(2)
    if not written:
        # A bare number is refused, not read as bytes: "--gpu 24" almost always means 24 GB or 24 GiB.
        raise SizeError(f"size {text!r} has no unit: write {number}GB (10**9 B), {number}GiB (2**30 B) "
                        f"or {number}B")
    if written.lower() not in _UNITS:
        raise SizeError(
            f"unknown unit {written!r} in size {text!r}: use B, KB, MB, GB, TB (10**3 steps), "
            "KiB, MiB, GiB, TiB (2**10 steps) or K, M, G, T (binary)"
        )
    scale, unit = _UNITS[written.lower()]
    # Exact arithmetic: "0.1GB" is 100,000,000 B and a 20-digit byte count stays exact (a float would not).
    from fractions import Fraction  # exact; imported here: every command imports this module

    n_bytes = round(Fraction(number) * scale)
    if n_bytes < 1:
        raise SizeError(f"size {text!r} must be at least one byte")
    return Size(bytes=n_bytes, unit=unit, written=written, number=number)


def parse_size(text: str) -> int:
    """Parse ``"24GB"``, ``"24GiB"``, ``"80G"``, ``"512MiB"`` or ``"1024B"`` into bytes.

    GB/MB/KB/TB are decimal (10**9 ...), GiB/MiB/KiB/TiB binary (2**30 ...); a bare ``G``/``M``/``K``/``T``
    is binary, as ``nvidia-smi`` and PyTorch report memory; ``B`` is bytes. A number without a unit is
    refused (``--gpu 24`` means 24 GB or 24 GiB, never 24 bytes). Units are case-insensitive; a fraction is
    rounded to the nearest byte. :func:`read_size` also says which unit the text was read in.

    Raises:
        SizeError: the text is not a number followed by one of the units above, or is less than one byte.
    """
    return read_size(text).bytes


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
    # exact integer arithmetic (a float quotient is off by bytes above 2**53 B), rounding half to even as format()
    q, r = divmod(abs(n_bytes) * 10**digits, scale[unit])
    if 2 * r > scale[unit] or (2 * r == scale[unit] and q % 2):
        q += 1
    whole, frac = divmod(q, 10**digits)
    sign = "-" if n_bytes < 0 and q else ""
    return f"{sign}{whole:,}" + (f".{frac:0{digits}d}" if digits else "") + f" {unit}"


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling division for non-negative ints."""
    return -(-a // b)


def round_up(n: int, multiple: int) -> int:
    """Round ``n`` up to a multiple of ``multiple``."""
    return ceil_div(n, multiple) * multiple
