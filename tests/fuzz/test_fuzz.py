"""Property-based fuzzing of every service through its own OpenAPI document (schemathesis), as the
admin and with a token of one scope: no answer is a 5xx, every answer agrees with the document
(status, content type, body), and a request the document calls valid is refused with 400 or 422
only for a reason (`error.code`) the document states for that answer. Generated strings draw on
hostile values (NUL, very long, deep brackets, right-to-left marks); explicit hostile requests
(JSON nested thousands deep, numbers of thousands of digits, invalid UTF-8, NUL in paths and
queries, form and unknown content types) go to every operation as well. Each run is bounded by
the examples it generates per operation."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from cdp_common.testing import SERVICES, Stack
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status
from schemathesis.engine.events import FatalError, FuzzScenarioFinished, NonFatalError, ScenarioFinished

pytestmark = pytest.mark.e2e

# Per operation, service and token: one pass over every operation, together well inside CI's
# limit. For a deeper run by hand, CDP_FUZZ_SECONDS keeps fuzzing each service and token that
# long, and CDP_FUZZ_COVERAGE=1 adds schemathesis's boundary-value phase.
EXAMPLES_PER_OPERATION = int(os.environ.get("CDP_FUZZ_EXAMPLES", "6"))
SECONDS_PER_RUN = int(os.environ["CDP_FUZZ_SECONDS"]) if os.environ.get("CDP_FUZZ_SECONDS") else None
COVERAGE_PHASE = os.environ.get("CDP_FUZZ_COVERAGE") == "1"
# Whether a request the document calls invalid must be refused. Ingest's tracking API is as lenient
# as Segment's (a batch's `context` that is not an object is ignored), so this is for runs by hand
# (CDP_FUZZ_NEGATIVE=1).
NEGATIVE_DATA_REJECTION = os.environ.get("CDP_FUZZ_NEGATIVE") == "1"

HOSTILE_STRINGS = [
    "a\u0000b",
    "\u0000",
    "x" * 20_000,
    "[" * 3_000,
    "{" * 3_000,
    "9" * 5_000,
    "\u202eevil",
    "😀" * 300,
    "' OR 1=1 --",
    "../../etc/passwd",
    "%00%ff",
    " ",
]

# What the services answer (and document) for one request the document calls valid.
ACCEPTED = ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "422", "429"]

_DOCUMENTS: dict[tuple[str, str], dict[str, Any]] = {}


@schemathesis.check
def refusal_reason_documented(ctx: Any, response: Any, case: Any) -> None:
    """A valid request refused with 400 or 422 carries an `error.code` its operation documents."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code not in (400, 422):
        return
    operation = _DOCUMENTS.get((case.method.upper(), case.operation.path))
    if operation is None:
        return
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AssertionError(f"{response.status_code} without the contract's error body") from exc
    documented = operation["responses"].get(str(response.status_code), {}).get("description", "")
    if f"`{code}`" not in documented:
        raise AssertionError(
            f"a request valid by the document was refused with {response.status_code} `{code}`, "
            f"which the document does not state: {response.text[:300]}"
        )


def _config(stack: Stack, service: str, token: str) -> SchemathesisConfig:
    bounded = {"max-time": SECONDS_PER_RUN} if SECONDS_PER_RUN else {}
    return SchemathesisConfig.from_dict(
        {
            **bounded,
            "base-url": stack.url(service),
            "workers": 1,
            "request-timeout": 20,
            "suppress-health-check": ["all"],
            "dictionaries": {"hostile": {"values": HOSTILE_STRINGS}},
            "generation": {
                "max-examples": EXAMPLES_PER_OPERATION,
                "mode": "all",
                "dictionaries": {"string": {"dictionary": "hostile", "probability": 0.2}},
            },
            "phases": {
                "examples": {"enabled": False},
                "coverage": {"enabled": COVERAGE_PHASE},
                "stateful": {"enabled": False},
            },
            "auth": {
                "openapi": {
                    "bearerAuth": {"bearer": token},
                    "writeKey": {"username": stack.write_key, "password": ""},
                }
            },
            "checks": {
                "not_a_server_error": {"enabled": True},
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
                "positive_data_acceptance": {"enabled": True, "expected-statuses": ACCEPTED},
                "negative_data_rejection": {"enabled": NEGATIVE_DATA_REJECTION},
                "missing_required_header": {"enabled": False},
                "ignored_auth": {"enabled": True},
                "use_after_free": {"enabled": False},
                "ensure_resource_availability": {"enabled": False},
                "unsupported_method": {"enabled": False},
            },
        }
    )


def _run(events: Iterator[Any]) -> tuple[list[str], set[str]]:
    """Return the failures of a run and the operations it sent requests to."""
    found: list[str] = []
    exercised: set[str] = set()
    for event in events:
        if isinstance(event, ScenarioFinished | FuzzScenarioFinished):
            if event.recorder.interactions:
                exercised.add(event.recorder.label)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        sample = re.sub(r"\s+", " ", check.failure_info.code_sample)[:600]
                        found.append(
                            f"{event.recorder.label}: {failure.title}: {failure.message[:400]}\n  {sample}"
                        )
        elif isinstance(event, NonFatalError):
            found.append(f"{event.label}: {event.info.format()[:600]}")
        elif isinstance(event, FatalError):
            found.append(f"the fuzzer failed: {event.exception!r}")
    return sorted(set(found)), exercised


@pytest.mark.parametrize("who", ["admin", "narrow"])
@pytest.mark.parametrize("service", SERVICES)
def test_fuzzing_the_document_finds_no_5xx_and_no_answer_it_does_not_state(
    stack: Stack, documents: dict[str, dict[str, Any]], narrow_token: str, service: str, who: str
) -> None:
    document = documents[service]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            _DOCUMENTS[(method.upper(), path)] = operation
    token = stack.admin_token if who == "admin" else narrow_token
    schema = schemathesis.openapi.from_dict(document, config=_config(stack, service, token))
    failures, exercised = _run(schemathesis.engine.from_schema(schema).execute())
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:40])
    every = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    assert exercised == every, f"not fuzzed: {sorted(every - exercised)}"


# --- explicit hostile requests --------------------------------------------------------------


def _deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


HOSTILE_BODIES = {
    "objects nested 5,000 deep": _deep(5_000),
    "arrays nested 5,000 deep": b"[" * 5_000 + b"]" * 5_000,
    "an integer of 5,000 digits": b'{"name": ' + b"9" * 5_000 + b"}",
    "invalid UTF-8": b'{"name": "\xff\xfe\xc0"}',
    "a lone surrogate": b'{"name": "\\ud800"}',
    "a NUL character": b'{"name": "a\\u0000b", "key": "a\\u0000b"}',
    "a string of a million characters": b'{"name": "' + b"x" * 1_000_000 + b'"}',
}


HOSTILE_MEDIA_TYPES = [
    "multipart/form-data",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "text/xml",
    "application/json; charset=latin-7",
]


def _filled(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


@pytest.mark.parametrize("service", SERVICES)
async def test_hostile_requests_get_a_4xx_with_the_error_body_everywhere(
    stack: Stack, documents: dict[str, dict[str, Any]], http: httpx.AsyncClient, service: str
) -> None:
    basic = httpx.BasicAuth(stack.write_key, "")
    problems = []
    for path, item in documents[service]["paths"].items():
        for method, operation in item.items():
            auth = basic if operation["security"] == [{"writeKey": []}, {}] else None
            headers = {} if auth else stack.admin()
            url = stack.url(service) + _filled(path, "x")
            sent = []
            if "requestBody" in operation:
                for name, body in HOSTILE_BODIES.items():
                    answer = await http.request(
                        method, url, content=body, auth=auth,
                        headers={**headers, "Content-Type": "application/json"},
                    )  # fmt: skip
                    sent.append((name, answer))
                for media_type in HOSTILE_MEDIA_TYPES:
                    answer = await http.request(
                        method, url, content=b'{"name": "x"}', auth=auth,
                        headers={**headers, "Content-Type": media_type},
                    )  # fmt: skip
                    sent.append((f"Content-Type {media_type}", answer))
            if "{" in path:
                answer = await http.request(
                    method, stack.url(service) + _filled(path, "a%00b"), headers=headers
                )
                sent.append(("a NUL in the path", answer))
            if any(p["in"] == "query" for p in operation.get("parameters", [])):
                query = {p["name"]: "a\u0000b" for p in operation["parameters"] if p["in"] == "query"}
                answer = await http.request(method, url, params=query, headers=headers)
                sent.append(("a NUL in the query", answer))
            for name, answer in sent:
                shaped = answer.status_code < 400 or "error" in _json(answer)
                if answer.status_code >= 500 or not shaped:
                    problems.append(
                        f"{method.upper()} {path} with {name}: {answer.status_code} {answer.text[:200]}"
                    )
    assert not problems, "\n".join(problems)


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        value = answer.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
