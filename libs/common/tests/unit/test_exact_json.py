"""JSON read exactly: integers beyond 64 bits stay integers, whether the text is bytes or str."""

from __future__ import annotations

import pytest
from cdp_common.db import has_long_digit_run, json_value


@pytest.mark.parametrize("as_bytes", [True, False])
def test_integers_beyond_64_bits_are_read_exactly(as_bytes: bool) -> None:
    text = '{"big": 123456789012345678901234, "neg": -9223372036854775809, "f": 1.5, "s": "é"}'
    value = json_value(text.encode() if as_bytes else text)
    assert value == {"big": 123456789012345678901234, "neg": -9223372036854775809, "f": 1.5, "s": "é"}
    assert type(value["big"]) is int


def test_a_run_of_19_digits_is_told_from_shorter_ones() -> None:
    assert has_long_digit_run(b'{"n": 1234567890123456789}')
    assert has_long_digit_run('{"id": "0000000000000000000"}')
    assert not has_long_digit_run(b'{"n": 123456789012345678, "t": "2026-11-23T09:00:00.123456Z"}')
    assert not has_long_digit_run('{"a": "123456789 0123456789"}')
