"""What a service's API says about itself: its OpenAPI document (security schemes, each
operation's security and error responses in the contract's error body) and which methods a
path allows (`Allow`, 405, and OPTIONS).

Every service's app factory gets both through cdp_common.service.build_app; the document is
derived from the routes themselves, so it cannot drift from what they do.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.responses import Response
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from cdp_common.auth import Principal, guarded_scope
from cdp_common.web import ApiError, error_response

BEARER = "bearerAuth"
WRITE_KEY = "writeKey"

ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorBody",
    "description": "The body of every 4xx and 5xx answer.",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "what went wrong, for programs"},
                "message": {"type": "string", "description": "what went wrong, for people"},
                "details": {"description": "where and what exactly, when known"},
            },
        }
    },
}

SECURITY_SCHEMES: dict[str, Any] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token from ingest's /v1/tokens (or the bootstrap admin token); "
        "each operation names the scope it needs in `x-required-scope`.",
    },
    WRITE_KEY: {
        "type": "http",
        "scheme": "basic",
        "description": "A source's write key as the user name and an empty password "
        "(or `writeKey` in the body).",
    },
}

# Input no service can store or parse is refused before any route sees it (cdp_common.screening).
INPUT_REFUSALS = ("nul_character", "invalid_encoding", "number_out_of_range", "too_deep")


_OTHER_REFUSALS = {
    404: "Nothing is known under the name given",
    409: "The change conflicts with the current state",
    410: "What was asked for is gone for good",
    413: "The request is larger than the service takes",
    415: "The body's media type or encoding is not one the operation takes",
}


@dataclass(frozen=True)
class ApiDescription:
    """What a service adds to what its routes say: the paths that take a write key rather than a
    token, the error codes its handlers answer besides the common ones (by status), and the
    bodies of routes that read them themselves."""

    write_key_paths: Collection[str] = ()
    error_codes: Mapping[int, Sequence[str]] = field(default_factory=dict)
    # Request bodies of routes that read their body themselves, by path, and the schemas they name.
    request_bodies: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    schemas: Mapping[str, dict[str, Any]] = field(default_factory=dict)


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[Any]:
    """Yield every API route of an app as it is served (with its routers' prefixes)."""
    for context in iter_route_contexts(routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependencies(dependency)


def _returns_principal(call: Callable[..., Any] | None) -> bool:
    if call is None:
        return False
    try:
        annotation = inspect.signature(call, eval_str=True).return_annotation
    except (NameError, TypeError, ValueError):
        return False
    return annotation is Principal


def _guard_of(route: Any) -> tuple[bool, str | None]:
    """Whether a route needs a token, and the scope it needs when known."""
    for dependency in _dependencies(route.dependant):
        if _returns_principal(dependency.call):
            return True, guarded_scope(dependency.call)
    return False, None


def _codes(text: str, codes: Sequence[str]) -> str:
    listed = ", ".join(f"`{code}`" for code in dict.fromkeys(codes))
    return f"{text} (`error.code`: {listed})" if listed else text


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


def _error_responses(
    route: Any, method: str, *, token: bool, write_key: bool, extra: Mapping[int, Sequence[str]]
) -> dict[str, dict[str, Any]]:
    has_body = route.body_field is not None or write_key
    dependants = [route.dependant, *_dependencies(route.dependant)]
    query = [param.alias for d in dependants for param in d.query_params]
    path_params = [param.alias for d in dependants for param in d.path_params]
    headers = [param.alias for d in dependants for param in d.header_params]
    takes_input = has_body or bool(query or path_params or headers)
    cursor = "cursor" in query
    responses: dict[int, dict[str, Any]] = {}
    if takes_input:
        refusals = [*INPUT_REFUSALS, *(["invalid_cursor"] if cursor else []), *extra.get(400, ())]
        responses[400] = _error(_codes("The input cannot be taken as sent", refusals))
    if token or write_key:
        responses[401] = _error(
            _codes(
                "No credentials, or unknown, expired or revoked ones",
                ["invalid_write_key", "unauthorized"] if write_key else ["unauthorized", "invalid_token"],
            )
        )
    if token:
        responses[403] = _error(_codes("The token lacks the scope the operation needs", ["forbidden"]))
    if path_params:
        responses[404] = _error(
            _codes("Nothing is known under this path", ["not_found", *extra.get(404, ())])
        )
    if method != "GET" and not write_key:
        responses[409] = _error(
            _codes("The change conflicts with the current state", ["conflict", *extra.get(409, ())])
        )
    if has_body:
        responses[413] = _error(_codes("The body is larger than the service takes", ["payload_too_large"]))
    if takes_input:
        responses[422] = _error(
            _codes(
                "The request does not match the schema, or breaks a rule of the operation",
                ["invalid_request", *extra.get(422, ())],
            )
        )
    if write_key:
        responses[429] = _error(
            _codes("Past the source's rate limit; retry after `Retry-After`", ["rate_limited"])
        )
    responses[503] = _error(
        _codes("A dependency is unavailable; retry after `Retry-After`", ["unavailable", *extra.get(503, ())])
    )
    for status, codes in extra.items():
        # A service's own codes of a status go where that status can arise: a conflict on a
        # change, a body's size or media type where there is a body, the rest where input is read.
        applies = {409: method != "GET", 413: has_body, 415: has_body}.get(status, takes_input)
        if status not in responses and applies:
            responses[status] = _error(_codes(_OTHER_REFUSALS.get(status, "Refused"), codes))
    return {str(status): response for status, response in sorted(responses.items())}


def build_openapi(app: FastAPI, description: ApiDescription) -> dict[str, Any]:
    """Return the app's OpenAPI document with security and error responses on every operation."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["ErrorBody"] = ERROR_SCHEMA
    schemas.update(description.schemas)
    # FastAPI's own validation-error shapes are never answered: validation errors use ErrorBody.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    components["securitySchemes"] = SECURITY_SCHEMES
    for route in _api_routes(app.routes):
        if not route.include_in_schema:
            continue
        token, scope = _guard_of(route)
        write_key = route.path_format in description.write_key_paths
        for method in route.methods:
            operation = document["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            if route.path_format in description.request_bodies:
                operation.setdefault("requestBody", description.request_bodies[route.path_format])
            if write_key:
                operation["security"] = [{WRITE_KEY: []}, {}]
            elif token:
                operation["security"] = [{BEARER: []}]
                if scope is not None:
                    operation["x-required-scope"] = scope
            else:
                operation["security"] = []
            success = {k: v for k, v in operation["responses"].items() if not k.startswith(("4", "5"))}
            operation["responses"] = {
                **success,
                **_error_responses(
                    route, method, token=token, write_key=write_key, extra=description.error_codes
                ),
            }
    _name_operations(document, [route for route in _api_routes(app.routes) if route.include_in_schema])
    return document


def _name_operations(document: dict[str, Any], routes: Sequence[Any]) -> None:
    """Name each operation after its handler (`list_tokens`), so generated clients read well;
    a name two operations share keeps FastAPI's longer, unique one."""
    named = [(route, method) for route in routes for method in route.methods]
    counts: dict[str, int] = {}
    for route, _ in named:
        counts[route.name] = counts.get(route.name, 0) + 1
    for route, method in named:
        operation = document["paths"].get(route.path_format, {}).get(method.lower())
        if operation is not None and counts[route.name] == 1:
            operation["operationId"] = route.name


def describe_api(app: FastAPI, description: ApiDescription) -> None:
    """Serve the app's OpenAPI document as build_openapi makes it (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, description)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- methods a path allows ----------------------------------------------------------------------


@dataclass(frozen=True)
class _PathMethods:
    pattern: re.Pattern[str]
    literal_segments: int
    methods: frozenset[str]


def _path_methods(routes: Sequence[BaseRoute]) -> list[_PathMethods]:
    found = []
    for context in iter_route_contexts(routes):
        if context.path is None or not context.methods:
            continue
        pattern, _, _ = compile_path(context.path)
        literal = sum(1 for part in context.path.split("/") if part and "{" not in part)
        found.append(_PathMethods(pattern, literal, frozenset(context.methods)))
    return found


def allowed_methods(paths: Sequence[_PathMethods], path: str) -> set[str] | None:
    """Return the methods a path allows, or None when no route has the path.

    Where a path matches a route with a literal segment and another with a parameter there
    (`/v1/suppressions/lookup` and `/v1/suppressions/{hash_value}`), the literal one is the path.
    """
    best = -1
    methods: set[str] = set()
    for candidate in paths:
        if not candidate.pattern.match(path):
            continue
        if candidate.literal_segments > best:
            best, methods = candidate.literal_segments, set(candidate.methods)
        elif candidate.literal_segments == best:
            methods |= candidate.methods
    return methods if best >= 0 else None


class MethodsAllowed:
    """Answer a method a path does not allow with 405 and the full `Allow` of the path, and
    OPTIONS with 204 and the same `Allow`, before routing picks a route by its method alone."""

    def __init__(self, app: ASGIApp, *, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.app = app
        self.routes = routes
        self._paths: list[_PathMethods] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._paths is None:  # the routes are complete once the app serves
                self._paths = _path_methods(self.routes())
            allowed = allowed_methods(self._paths, scope["path"])
            if allowed is not None and scope["method"] not in allowed:
                allow = ", ".join(sorted(allowed | {"OPTIONS"}))
                if scope["method"] == "OPTIONS":
                    await Response(status_code=204, headers={"Allow": allow})(scope, receive, send)
                    return
                response = error_response(
                    ApiError(
                        status=405,
                        code="method_not_allowed",
                        message=f"{scope['method']} is not allowed here; allowed: {allow}",
                        details={"allowed": sorted(allowed | {"OPTIONS"})},
                        headers={"Allow": allow},
                    )
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
