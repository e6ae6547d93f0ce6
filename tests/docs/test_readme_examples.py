"""The `curl` examples of the README files against the services' OpenAPI documents.

Every shell example that calls a service through its `$CDP_<NAME>_URL` must name a path and
a method the service's own document (built by its `create_app`, no stack needed) describes,
so that an example cannot go on showing a route that was renamed or removed.
"""

from __future__ import annotations

import importlib
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "profile", "segment", "campaign", "consent")
DOCUMENTS = (
    "README.md",
    "docs/operations.md",
    "benchmarks/README.md",
    *(f"services/{name}/README.md" for name in SERVICES),
)
SHELL_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
SERVICE_URL = re.compile(r"^\$\{?CDP_(INGEST|PROFILE|SEGMENT|CAMPAIGN|CONSENT)_URL\}?(/[^?#]*)?")
# `curl`, also as the start of a command substitution: `ID=$(curl ...`.
CURL = re.compile(r"(?:\w+=)?(?:\$\()?curl")
DATA_OPTIONS = ("-d", "--data", "--data-raw", "--data-binary", "--data-urlencode", "--json")


@dataclass(frozen=True)
class Call:
    """One `curl` of an example: where it is written, the service, the method and the path."""

    document: str
    service: str
    method: str
    path: str


def curl_calls(*, document: str) -> list[Call]:
    """Return every call a document's shell examples make to a service."""
    text = (ROOT / document).read_text()
    calls: list[Call] = []
    for block in SHELL_BLOCK.findall(text):
        lexer = shlex.shlex(block.replace("\\\n", " "), posix=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        starts = [i for i, token in enumerate(tokens) if CURL.fullmatch(token)]
        ends = [*starts[1:], len(tokens)] if starts else []
        for start, end in zip(starts, ends, strict=True):
            call = parse_curl(document=document, arguments=tokens[start + 1 : end])
            if call is not None:
                calls.append(call)
    return calls


def parse_curl(*, document: str, arguments: list[str]) -> Call | None:
    """Return the service call one `curl` makes, or None when it calls no service URL."""
    method: str | None = None
    sends_data = False
    url: re.Match[str] | None = None
    for i, argument in enumerate(arguments):
        if argument in ("-X", "--request") and i + 1 < len(arguments):
            method = arguments[i + 1].upper()
        elif argument in DATA_OPTIONS:
            sends_data = True
        elif url is None:
            url = SERVICE_URL.match(argument)
    if url is None:
        return None
    return Call(
        document=document,
        service=url.group(1).lower(),
        method=method or ("POST" if sends_data else "GET"),
        path=url.group(2) or "/",
    )


@cache
def openapi(service: str) -> dict[str, Any]:
    """Build a service's app with its default settings and return its OpenAPI document."""
    main = importlib.import_module(f"cdp_{service}.main")
    settings = importlib.import_module(f"cdp_{service}.settings")
    document: dict[str, Any] = main.create_app(settings.Settings()).openapi()
    return document


def template_matches(*, template: str, path: str) -> bool:
    """Whether a concrete path (with placeholders such as `…` or `$ID`) fits a path template."""
    wanted = template.strip("/").split("/")
    given = path.strip("/").split("/")
    if len(wanted) != len(given):
        return False
    return all(
        part == seen or (part.startswith("{") and part.endswith("}") and seen != "")
        for part, seen in zip(wanted, given, strict=True)
    )


def described_methods(*, service: str, path: str) -> set[str]:
    """Return the methods the service's document describes for the templates a path fits."""
    paths: dict[str, dict[str, Any]] = openapi(service)["paths"]
    return {
        method.upper()
        for template, operations in paths.items()
        if template_matches(template=template, path=path)
        for method in operations
    }


ALL_CALLS = [call for document in DOCUMENTS for call in curl_calls(document=document)]


def test_the_examples_call_every_service() -> None:
    assert {call.service for call in ALL_CALLS} == set(SERVICES)
    assert len(ALL_CALLS) >= 30, ALL_CALLS


@pytest.mark.parametrize(
    "call", ALL_CALLS, ids=[f"{call.document}:{call.method} {call.path}" for call in ALL_CALLS]
)
def test_each_example_calls_a_described_operation(call: Call) -> None:
    methods = described_methods(service=call.service, path=call.path)
    assert call.method in methods, (
        f"{call.document}: {call.method} {call.path} is not in {call.service}'s OpenAPI document"
        f" (it describes {sorted(methods) or 'no such path'})"
    )


def test_a_renamed_route_is_caught() -> None:
    assert described_methods(service="profile", path="/v1/profiles/user_id:42") >= {"GET"}
    assert described_methods(service="profile", path="/v1/profile/user_id:42") == set()
    assert "DELETE" not in described_methods(service="ingest", path="/v1/track")
