"""What PostgreSQL can store of a document: found without recursion, with the place it is at."""

from __future__ import annotations

from typing import Any

from cdp_common.storable import MAX_BODY_DEPTH, document_problem, unstorable_character


def test_nul_and_lone_surrogates_are_found_anywhere_with_their_place() -> None:
    problem = document_problem({"a": [{"b": "x\x00"}]})
    assert problem is not None
    assert (problem.code, problem.where) == ("nul_character", "a[0].b")
    problem = document_problem({"ok": "Café 😀", "k\udc00": 1})
    assert problem is not None
    assert (problem.code, problem.where) == ("invalid_encoding", "k\udc00")
    assert unstorable_character("Café 😀 \u2028") is None


def test_integers_beyond_64_bits_and_deep_nesting_are_refused() -> None:
    assert document_problem({"n": [2**64 - 1, -(2**63), 1.5e300]}) is None
    problem = document_problem({"n": [2**64]})
    assert problem is not None
    assert (problem.code, problem.where) == ("number_out_of_range", "n[0]")
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    problem = document_problem({"d": deep})
    assert problem is not None
    assert problem.code == "too_deep"
    shallow: Any = []
    for _ in range(MAX_BODY_DEPTH - 1):
        shallow = [shallow]
    assert document_problem(shallow) is None
