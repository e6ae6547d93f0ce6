"""A running `make up` stack and the test suite do not disturb each other."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import httpx
import pytest
from cdp_common.testing import PlatformUnderTest, wait_for

from .conftest import Stack
from .test_event_flow import profile_of, track

pytestmark = pytest.mark.e2e

DEV_ENV = Path(__file__).resolve().parents[2] / ".run" / "dev.env"


def dev_stack() -> dict[str, str]:
    """Read the running dev stack's credentials; skip locally, fail in CI, when it is absent."""
    if not DEV_ENV.exists():
        reason = ".run/dev.env is absent: start the local stack with make up"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason)
        pytest.skip(reason)
    pairs = (line.split("=", 1) for line in DEV_ENV.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


async def test_events_of_the_test_session_and_of_the_dev_stack_stay_apart(
    stack: Stack, http: httpx.AsyncClient, platform: PlatformUnderTest
) -> None:
    dev = dev_stack()
    assert platform.env != "dev"
    assert not platform.database_url.endswith("/cdp_dev")
    dev_admin = {"Authorization": f"Bearer {dev['CDP_ADMIN_TOKEN']}"}

    into_dev = "iso-dev-" + secrets.token_hex(4)
    into_test = "iso-test-" + secrets.token_hex(4)
    sent = await http.post(
        f"{dev['CDP_INGEST_URL']}/v1/track",
        json={"userId": into_dev, "event": "Isolation"},
        auth=(dev["CDP_WRITE_KEY"], ""),
    )
    assert sent.status_code == 200
    assert (await track(http, stack, {"userId": into_test, "event": "Isolation"})).status_code == 200

    async def in_dev(user_id: str) -> bool:
        response = await http.get(
            f"{dev['CDP_PROFILE_URL']}/v1/profiles/user_id:{user_id}", headers=dev_admin
        )
        return response.status_code == 200

    # Each stack resolves its own event...
    await wait_for(lambda: in_dev(into_dev), what="the dev stack to resolve its event")
    await wait_for(lambda: profile_of(http, stack, f"user_id:{into_test}"), what="the test stack's profile")
    # ...and neither sees the other's, though both share one Kafka and one PostgreSQL server.
    assert not await in_dev(into_test)
    assert await profile_of(http, stack, f"user_id:{into_dev}") is None
    # The session's admin token means nothing to the dev stack.
    foreign = await http.get(
        f"{dev['CDP_PROFILE_URL']}/v1/profiles/user_id:{into_dev}", headers=stack.admin()
    )
    assert foreign.status_code == 401
