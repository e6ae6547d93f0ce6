"""The HTTP conventions of the contract: the error body and list pagination."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Annotated, Any, Generic, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answered with the contract's error body."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_body(*, code: str, message: str, details: Any = None) -> dict[str, Any]:
    """Return the contract's error body."""
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(error: ApiError) -> JSONResponse:
    """Render an ApiError as a response."""
    return JSONResponse(
        error_body(code=error.code, message=error.message, details=error.details),
        status_code=error.status,
        headers=error.headers,
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]


def _unreadable_body(exc: StarletteHTTPException) -> ApiError | None:
    """Say why a JSON body could not be read at all: not UTF-8, nested past the parser's limit, or
    with an integer past Python's; the error FastAPI raises carries the parser's as its cause."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, RecursionError):
        return ApiError(status=400, code="too_deep", message="objects and arrays nest too deep to be read")
    if isinstance(cause, UnicodeDecodeError):
        return ApiError(status=400, code="invalid_encoding", message="the body is not valid UTF-8")
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return ApiError(
            status=400,
            code="number_out_of_range",
            message="integers must fit in 64 bits; send larger ones as strings",
        )
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Make every error of the app answer with the contract's error body."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(
            ApiError(
                status=422,
                code="invalid_request",
                message="the request does not match the expected schema",
                details=_validation_details(exc),
            )
        )

    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        unreadable = _unreadable_body(exc)
        if unreadable is not None:
            return error_response(unreadable)
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(
            ApiError(
                status=exc.status_code,
                code=code,
                message=str(exc.detail),
                headers=dict(exc.headers) if exc.headers else None,
            )
        )

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(ApiError(status=500, code="internal_error", message="internal error"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


class Page(BaseModel, Generic[ItemT]):
    """One page of a list: the items and the cursor of the next page, if any."""

    items: list[ItemT]
    next: str | None


def encode_cursor(position: dict[str, Any]) -> str:
    """Encode a position in a list as an opaque cursor."""
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    """Decode a cursor made by encode_cursor; a tampered cursor is a 400."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid") from exc
    if not isinstance(value, dict):
        raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid")
    return value


PositionT = TypeVar("PositionT", str, int)


def cursor_position(params: PageParams, kind: type[PositionT], *, field: str = "after") -> PositionT | None:
    """Return the keyset position a page's cursor carries (None on the first page); a bad one is a 400."""
    if params.cursor is None:
        return None
    value = decode_cursor(params.cursor).get(field)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid")
    return value


def next_cursor(items: list[dict[str, Any]], *, limit: int, key: str, field: str = "after") -> str | None:
    """Return the cursor of the page after a full one, keyed by its last item; None after the last page."""
    return encode_cursor({field: items[-1][key]}) if items and len(items) == limit else None


class PageParams(BaseModel):
    """The `limit` and `cursor` query parameters of every list."""

    limit: int
    cursor: str | None


def page_params(
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> PageParams:
    """Read the pagination query parameters; an empty cursor is the first page."""
    return PageParams(limit=limit, cursor=cursor or None)
