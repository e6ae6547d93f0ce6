"""Privacy requests as pure rules: who must answer, when a request is complete, and the shape
of the access bundle."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

SERVICES = ("profile", "ingest", "segment", "campaign", "consent")
BUNDLE_FORMAT = "cdp.access-bundle.v1"


class RequestStatus(StrEnum):
    """Where a privacy request stands."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


def erasure_outcome(receipts: Mapping[str, str], *, profile_ids: list[str] | None) -> RequestStatus | None:
    """Return how an erasure ends given the receipts' statuses by service, or None while open.

    When profile found nobody, its receipt alone closes the request: nobody else holds anything.
    """
    if "profile" in receipts and profile_ids == []:
        return RequestStatus.COMPLETED if receipts["profile"] == "done" else RequestStatus.FAILED
    if not set(SERVICES) <= set(receipts):
        return None
    return RequestStatus.COMPLETED if all(receipts[s] == "done" for s in SERVICES) else RequestStatus.FAILED


def awaiting(receipts: Mapping[str, Any], status: str) -> list[str]:
    """Return the services whose receipt an open request still waits for."""
    if status in (RequestStatus.COMPLETED, RequestStatus.FAILED):
        return []
    return [s for s in SERVICES if s not in receipts]


def assemble_bundle(
    *,
    request_id: str,
    subject_type: str,
    profile_ids: list[str],
    parts: Mapping[str, Mapping[str, Any]],
    generated_at: datetime,
) -> dict[str, Any]:
    """Build the one machine-readable access bundle from every service's parts, by profile id."""
    return {
        "format": BUNDLE_FORMAT,
        "request_id": request_id,
        "generated_at": generated_at.isoformat(),
        "subject_type": subject_type,
        "profile_ids": profile_ids,
        "services": {service: dict(parts.get(service, {})) for service in SERVICES},
    }
