"""Signed tracking tokens: what an open pixel, a click or an unsubscribe link refers to."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from functools import lru_cache
from typing import Any

import orjson


class InvalidToken(Exception):
    """A token that was not made with our key, or is malformed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@lru_cache(maxsize=8)
def _keyed(key: str) -> hmac.HMAC:
    # An HMAC with the key already absorbed; each signature starts from a copy of it.
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


def _signature(key: str, body: str) -> str:
    mac = _keyed(key).copy()
    mac.update(body.encode())
    return _b64(mac.digest())


def sign_token(*, key: str, claims: dict[str, Any]) -> str:
    """Return a URL-safe token carrying the claims, signed with HMAC-SHA256."""
    body = _b64(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS))
    return f"{body}.{_signature(key, body)}"


def read_token(*, key: str, token: str) -> dict[str, Any]:
    """Return the claims of a token made by sign_token, or raise InvalidToken."""
    if len(token) > 4000 or token.count(".") != 1:
        raise InvalidToken("malformed token")
    body, signature = token.split(".")
    expected = _signature(key, body)
    if not hmac.compare_digest(expected, signature):
        raise InvalidToken("bad signature")
    try:
        claims = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidToken("malformed token") from exc
    if not isinstance(claims, dict):
        raise InvalidToken("malformed token")
    return claims


APPLE_PRIVACY_PROXY_AGENT = "Mozilla/5.0"


def is_privacy_proxy_open(user_agent: str | None) -> bool:
    """Whether an open came from Apple's Mail Privacy Protection proxy, which prefetches every image.

    The proxy fetches with the bare user agent `Mozilla/5.0` and nothing after it.
    """
    return (user_agent or "").strip() == APPLE_PRIVACY_PROXY_AGENT
