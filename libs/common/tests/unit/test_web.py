"""The contract's cursors: opaque, and a tampered one is a clear 400."""

from __future__ import annotations

import pytest
from cdp_common.web import ApiError, decode_cursor, encode_cursor


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor({"after": "src_1", "n": 2})) == {"after": "src_1", "n": 2}


@pytest.mark.parametrize("cursor", ["%%%", "bm90IGpzb24", "WzFd"])
def test_tampered_cursor_is_a_400(cursor: str) -> None:
    with pytest.raises(ApiError) as raised:
        decode_cursor(cursor)
    assert raised.value.status == 400
    assert raised.value.code == "invalid_cursor"
