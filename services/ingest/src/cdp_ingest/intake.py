"""Reading tracking requests: the bounded body (gzip included), its JSON, the write key and the client's address.

Every failure here is the client's: each raises an ApiError with a 4xx and the
contract's error body, so bad input never turns into a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import zlib
from collections.abc import Sequence
from typing import Any

import orjson
from cdp_common.db import has_long_digit_run
from cdp_common.screening import may_hold_unstorable
from cdp_common.web import ApiError
from fastapi import Request
from starlette.requests import ClientDisconnect

from cdp_ingest.metrics import EVENTS_REFUSED

# curl and some servers label JSON as form data; only multipart bodies cannot be JSON.
REFUSED_MEDIA_TYPES = ("multipart/form-data",)
# Decoded Basic credentials by Authorization header, so a client's repeated calls skip base64.
_BASIC_USERS: dict[str, str] = {}


def refuse(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    *,
    source: str = "unknown",
    call_type: str = "unknown",
    headers: dict[str, str] | None = None,
) -> ApiError:
    """Count a refusal and return the error that answers it."""
    EVENTS_REFUSED.labels(source, call_type, code).inc()
    return ApiError(status=status, code=code, message=message, details=details, headers=headers)


def header(request: Request, name: bytes) -> str | None:
    """Return one request header, found in the raw ASGI list (names come lower-cased) without building Headers."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _too_large(limit: int, call_type: str) -> ApiError:
    return refuse(
        413,
        "payload_too_large",
        f"the body exceeds {limit} bytes",
        {"limit_bytes": limit},
        call_type=call_type,
    )


async def read_body(request: Request, *, limit: int, call_type: str) -> bytes:
    """Read the body, decompressing gzip, refusing anything over `limit` bytes before or after decompression."""
    media_type = (header(request, b"content-type") or "").split(";", 1)[0].strip().lower()
    if media_type in REFUSED_MEDIA_TYPES:
        raise refuse(
            415,
            "unsupported_media_type",
            "send JSON as application/json or text/plain",
            {"content_type": media_type},
            call_type=call_type,
        )
    encoding = (header(request, b"content-encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise refuse(
            415,
            "unsupported_encoding",
            "Content-Encoding must be gzip or absent",
            {"content_encoding": encoding},
            call_type=call_type,
        )
    declared = header(request, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, call_type)
    body = bytearray()
    # ASGI messages read directly: Request.stream's async generator costs more than one small body.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body.extend(message.get("body", b""))
        if len(body) > limit:
            raise _too_large(limit, call_type)
        if not message.get("more_body", False):
            break
    if encoding != "gzip":
        return bytes(body)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(bytes(body), limit + 1)
    except zlib.error as exc:
        raise refuse(400, "invalid_gzip", "the body is not valid gzip", call_type=call_type) from exc
    if len(plain) > limit or inflater.unconsumed_tail:
        raise _too_large(limit, call_type)
    if not inflater.eof:
        raise refuse(400, "invalid_gzip", "the gzip body is truncated", call_type=call_type)
    return plain


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


# Beyond 40 digits an integer is far outside 64 bits whatever its value; it is read as the first
# integer past the limit, so the checks of the event refuse it (per item in a batch) without
# converting thousands of digits, which Python refuses past 4,300.
_EXACT_DIGITS = 40
_BEYOND_64_BITS = 2**64


def _bounded_int(digits: str) -> int:
    if len(digits) <= _EXACT_DIGITS:
        return int(digits)
    return -_BEYOND_64_BITS if digits.startswith("-") else _BEYOND_64_BITS


_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def cap_depth(text: str, *, keep: int) -> str:
    """Empty every object or array nested `keep` levels deep, so no parser recurses further.

    The emptied container stays where it was, so a document nested deeper than any limit below
    `keep` is still refused as too deep, at the same place; strings are skipped whole.
    """
    parts: list[str] = []
    depth = 0
    copied_to = 0
    for token in _TOKENS.finditer(text):
        symbol = token.group()
        if symbol in "[{":
            depth += 1
            if depth == keep:
                parts.append(text[copied_to : token.end()])
            continue
        if symbol in "]}":
            if depth == keep:
                copied_to = token.start()
            depth -= 1
    if depth >= keep:
        return text  # unbalanced: left as it is for the parser to say where
    parts.append(text[copied_to:])
    return "".join(parts)


def thorough_check_needed(body: bytes) -> bool:
    """Whether a body may hold what only a thorough check of its values finds: a character PostgreSQL
    cannot store (JSON carries a NUL or a lone surrogate only as an escape) or an integer beyond 64 bits."""
    return may_hold_unstorable(body)


def _read_exactly(text: str, *, call_type: str, keep_depth: int) -> Any:
    try:
        try:
            return json.loads(text, parse_int=_bounded_int, parse_constant=_refuse_constant)
        except RecursionError:
            return json.loads(
                cap_depth(text, keep=keep_depth), parse_int=_bounded_int, parse_constant=_refuse_constant
            )
    except _NonFinite as exc:
        raise refuse(
            400, "non_finite_number", f"{exc} is not a JSON number", {"value": str(exc)}, call_type=call_type
        ) from exc
    except json.JSONDecodeError as exc:
        raise refuse(
            400,
            "invalid_json",
            f"the body is not valid JSON: {exc.msg}",
            {"position": exc.pos},
            call_type=call_type,
        ) from exc
    except RecursionError as exc:
        raise refuse(
            400, "too_deep", "objects and arrays nest too deep to be read", call_type=call_type
        ) from exc


def parse_json(body: bytes, *, call_type: str, max_depth: int = 16) -> Any:
    """Parse a JSON body, saying whether it is invalid UTF-8, holds NaN or Infinity, or is not JSON.

    Integers are read exactly: a body with a long run of digits is read again by the standard
    library, and the checks of its values refuse integers beyond 64 bits rather than letting
    them turn into floats. What the fast parser cannot read (numbers beyond a double, nesting
    past its limit, lone surrogates) is read by the standard library too, with containers nested
    far beyond `max_depth` emptied, so the checks of each event say what is wrong with it and a
    batch keeps its other events.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        if not has_long_digit_run(body):
            return document
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(
            400,
            "invalid_encoding",
            "the body is not valid UTF-8",
            {"position": exc.start},
            call_type=call_type,
        ) from exc
    # Deeper than any limit by a margin: an event's levels start below the batch's two.
    return _read_exactly(text, call_type=call_type, keep_depth=max_depth + 4)


def parse_object(body: bytes, *, call_type: str, max_depth: int = 16) -> dict[str, Any]:
    """Parse a body that must be one JSON object."""
    document = parse_json(body, call_type=call_type, max_depth=max_depth)
    if not isinstance(document, dict):
        raise refuse(400, "invalid_json", "the body must be a JSON object", call_type=call_type)
    return document


def _basic_user(authorization: str) -> str:
    """Return the user name of HTTP Basic credentials ('' when there is none)."""
    user = _BASIC_USERS.get(authorization)
    if user is not None:
        return user
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return ""
    try:
        user, _, _ = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise refuse(401, "invalid_write_key", "the Basic credentials are not valid base64") from exc
    if len(_BASIC_USERS) >= 10_000:
        _BASIC_USERS.clear()
    _BASIC_USERS[authorization] = user
    return user


def write_key_of(request: Request, body: dict[str, Any]) -> str:
    """Return the write key from HTTP Basic (`writeKey:`) or the body's `writeKey`."""
    user = _basic_user(header(request, b"authorization") or "")
    if user:
        return user
    key = body.get("writeKey")
    if isinstance(key, str) and key:
        return key
    raise refuse(
        401,
        "missing_write_key",
        "send the write key as HTTP Basic user name or as writeKey in the body",
        headers={"WWW-Authenticate": 'Basic realm="tracking"'},
    )


def client_ip(
    request: Request, proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str | None:
    """Return the caller's address: the peer's, or from X-Forwarded-For when the peer is a trusted proxy."""
    peer = request.client.host if request.client else None
    if peer is None or not proxies:
        return peer

    def trusted(address: str) -> bool:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in proxies)

    if not trusted(peer):
        return peer
    forwarded = [
        part.strip() for part in request.headers.get("x-forwarded-for", "").split(",") if part.strip()
    ]
    for address in reversed(forwarded):
        if trusted(address):
            continue
        try:
            return str(ipaddress.ip_address(address))
        except ValueError:
            return peer
    return peer
