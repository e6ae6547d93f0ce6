"""The refusal of a tracking call: a machine-readable code, a message and the field at fault."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CallError(Exception):
    """A call the tracking API refuses, with a machine-readable code and where it failed."""

    code: str
    message: str
    field: str | None = None

    @property
    def status(self) -> int:
        """The HTTP status a call refused for this reason answers with."""
        return 413 if self.code == "event_too_large" else 400

    def as_body(self) -> dict[str, Any]:
        """Return the contract's error object for this refusal."""
        return {"code": self.code, "message": self.message, "details": {"field": self.field}}
