"""Every event type ever published has a sample file, and every sample parses as its type."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cdp_common.events import (
    EVENT_TYPES,
    InvalidEvent,
    checked_step_by_step,
    decode_envelope,
    envelope_of_document,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_every_registered_type_has_a_sample() -> None:
    names = {p.name.removesuffix(".json") for p in SAMPLES.glob("*.json")}
    assert names == set(EVENT_TYPES)


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_sample_parses_as_its_type_and_round_trips(path: Path) -> None:
    raw = path.read_bytes()
    envelope = decode_envelope(raw)
    assert envelope.type == path.stem
    assert isinstance(envelope.data, EVENT_TYPES[path.stem])
    again = decode_envelope(envelope.to_bytes())
    assert again.data == envelope.data
    assert again.id == json.loads(raw)["id"]


def test_consumers_keep_fields_they_do_not_know() -> None:
    document = json.loads((SAMPLES / "cdp.token.revoked.v1.json").read_text())
    document["data"]["added_later"] = {"x": 1}
    document["traceparent"] = "00-abc-def-01"
    envelope = decode_envelope(json.dumps(document).encode())
    assert envelope.data.token_id == document["data"]["token_id"]


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_the_one_pass_check_gives_what_the_step_by_step_check_gives(path: Path) -> None:
    document = json.loads(path.read_bytes())
    at_once = envelope_of_document(document)
    step_by_step = checked_step_by_step(document, EVENT_TYPES)
    assert at_once == step_by_step
    assert at_once.to_bytes() == step_by_step.to_bytes()
    assert type(at_once.data) is EVENT_TYPES[path.stem]


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        ("2026-05-01T12:00:00Z", "2026-05-01T12:00:00+00:00"),
        ("2026-05-01T14:00:00+02:00", "2026-05-01T12:00:00+00:00"),
        ("2026-05-01T12:00:00", "2026-05-01T12:00:00+00:00"),
    ],
)
def test_every_envelope_time_is_kept_in_utc(time: str, expected: str) -> None:
    document = json.loads((SAMPLES / "cdp.token.revoked.v1.json").read_text())
    document["time"] = time
    envelope = decode_envelope(json.dumps(document).encode())
    assert envelope.time.isoformat() == expected
    assert envelope.time.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"subject": ""}, "not an envelope"),
        ({"source": "x" * 201}, "not an envelope"),
        ({"data": {"token_id": 5}}, "invalid cdp.token.revoked.v1 payload"),
        ({"data": "a string"}, "not an envelope"),
    ],
)
def test_a_bad_message_is_explained_whichever_check_sees_it_first(
    change: dict[str, Any], problem: str
) -> None:
    document = {**json.loads((SAMPLES / "cdp.token.revoked.v1.json").read_text()), **change}
    with pytest.raises(InvalidEvent, match=problem):
        decode_envelope(json.dumps(document).encode())


def test_numbers_beyond_64_bits_are_read_exactly() -> None:
    document = json.loads((SAMPLES / "cdp.token.revoked.v1.json").read_text())
    document["data"]["order_number"] = 123456789012345678901234567890
    document["data"]["ratio"] = 0.1
    envelope = decode_envelope(json.dumps(document).encode())
    extra = envelope.data.model_extra or {}
    assert extra["order_number"] == 123456789012345678901234567890
    assert extra["ratio"] == 0.1
