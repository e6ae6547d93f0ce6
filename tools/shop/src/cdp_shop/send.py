"""Sending a simulated world through the real HTTP API: its exchange rates to profile, then tracking
calls in batches and transactions as NDJSON to ingest.

Calls go out in time order, in chunks of one kind; a 429 or 503 is retried after its
Retry-After, a bounded number of times, so a busy stack slows the shop down but
loses nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from cdp_shop.world import Call

BATCH_EVENTS = 200
MAX_ATTEMPTS = 8


class SendFailed(Exception):
    """The API refused a chunk for good (a 4xx other than 429, or retries ran out)."""


@dataclass
class Sent:
    """What the API took."""

    requests: int = 0
    accepted: int = 0
    rejected: int = 0


def chunks(calls: Sequence[Call]) -> list[tuple[str, list[Call]]]:
    """Split calls, kept in order, into runs of one kind of at most BATCH_EVENTS."""
    runs: list[tuple[str, list[Call]]] = []
    for call in calls:
        if runs and runs[-1][0] == call.kind and len(runs[-1][1]) < BATCH_EVENTS:
            runs[-1][1].append(call)
        else:
            runs.append((call.kind, [call]))
    return runs


async def _post(client: httpx.AsyncClient, path: str, content: bytes, content_type: str) -> httpx.Response:
    for attempt in range(1, MAX_ATTEMPTS + 1):
        response = await client.post(path, content=content, headers={"Content-Type": content_type})
        if response.status_code not in (429, 503) or attempt == MAX_ATTEMPTS:
            return response
        await asyncio.sleep(min(float(response.headers.get("retry-after", "1")), 10.0))
    raise AssertionError("unreachable")


async def send_world(
    *, calls: Sequence[Call], ingest_url: str, write_key: str, timeout_s: float = 30
) -> Sent:
    """Send every call; return the counts the API answered with."""
    sent = Sent()
    async with httpx.AsyncClient(base_url=ingest_url, auth=(write_key, ""), timeout=timeout_s) as client:
        for kind, run in chunks(calls):
            if kind == "tracking":
                body = json.dumps({"batch": [call.body for call in run]}).encode()
                response = await _post(client, "/v1/batch", body, "application/json")
            else:
                body = "\n".join(json.dumps(call.body) for call in run).encode()
                response = await _post(client, "/v1/transactions", body, "application/x-ndjson")
            sent.requests += 1
            if response.status_code != 200:
                raise SendFailed(f"{kind} chunk answered {response.status_code}: {response.text[:500]}")
            answer = response.json()
            sent.accepted += answer.get("accepted", len(run))
            sent.rejected += len(answer.get("rejected", []))
    return sent


async def load_rates(
    *, days: Sequence[dict[str, Any]], profile_url: str, admin_token: str, timeout_s: float = 30
) -> int:
    """Load the world's reference rates with PUT /v1/exchange-rates; return how many days were loaded."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=profile_url, headers=headers, timeout=timeout_s) as client:
        response = await client.put("/v1/exchange-rates", json=list(days))
    if response.status_code != 200:
        raise SendFailed(f"exchange rates answered {response.status_code}: {response.text[:500]}")
    return int(response.json()["days"])
