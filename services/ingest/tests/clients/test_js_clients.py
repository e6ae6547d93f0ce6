"""The official JavaScript clients, unchanged, with only the host and write key set:
@segment/analytics-node, @rudderstack/rudder-sdk-node, and analytics.js
(@segment/analytics-next) on a test page in Debian's headless Chromium, where only the
write key and the CDN URL point at the platform (it learns the API host from ingest's
settings document)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cdp_common.testing import PlatformUnderTest, free_port

from ..conftest import Ingest, read_events_where

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """Install the pinned npm packages of package-lock.json once, when they are missing."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed: run `make install`", pytrace=False)
    installed = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        # `npm ci` refuses this lock on npm 11 (it wants every platform's optional
        # binaries listed); `npm install --no-save` installs the locked versions and
        # leaves the lock as it is.
        subprocess.run(
            ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            check=True,
            timeout=600,
        )
    return HERE / "node_modules"


def run_node(script: str, environ: dict[str, str]) -> dict[str, Any]:
    """Run a script of this folder with node; return the JSON it prints, failing with its output."""
    result = subprocess.run(
        ["node", script], cwd=HERE, env={**os.environ, **environ}, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome


def check_calls(events: list[Any]) -> dict[str, Any]:
    by_type = {e.data.type: e.data for e in events}
    assert sorted(by_type) == ["alias", "group", "identify", "page", "screen", "track"]
    assert by_type["identify"].traits["plan"] == "pro"
    assert by_type["track"].properties["total"] == 27.5
    assert by_type["group"].groupId == "acme"
    assert by_type["alias"].previousId == "anon-" + by_type["alias"].userId
    return by_type


async def test_node_clients_deliver_every_call(
    ingest: Ingest, platform: PlatformUnderTest, node_modules: Path
) -> None:
    segment_user, rudder_user = "seg-node-" + secrets.token_hex(4), "rudder-node-" + secrets.token_hex(4)
    outcome = await asyncio.to_thread(
        run_node,
        "node_clients.mjs",
        {
            "INGEST_URL": ingest.url,
            "WRITE_KEY": ingest.write_key,
            "SEGMENT_USER": segment_user,
            "RUDDER_USER": rudder_user,
        },
    )
    assert outcome["errors"] == []
    segment = check_calls(await read_events_where(platform, lambda d: d.userId == segment_user, 6))
    assert segment["track"].context["library"]["name"] == "@segment/analytics-node"
    rudder = check_calls(await read_events_where(platform, lambda d: d.userId == rudder_user, 6))
    assert (
        rudder["track"].context["library"]["name"] == "analytics-node"
    )  # what RudderStack's SDK calls itself


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, which `make install` provides."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed: run `make install`", pytrace=False)
    return CHROMIUM


@pytest.fixture
def test_site() -> Iterator[str]:
    """Serve this folder (the test page and the analytics.js bundle) on its own origin."""
    handler = functools.partial(_QuietHandler, directory=str(HERE))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""


async def test_analytics_js_in_headless_chromium_sends_through_the_settings_document(
    ingest: Ingest, platform: PlatformUnderTest, node_modules: Path, test_site: str, chromium: str
) -> None:
    user = "browser-" + secrets.token_hex(4)
    page = f"{test_site}/page.html?writeKey={ingest.write_key}&cdn={ingest.url}&user={user}"
    outcome = await asyncio.to_thread(
        run_node, "browser.mjs", {"INGEST_URL": ingest.url, "PAGE_URL": page, "CHROMIUM": chromium}
    )
    assert outcome["error"] is None
    assert outcome["problems"] == []
    assert outcome["sent"][0].startswith(f"200 /v1/projects/{ingest.write_key}/settings")
    assert sorted(outcome["sent"][1:]) == [
        "200 /v1/a",
        "200 /v1/g",
        "200 /v1/i",
        "200 /v1/p",
        "200 /v1/t",
        "200 /v1/t",
    ]
    anonymous_id = outcome["done"]["anonymousId"]
    events = await read_events_where(platform, lambda d: d.anonymousId == anonymous_id or d.userId == user, 6)
    by_event = {(e.data.type, e.data.event) for e in events}
    assert by_event == {
        ("page", None),
        ("track", "Product Viewed"),
        ("identify", None),
        ("track", "Order Completed"),
        ("group", None),
        ("alias", None),
    }
    for envelope in events:
        data = envelope.data
        assert data.context["library"]["name"] == "analytics.js"
        assert data.context["ip"] == "127.0.0.1"
        assert "Chrome" in data.context["userAgent"]
        assert data.context["page"]["path"] == "/page.html"
    identify = next(e.data for e in events if e.data.type == "identify")
    assert (identify.userId, identify.anonymousId) == (user, anonymous_id)
    assert identify.traits["plan"] == "pro"
