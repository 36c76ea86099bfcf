"""Property tests of the ``pattern`` and ``tokens`` option readers (``vramplan/options.py``): the command-line
text of a value reads back as the value, and any text either reads or raises a one-line ``ValueError``."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from vramplan.options import Option, read_pattern, read_tokens, value_text

#: regex-ish key characters: commas and braces included (``layers\.{0,3}``), "=" excluded (it ends a key); a key
#: does not start with a comma (an empty item, a doubled comma, is skipped)
_KEY = st.text(alphabet=string.ascii_letters + string.digits + r"._\{},()|*+?^$-", min_size=1, max_size=20) \
    .filter(lambda k: k.strip() == k and not k.startswith(","))
_RANK = st.integers(min_value=1, max_value=1 << 16)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_KEY, _RANK, min_size=1, max_size=6))
def test_pattern_text_round_trip(d: dict[str, int]) -> None:
    text = ",".join(f"{k}={v}" for k, v in d.items())
    assert read_pattern(text) == tuple(d.items())
    assert read_pattern(d) == tuple(d.items())
    assert read_pattern(value_text(Option("p", "pattern", ""), read_pattern(d))) == tuple(d.items())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=(1 << 31) - 1), min_size=1, max_size=30))
def test_token_list_round_trip(indices: list[int]) -> None:
    assert read_tokens(",".join(map(str, indices))) == (("", tuple(indices)),)
    assert value_text(Option("t", "tokens", ""), read_tokens(indices)) == ",".join(map(str, indices))
    assert read_tokens(indices) == (("", tuple(indices)),)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_][a-z_.]{0,10}", fullmatch=True),
                       st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8),
                       min_size=1, max_size=4))
def test_token_groups_round_trip(groups: dict[str, list[int]]) -> None:
    text = ",".join(f"{k}=" + ",".join(map(str, v)) for k, v in groups.items())
    assert read_tokens(text) == tuple((k, tuple(v)) for k, v in groups.items())
    assert value_text(Option("t", "tokens", ""), read_tokens(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_reads_or_is_one_line_value_error(text: str) -> None:
    for reader in (read_pattern, read_tokens):
        try:
            reader(text)
        except ValueError as exc:
            assert "\n" not in str(exc)


def test_ranges_are_bounded() -> None:
    import pytest

    with pytest.raises(ValueError, match="at most"):
        read_tokens("0-2000000")
    with pytest.raises(ValueError, match="at most 100,000 characters"):
        read_pattern("a=1," * 30_000)
