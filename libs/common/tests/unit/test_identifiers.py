"""Identifier values are matched in one canonical form."""

from __future__ import annotations

import pytest
from cdp_common.identifiers import InvalidIdentifier, normalise_identifier


@pytest.mark.parametrize(
    ("kind", "raw", "canonical"),
    [
        ("email", "  Ada.Lovelace@Example.ORG ", "ada.lovelace@example.org"),
        ("phone", "+49 (170) 123-4567", "+491701234567"),
        ("phone", "0170 1234567", "+491701234567"),
        ("user_id", " 42 ", "42"),
    ],
)
def test_canonical_forms(kind: str, raw: str, canonical: str) -> None:
    assert normalise_identifier(kind, raw) == canonical


@pytest.mark.parametrize(("kind", "raw"), [("phone", "call me"), ("phone", "12"), ("email", "   ")])
def test_values_that_cannot_be_identifiers(kind: str, raw: str) -> None:
    with pytest.raises(InvalidIdentifier):
        normalise_identifier(kind, raw)
