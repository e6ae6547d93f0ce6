"""Decoding at the edge: what is refused, what is skipped."""

from __future__ import annotations

import json

import pytest
from cdp_common.events import InvalidEvent, TokenRevoked, UnknownEventType, decode_envelope, make_envelope


def test_round_trip_keeps_id_type_subject_and_payload() -> None:
    envelope = make_envelope(payload=TokenRevoked(token_id="t1"), source="ingest", subject="t1", id="fixed")
    decoded = decode_envelope(envelope.to_bytes())
    assert (decoded.id, decoded.type, decoded.subject) == ("fixed", "cdp.token.revoked.v1", "t1")
    assert decoded.data == TokenRevoked(token_id="t1")
    assert decoded.time.utcoffset() is not None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "no value"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not an envelope"),
        (b'{"id": "x"}', "not an envelope"),
    ],
)
def test_malformed_messages_are_invalid(raw: bytes | None, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        decode_envelope(raw)


def test_payload_that_does_not_match_its_type_is_invalid() -> None:
    document = json.loads(
        make_envelope(payload=TokenRevoked(token_id="t"), source="s", subject="t").to_bytes()
    )
    del document["data"]["token_id"]
    with pytest.raises(InvalidEvent, match=r"invalid cdp.token.revoked.v1 payload"):
        decode_envelope(json.dumps(document).encode())


def test_unknown_type_is_reported_apart_so_it_can_be_skipped() -> None:
    document = json.loads(
        make_envelope(payload=TokenRevoked(token_id="t"), source="s", subject="t").to_bytes()
    )
    document["type"] = "cdp.token.renamed.v2"
    with pytest.raises(UnknownEventType):
        decode_envelope(json.dumps(document).encode())
