"""Operators' patterns: RE2 or a clear refusal, and patterns stored before still working."""

from __future__ import annotations

import pytest
from cdp_common.patterns import UnsafePattern, compile_linear, compile_stored


def test_a_refused_pattern_says_why_in_plain_text() -> None:
    with pytest.raises(UnsafePattern) as refused:
        compile_linear("(?!x)")
    assert str(refused.value).endswith("invalid perl operator: (?!")
    assert "b'" not in str(refused.value)


def test_case_is_ignored_only_when_asked() -> None:
    assert compile_linear("^none$", ignore_case=True).search("NONE") is not None
    assert compile_linear("^none$").search("NONE") is None


def test_a_stored_lookaround_pattern_keeps_matching_as_written() -> None:
    stored = compile_stored("^(?!vip-).*-test$", ignore_case=True)
    assert stored.search("ops-TEST") is not None
    assert stored.search("vip-test") is None
