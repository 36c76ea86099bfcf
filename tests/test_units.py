"""``vramplan.units``: GB (10**9) vs GiB (2**30) pinned by exact integers, and property tests of the parser.

Expected values are first principles: 24 GB = 24 * 10**9 B, 24 GiB = 24 * 2**30 B, and a bare ``G`` is read
as GiB (nvidia-smi's and torch's convention), so 80G = 80 * 2**30 B.
"""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vramplan.errors import VramplanError
from vramplan.units import SizeError, format_bytes, parse_size, read_size

# written unit -> (bytes per unit, written out by hand; the unit it means)
UNITS = {
    "B": (1, "B"),
    "KB": (1_000, "KB"), "MB": (1_000_000, "MB"), "GB": (1_000_000_000, "GB"), "TB": (1_000_000_000_000, "TB"),
    "KiB": (1_024, "KiB"), "MiB": (1_048_576, "MiB"), "GiB": (1_073_741_824, "GiB"),
    "TiB": (1_099_511_627_776, "TiB"),
    "K": (1_024, "KiB"), "M": (1_048_576, "MiB"), "G": (1_073_741_824, "GiB"), "T": (1_099_511_627_776, "TiB"),
}


# ---------------------------------------------------------------------------------------------- pinned
@pytest.mark.parametrize("text,n_bytes,unit,binary", [
    ("24GB", 24_000_000_000, "GB", False),
    ("24GiB", 25_769_803_776, "GiB", True),
    ("80G", 85_899_345_920, "GiB", True),     # a bare G is binary
    ("24 gb", 24_000_000_000, "GB", False),   # case and a space do not matter
    ("80GB", 80_000_000_000, "GB", False),
    ("0.5GiB", 536_870_912, "GiB", True),
    ("0.1GB", 100_000_000, "GB", False),      # exact: float(0.1) * 10**9 is 100000000.00000001
    ("512MiB", 536_870_912, "MiB", True),
    ("1024B", 1_024, "B", False),
])
def test_parse_size_pinned(text, n_bytes, unit, binary):
    assert parse_size(text) == n_bytes
    size = read_size(text)
    assert (size.bytes, size.unit, size.binary) == (n_bytes, unit, binary)


def test_read_size_says_which_unit_it_read():
    assert read_size("80G").describe() == "80G = 80 GiB = 85,899,345,920 B"
    assert read_size("24GB").describe() == "24GB = 24 GB = 24,000,000,000 B"
    assert read_size("24GiB").describe() == "24GiB = 24 GiB = 25,769,803,776 B"
    assert read_size("80G").written == "G" and read_size("80G").number == "80"


@pytest.mark.parametrize("text,fragment", [
    ("24", "has no unit"),          # never silently 24 bytes
    ("24XB", "unknown unit 'XB'"),
    ("GB", "cannot read size"),
    ("-24GB", "cannot read size"),
    ("1e9B", "cannot read size"),
    ("24,000GB", "cannot read size"),
    ("0GB", "at least one byte"),
    ("0.4B", "at least one byte"),  # rounds to 0 bytes
    ("", "cannot read size"),
])
def test_bad_sizes_raise_size_error(text, fragment):
    with pytest.raises(SizeError, match=re.escape(fragment)):
        parse_size(text)


def test_size_error_is_the_library_error_the_cli_maps_to_exit_2():
    assert issubclass(SizeError, VramplanError)


# ------------------------------------------------------------------------------------------ properties
unit_names = st.sampled_from(sorted(UNITS))
counts = st.integers(min_value=1, max_value=10**30)


def _spell(unit: str, draw_case: int) -> str:
    return [unit, unit.lower(), unit.upper()][draw_case]


@given(n=counts, unit=unit_names, case=st.integers(0, 2),
       pad=st.tuples(st.sampled_from(["", " ", "\t"]), st.sampled_from(["", " "]), st.sampled_from(["", " "])))
def test_integer_sizes_are_exact_in_every_unit(n, unit, case, pad):
    scale, meant = UNITS[unit]
    text = f"{pad[0]}{n}{pad[1]}{_spell(unit, case)}{pad[2]}"
    size = read_size(text)
    assert size.bytes == n * scale, f"{text!r}: exact integer arithmetic, no float rounding"
    assert size.unit == meant
    assert size.binary == meant.endswith("iB")


@given(whole=st.integers(0, 10**6), frac=st.integers(0, 10**6), unit=unit_names)
def test_fractions_round_to_the_nearest_byte(whole, frac, unit):
    scale, _ = UNITS[unit]
    number = f"{whole}.{frac:06d}"
    exact = Fraction(number) * scale
    if round(exact) < 1:
        with pytest.raises(SizeError):
            parse_size(number + unit)
        return
    got = parse_size(number + unit)
    assert abs(got - exact) <= Fraction(1, 2), f"{number}{unit}: {got} is not the nearest byte to {exact}"


@given(n=st.integers(1, 2**60), unit=st.sampled_from(["KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"]),
       digits=st.integers(0, 6))
def test_format_bytes_round_trips_within_its_last_digit(n, unit, digits):
    scale, _ = UNITS[unit]
    text = format_bytes(n, unit, digits).replace(",", "")
    if Fraction(text.split()[0]) * scale < Fraction(1, 2):  # rendered as 0.00: nothing to read back
        return
    back = parse_size(text)
    # format_bytes rounds to `digits` decimals of `unit`: half a last digit, plus half a byte from parsing.
    assert abs(back - n) <= Fraction(scale, 2 * 10**digits) + Fraction(1, 2), (n, text, back)


@given(a=st.integers(1, 10**6), b=st.integers(1, 10**6))
def test_gib_is_larger_than_gb_and_sizes_are_monotone(a, b):
    assert parse_size(f"{a}GiB") > parse_size(f"{a}GB")
    assert (parse_size(f"{a}GB") < parse_size(f"{b}GB")) == (a < b)


garbage = st.text().filter(lambda s: not any(c.isdigit() for c in s))


@given(text=garbage)
def test_text_without_digits_is_rejected(text):
    with pytest.raises(SizeError):
        parse_size(text)


@given(n=counts, unit=st.text(alphabet=st.characters(categories=["L"], max_codepoint=127), min_size=1,
                              max_size=4).filter(lambda u: u.lower() not in {k.lower() for k in UNITS}))
def test_unknown_units_are_rejected_and_named(n, unit):
    with pytest.raises(SizeError, match="unknown unit"):
        parse_size(f"{n}{unit}")


@given(text=st.text(max_size=12))
def test_anything_parses_to_positive_bytes_or_raises_size_error(text):
    try:
        n = parse_size(text)
    except SizeError:
        return
    assert type(n) is int and n >= 1
