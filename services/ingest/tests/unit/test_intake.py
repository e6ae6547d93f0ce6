"""The caller's address: the peer's, or X-Forwarded-For only through a trusted proxy; bodies
read with their integers exact, and the bodies that need the thorough check of values told apart."""

from __future__ import annotations

import ipaddress

from cdp_ingest.intake import cap_depth, client_ip, parse_json, thorough_check_needed
from fastapi import Request

PROXIES = [ipaddress.ip_network("10.0.0.0/8")]


def request_from(peer: str, forwarded: str | None = None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return Request(
        {"type": "http", "headers": headers, "client": (peer, 5000), "method": "POST", "path": "/"}
    )


def test_the_peer_is_the_client_without_trusted_proxies() -> None:
    assert client_ip(request_from("203.0.113.5", "198.51.100.1"), []) == "203.0.113.5"


def test_an_untrusted_peer_cannot_claim_another_address() -> None:
    assert client_ip(request_from("203.0.113.5", "198.51.100.1"), PROXIES) == "203.0.113.5"


def test_a_trusted_proxy_names_the_client_nearest_to_it() -> None:
    # The left-most entry is the client's claim; the right-most untrusted one is what a proxy saw.
    assert client_ip(request_from("10.0.0.2", "1.1.1.1, 198.51.100.1, 10.0.0.3"), PROXIES) == "198.51.100.1"
    assert client_ip(request_from("10.0.0.2", "garbage"), PROXIES) == "10.0.0.2"
    assert client_ip(request_from("10.0.0.2"), PROXIES) == "10.0.0.2"


def test_integers_are_read_exactly_whatever_their_size() -> None:
    body = b'{"big": 123456789012345678901234, "u64": 18446744073709551615, "f": 1.5e30, "id": "12345678901234567890"}'
    document = parse_json(body, call_type="track")
    assert document == {
        "big": 123456789012345678901234,
        "u64": 18446744073709551615,
        "f": 1.5e30,
        "id": "12345678901234567890",
    }
    assert type(document["big"]) is int
    assert type(document["f"]) is float


def test_only_bodies_with_a_nul_escape_or_a_long_run_of_digits_need_the_thorough_check() -> None:
    assert not thorough_check_needed(b'{"n": 123456789012345678, "t": "2026-11-23T09:00:00Z"}')
    assert thorough_check_needed(b'{"n": 1234567890123456789}')
    assert thorough_check_needed(b'{"s": "x\\u0000"}')


def test_containers_past_the_kept_depth_are_emptied_in_place_and_strings_are_left_alone() -> None:
    text = '{"s": "[[{\\"", "a": [[[[1, "]"]]], {"b": {"c": {}}}]}'
    assert cap_depth(text, keep=3) == '{"s": "[[{\\"", "a": [[], {}]}'
    assert cap_depth("[[[", keep=2) == "[[["


def test_a_body_nested_past_any_parser_or_with_huge_integers_is_read_for_the_checks() -> None:
    deep = parse_json(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", call_type="track", max_depth=16)
    levels, value = 0, deep["a"]
    while value:
        levels, value = levels + 1, value[0]
    # The body's object, then arrays down to the 20th level (the limit of 16 and a margin), emptied there.
    assert levels == 18
    assert value == []
    huge = parse_json(b'{"n": [' + b"9" * 100_000 + b", -" + b"9" * 5000 + b"]}", call_type="track")
    assert huge == {"n": [2**64, -(2**64)]}
