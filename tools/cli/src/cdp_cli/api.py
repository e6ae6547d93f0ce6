"""HTTP calls to the services, with the contract's error bodies turned into readable failures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from cdp_cli.config import PlatformConfig


class PlatformError(Exception):
    """A service refused a call; the message is its error body's code and message."""


def describe_failure(response: httpx.Response) -> str:
    """Return `status code: message` from a contract error body, or the raw text."""
    try:
        error = response.json()["error"]
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:300]}"


class PlatformClient:
    """Authenticated calls to the platform's services."""

    def __init__(self, config: PlatformConfig, timeout: float = 30.0) -> None:
        self.config = config
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def call(self, method: str, service: str, path: str, **kwargs: Any) -> Any:
        """Call a service as the admin; return the JSON answer or raise PlatformError."""
        headers = {"Authorization": f"Bearer {self.config.admin_token}", **kwargs.pop("headers", {})}
        url = f"{self.config.service_url(service)}{path}"
        try:
            response = self.http.request(method, url, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise PlatformError(f"{service} is not reachable at {url}: {exc}") from exc
        if response.status_code >= 400:
            raise PlatformError(f"{method} {path} on {service}: {describe_failure(response)}")
        return response.json() if response.content else None

    def pages(self, service: str, path: str, limit: int = 100) -> Iterator[dict[str, Any]]:
        """Yield every item of a paginated list."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            page = self.call("GET", service, path, params=params)
            yield from page["items"]
            cursor = page.get("next")
            if not cursor:
                return

    def send_transactions(self, lines: list[bytes]) -> dict[str, Any]:
        """Send transactions as NDJSON to ingest with the write key; return the batch answer."""
        url = f"{self.config.service_url('ingest')}/v1/transactions"
        try:
            response = self.http.post(
                url,
                content=b"\n".join(lines),
                headers={"Content-Type": "application/x-ndjson"},
                auth=(self.config.write_key, ""),
            )
        except httpx.HTTPError as exc:
            raise PlatformError(f"ingest is not reachable at {url}: {exc}") from exc
        if response.status_code == 400:
            body = response.json()
            rejected = body.get("error", {}).get("details", {}).get("rejected")
            if rejected is not None:
                return {"accepted": 0, "rejected": rejected}
        if response.status_code >= 400:
            raise PlatformError(f"POST /v1/transactions: {describe_failure(response)}")
        answer: dict[str, Any] = response.json()
        return answer
