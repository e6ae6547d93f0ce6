"""Serves the tracking API's POST paths straight from ASGI, ahead of the FastAPI app.

The tracking paths carry nearly all of ingest's traffic, and FastAPI's own layers
(its error, telemetry, body-limit and CORS middleware, matching over every route of
the service, dependency solving) cost more than accepting one event does. This
application wraps the FastAPI app: it finds the same endpoint functions (the routes
stay registered, for the OpenAPI document and for every other path) by one dictionary
lookup, answers errors with the contract's body as the app's error handlers do, adds
the CORS headers the app's CORS middleware would (any origin, no credentials), and
counts the request in the shared HTTP metrics as HttpMetricsMiddleware does. Every
other request, CORS preflights included, goes to the app unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from cdp_common.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS
from cdp_common.web import ApiError, error_response
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute, APIRouter
from prometheus_client import Counter, Histogram
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]
# What the app's CORSMiddleware (allow_origins=["*"], no credentials) adds to a simple response.
VARY_ORIGIN = (b"vary", b"Origin")
ANY_ORIGIN = (b"access-control-allow-origin", b"*")


def post_endpoints(router: APIRouter) -> dict[str, Endpoint]:
    """Return the router's POST endpoints that take only the request, by their exact path."""
    return {
        route.path: route.endpoint
        for route in router.routes
        if isinstance(route, APIRoute) and route.methods == {"POST"} and "{" not in route.path
    }


def _has_origin(scope: Scope) -> bool:
    return any(name == b"origin" for name, _ in scope["headers"])


class TrackingDispatch:
    """Answer POSTs to the given paths with their endpoints; pass everything else to the app."""

    def __init__(self, app: FastAPI, *, service: str, endpoints: Mapping[str, Endpoint]) -> None:
        self.app = app
        self.service = service
        self.endpoints = dict(endpoints)
        self._counters: dict[tuple[str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # What Starlette sets before routing, so that `request.app` is the service's app.
        scope["app"] = self.app
        try:
            response = await endpoint(Request(scope, receive))
        except ApiError as exc:
            response = error_response(exc)
        except Exception:
            logger.exception("unhandled error", extra={"path": scope["path"]})
            response = error_response(ApiError(status=500, code="internal_error", message="internal error"))
        cors = (ANY_ORIGIN, VARY_ORIGIN) if _has_origin(scope) else (VARY_ORIGIN,)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [*response.raw_headers, *cors],
                }
            )
            await send({"type": "http.response.body", "body": response.body})
        finally:
            self._count(scope["path"], response.status_code, time.perf_counter() - started)

    def _count(self, path: str, status: int, seconds: float) -> None:
        counter = self._counters.get((path, status))
        if counter is None:
            counter = self._counters[(path, status)] = HTTP_REQUESTS.labels(
                self.service, "POST", path, str(status)
            )
        counter.inc()
        duration = self._durations.get(path)
        if duration is None:
            duration = self._durations[path] = HTTP_REQUEST_DURATION.labels(self.service, "POST", path)
        duration.observe(seconds)
