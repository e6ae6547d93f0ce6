"""What no service can store, refused at the edge of every route with 400 and the contract's error body.

PostgreSQL refuses the NUL character in text and JSONB, and a lone UTF-16 surrogate (which JSON
can carry as an escape such as \\ud800) is not a character UTF-8 can encode. JSON bodies nested
deeper than any definition needs and integers beyond 64 bits are refused with them, before a
handler or a store sees the request. Routes that read their body themselves (the tracking API)
apply the same rules per event.
"""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.routing import APIRoute

from cdp_common.db import has_long_digit_run
from cdp_common.storable import MAX_BODY_DEPTH, Unstorable, document_problem, located, unstorable_character
from cdp_common.web import ApiError

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def may_hold_unstorable(body: bytes) -> bool:
    """Whether a JSON body may hold a character PostgreSQL cannot store or an integer beyond 64 bits.

    JSON carries a NUL or a lone surrogate only as an escape, so a body without one holds neither.
    """
    return b"\\u0000" in body or _SURROGATE_ESCAPE.search(body) is not None or has_long_digit_run(body)


def needs_document_walk(body: bytes) -> bool:
    """Whether a JSON body may hold what document_problem refuses; most bodies need no walk."""
    return may_hold_unstorable(body) or body.count(b"[") + body.count(b"{") > MAX_BODY_DEPTH


def _refusal(problem: Unstorable, *, detail: str) -> ApiError:
    return ApiError(status=400, code=problem.code, message=problem.message, details={detail: problem.where})


async def _body_problem(request: Request) -> Unstorable | None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type in _FORM_TYPES:
        form = await request.form()  # parsed already for the route; this is its cached copy
        for key, value in form.multi_items():
            if isinstance(value, str) and (
                problem := unstorable_character(key) or unstorable_character(value)
            ):
                return located(problem, key)
        return None
    body = await request.body()
    if not body or not needs_document_walk(body):
        return None
    try:
        document = await request.json()
    except (ValueError, RecursionError):
        return None  # not JSON: the route's own parsing answers for it
    return document_problem(document)


async def refuse_unstorable_input(request: Request) -> None:
    """Answer 400 to a request whose path, query or body holds what no service can store."""
    for name, value in request.scope.get("path_params", {}).items():
        if isinstance(value, str) and (problem := unstorable_character(value)):
            raise _refusal(located(problem, name), detail="parameter")
    if b"%00" in request.scope.get("query_string", b""):
        for name, value in request.query_params.multi_items():
            if problem := unstorable_character(name) or unstorable_character(value):
                raise _refusal(located(problem, name), detail="parameter")
    route = request.scope.get("route")
    # Only a body the route has declared is read here; the tracking routes read theirs themselves.
    if isinstance(route, APIRoute) and route.body_field is not None:
        problem = await _body_problem(request)
        if problem is not None:
            raise _refusal(problem, detail="field")
