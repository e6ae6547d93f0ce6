"""What PostgreSQL can store of a JSON document: no NUL character, no lone surrogate, integers
of 64 bits, and nesting within a bound. Pure Python, so domain code of every service can use it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Far beyond what any definition needs (a segment rule nests at most 12 groups, two levels each).
MAX_BODY_DEPTH = 64
# The integers the platform stores exactly: those of signed and unsigned 64 bits.
MIN_INTEGER = -(2**63)
MAX_INTEGER = 2**64 - 1

_SURROGATE = re.compile("[\ud800-\udfff]")


class Unstorable(Exception):
    """A value of a request that no service can store, and where it is."""

    def __init__(self, code: str, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.where = where


def unstorable_character(text: str) -> Unstorable | None:
    """Return why PostgreSQL cannot store a text (a NUL, a lone surrogate), or None when it can."""
    if "\x00" in text:
        return Unstorable("nul_character", "the text contains a NUL character (\\u0000)")
    if not text.isascii() and _SURROGATE.search(text):
        return Unstorable("invalid_encoding", "the text contains a lone surrogate, which is not a character")
    return None


def located(problem: Unstorable, where: str) -> Unstorable:
    """Return a problem with the place where it was found."""
    problem.where = where
    return problem


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def document_problem(document: Any, *, max_depth: int = MAX_BODY_DEPTH) -> Unstorable | None:
    """Return the first value of a JSON document no service can store, walking it without recursion."""
    pending: list[tuple[Any, int, str]] = [(document, 0, "")]
    while pending:
        value, depth, path = pending.pop()
        kind = type(value)
        if kind is str:
            if problem := unstorable_character(value):
                return located(problem, path)
        elif kind is int:
            if not MIN_INTEGER <= value <= MAX_INTEGER:
                return Unstorable(
                    "number_out_of_range", "integers must fit in 64 bits; send larger ones as strings", path
                )
        elif kind is dict or kind is list:
            if depth >= max_depth:
                return Unstorable("too_deep", f"objects and arrays nest deeper than {max_depth} levels", path)
            items: Iterable[tuple[str | int, Any]] = value.items() if kind is dict else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and (problem := unstorable_character(key)):
                    return located(problem, _join(path, key))
                pending.append((item, depth + 1, _join(path, key)))
    return None
