"""Every event type ever published has a sample file, and every sample parses as its type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cdp_common.events import EVENT_TYPES, decode_envelope

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
