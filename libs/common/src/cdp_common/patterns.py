"""Regular expressions that operators write and that anybody's data is matched against.

They are compiled with RE2, which matches in time linear in the value, so no identifier,
property or trait that a sender makes up can make a pattern backtrack and stall a service.
"""

from __future__ import annotations

import re
from typing import Any

import re2  # type: ignore[import-untyped]


class UnsafePattern(ValueError):
    """A pattern RE2 cannot take: invalid, or needing backreferences or lookaround."""


def _options(*, ignore_case: bool) -> Any:
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.log_errors = False  # a refused pattern is answered with its reason, not logged raw
    return options


_OPTIONS = {flag: _options(ignore_case=flag) for flag in (False, True)}


def compile_linear(pattern: str, *, ignore_case: bool = False) -> Any:
    """Compile an operator's pattern with RE2; raise UnsafePattern with RE2's reason if it refuses."""
    try:
        return re2.compile(pattern, _OPTIONS[ignore_case])
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise UnsafePattern(f"not a valid RE2 pattern (no backreferences or lookaround): {text}") from exc


def compile_stored(pattern: str, *, ignore_case: bool = False) -> Any:
    """Compile a pattern stored before patterns had to be RE2: RE2 when it can, else as written."""
    try:
        return compile_linear(pattern, ignore_case=ignore_case)
    except UnsafePattern:
        return re.compile(pattern, flags=re.IGNORECASE if ignore_case else 0)
