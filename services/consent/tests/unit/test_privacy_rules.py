"""The pure privacy rules: when an erasure is complete and what the access bundle looks like."""

from __future__ import annotations

from datetime import UTC, datetime

from cdp_consent.domain.privacy import RequestStatus, assemble_bundle, awaiting, erasure_outcome

ALL_DONE = {s: "done" for s in ("profile", "ingest", "segment", "campaign", "consent")}


def test_an_erasure_waits_for_all_five_receipts() -> None:
    four = {k: v for k, v in ALL_DONE.items() if k != "campaign"}
    assert erasure_outcome(four, profile_ids=["p1"]) is None
    assert erasure_outcome(ALL_DONE, profile_ids=["p1"]) is RequestStatus.COMPLETED
    assert erasure_outcome({**ALL_DONE, "segment": "failed"}, profile_ids=["p1"]) is RequestStatus.FAILED


def test_an_erasure_of_nobody_ends_with_profiles_receipt() -> None:
    assert erasure_outcome({"profile": "done"}, profile_ids=[]) is RequestStatus.COMPLETED
    assert erasure_outcome({"ingest": "done"}, profile_ids=None) is None


def test_awaiting_lists_the_silent_services_of_open_requests_only() -> None:
    assert awaiting({"profile": {}}, "in_progress") == ["ingest", "segment", "campaign", "consent"]
    assert awaiting({}, "completed") == []


def test_the_bundle_names_every_service_even_those_holding_nothing() -> None:
    bundle = assemble_bundle(
        request_id="r1",
        subject_type="email",
        profile_ids=["p1"],
        parts={"profile": {"p1": {"traits": {"name": "Ada"}}}},
        generated_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    assert bundle["format"] == "cdp.access-bundle.v1"
    assert bundle["services"] == {
        "profile": {"p1": {"traits": {"name": "Ada"}}},
        "ingest": {},
        "segment": {},
        "campaign": {},
        "consent": {},
    }
    assert bundle["generated_at"] == "2024-01-01T00:00:00+00:00"
