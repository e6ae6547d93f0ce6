"""What no service can store, refused at the edge of every route with 400 and the contract's error body.

PostgreSQL refuses the NUL character in text and JSONB, and a lone UTF-16 surrogate (which JSON
can carry as an escape such as \\ud800) is not a character UTF-8 can encode. JSON bodies nested
deeper than any definition needs and integers beyond 64 bits are refused with them, before a
handler or a store sees the request: a path or a query by a middleware in front of every route,
a body by a dependency of the routers whose routes declare one. Routes that read their body
themselves (the tracking API) apply the same rules per event.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request, params
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cdp_common.db import has_long_digit_run
from cdp_common.storable import MAX_BODY_DEPTH, Unstorable, document_problem, unstorable_character
from cdp_common.web import ApiError, error_response

# A surrogate as a JSON escape, or encoded as if it were a character (which the standard
# library's parser reads from bytes rather than refusing).
_SURROGATE = re.compile(rb"\\u[dD][89abcdefABCDEF]|\xed[\xa0-\xbf]")


def may_hold_unstorable(body: bytes) -> bool:
    """Whether a JSON body may hold a character PostgreSQL cannot store or an integer beyond 64 bits.

    JSON carries a NUL only as an escape, and a lone surrogate as an escape or encoded as a
    character would be, so a body without one holds neither.
    """
    return b"\\u0000" in body or _SURROGATE.search(body) is not None or has_long_digit_run(body)


def needs_document_walk(body: bytes) -> bool:
    """Whether a JSON body may hold what document_problem refuses; most bodies need no walk."""
    return may_hold_unstorable(body) or body.count(b"[") + body.count(b"{") > MAX_BODY_DEPTH


def _refusal(problem: Unstorable, **details: str | None) -> ApiError:
    return ApiError(status=400, code=problem.code, message=problem.message, details=details)


def _path_or_query_refusal(scope: Scope) -> ApiError | None:
    if "\x00" in scope.get("path", ""):
        return _refusal(
            Unstorable("nul_character", "the path contains a NUL character (%00)"), location="path"
        )
    query: bytes = scope.get("query_string", b"")
    # Decoded, a query holds a NUL exactly where its text holds "%00".
    if b"%00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if problem := unstorable_character(name) or unstorable_character(value):
                return _refusal(problem, location="query", parameter=name)
    return None


class UnstorableInputMiddleware:
    """Answers 400 to a request whose path or query holds a NUL character, before any route sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refusal := _path_or_query_refusal(scope)) is not None:
            await error_response(refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _body_problem(request: Request) -> Unstorable | None:
    body = await request.body()  # read already for the route; this is its cached copy
    if not body or not needs_document_walk(body):
        return None
    try:
        document = await request.json()
    except (ValueError, RecursionError):
        return None  # not JSON: the route's own parsing answers for it
    return document_problem(document)


async def refuse_unstorable_body(request: Request) -> None:
    """Answer 400 to a request whose body holds what no service can store."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute) and route.body_field is not None:
        problem = await _body_problem(request)
        if problem is not None:
            raise _refusal(problem, field=problem.where)


def body_screening(router: APIRouter) -> list[params.Depends]:
    """Return the dependencies that screen the bodies of a router's routes: none for a router
    whose routes declare no body (the tracking API reads its own, and answers per event)."""
    declares_body = any(
        isinstance(route, APIRoute) and route.body_field is not None for route in router.routes
    )
    return [Depends(refuse_unstorable_body)] if declares_body else []


class BodySizeLimitMiddleware:
    """Answers 413 payload_too_large to a body over `max_bytes`, before any route reads it.

    A declared Content-Length over the limit is refused at once; a body sent without one (chunked)
    is read up to the limit and handed on whole, or refused once it passes the limit. Routes with
    their own, smaller limits (the tracking API) keep applying them.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self) -> ApiError:
        return ApiError(
            status=413,
            code="payload_too_large",
            message=f"the body is larger than {self.max_bytes} bytes",
            details={"max_bytes": self.max_bytes},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None:
            if declared.strip().isdigit() and int(declared) > self.max_bytes:
                await error_response(self._refusal())(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await error_response(self._refusal())(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
