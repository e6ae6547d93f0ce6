"""Every dashboard panel returns data from a real Prometheus scraping the session's services.

The test starts the `prometheus` binary on a free port with a private config that
scrapes the five services of the session's `stack` (labelled like the local stack's
config), drives traffic through them (tracking, bad input, tokens, profile reads, a
dead letter), then runs each panel's query through Prometheus' HTTP API.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from cdp_common.testing import SERVICES, PlatformUnderTest, Stack, free_port, wait_for

from .dashboards import ROOT, panel_queries

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SCRAPE_INTERVAL = "1s"


class Prometheus:
    """A Prometheus server of this test, and its query API."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """Run an instant query and return its result vector."""
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = response.json()
        assert response.status_code == 200, f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (scripts/stack.sh install installs it)", pytrace=False)
    workdir = tmp_path_factory.mktemp("prometheus")
    shutil.copy(ROOT / "deploy/prometheus/alerts.yml", workdir / "alerts.yml")
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {
                "job_name": "cdp",
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [stack.url(name).removeprefix("http://")], "labels": {"service": name}}
                    for name in SERVICES
                ],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


async def drive_traffic(stack: Stack, platform: PlatformUnderTest) -> None:
    """Send what an ordinary day sends: events, bad input, token changes, reads, one poison message."""
    ingest = stack.url("ingest")
    run = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(timeout=15) as client:
        for index in range(5):
            response = await client.post(
                f"{ingest}/v1/track",
                auth=(stack.write_key, ""),
                json={
                    "userId": f"ops-{run}-{index}",
                    "event": "Order Completed",
                    "properties": {"order_id": f"o-{run}-{index}", "revenue": 10 + index},
                    "context": {"traits": {"email": f"ops-{run}-{index}@example.com"}},
                },
            )
            assert response.status_code == 200, response.text
        response = await client.post(
            f"{ingest}/v1/identify", auth=(stack.write_key, ""), json={"userId": f"ops-{run}-0", "traits": {}}
        )
        assert response.status_code == 200, response.text
        refused = await client.post(f"{ingest}/v1/track", auth=(stack.write_key, ""), json={"event": "No id"})
        assert refused.status_code == 400, refused.text
        created = await client.post(
            f"{ingest}/v1/tokens",
            headers=stack.admin(),
            json={"name": f"ops-{run}", "scopes": ["profiles:read"]},
        )
        assert created.status_code in (200, 201), created.text
        for name in SERVICES:
            # A call without a token: every service answers 401 (a 4xx its dashboard shows).
            unauthorised = await client.get(f"{stack.url(name)}/v1/privacy/profiles/{uuid.uuid4()}")
            assert unauthorised.status_code == 401, f"{name}: {unauthorised.status_code}"

        async def profile_exists() -> bool:
            found = await client.get(
                f"{stack.url('profile')}/v1/profiles/user_id:ops-{run}-4", headers=stack.admin()
            )
            return found.status_code == 200

        await wait_for(profile_exists, timeout=60, what="the profile of the tracked events")
    producer = AIOKafkaProducer(bootstrap_servers=platform.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(f"{platform.env}.cdp.events.v1", b"not an envelope", key=b"ops-poison")
    finally:
        await producer.stop()


async def test_every_panel_query_returns_data(
    stack: Stack, platform: PlatformUnderTest, prometheus: Prometheus
) -> None:
    async def scraping_all() -> bool:
        try:
            up = await prometheus.query('up{job="cdp"} == 1')
        except (httpx.HTTPError, ValueError):
            # Until it is ready, Prometheus answers 503 with a plain-text body.
            return False
        return {sample["metric"]["service"] for sample in up} == set(SERVICES)

    await wait_for(scraping_all, timeout=60, interval=0.5, what="Prometheus to scrape the five services")
    await drive_traffic(stack, platform)
    queries = [query for name in SERVICES for query in panel_queries({"service": name})]
    queries = list({(q.panel, q.ref_id, q.expr): q for q in queries}.values())
    assert len(queries) >= 20

    without_data: list[str] = []

    async def all_answered() -> bool:
        without_data.clear()
        for query in queries:
            if not await prometheus.query(query.expr):
                without_data.append(f"{query.dashboard} / {query.panel} [{query.ref_id}]: {query.expr}")
        return not without_data

    try:
        await wait_for(all_answered, timeout=90, interval=1.0, what="every panel query to return data")
    except AssertionError as error:
        raise AssertionError("panels without data:\n" + "\n".join(without_data)) from error


async def test_alert_rules_evaluate_without_errors(prometheus: Prometheus) -> None:
    async def rules_evaluated() -> list[dict[str, Any]] | None:
        async with httpx.AsyncClient(timeout=10) as client:
            groups = (await client.get(f"{prometheus.url}/api/v1/rules")).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if not rules or any(rule.get("health") == "unknown" for rule in rules):
            return None
        return rules

    rules = await wait_for(rules_evaluated, timeout=30, interval=0.5, what="the alert rules to be evaluated")
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert broken == {}
    firing = {rule["name"] for rule in rules if rule.get("state") == "firing"}
    assert "CdpServiceDown" not in firing
    assert "CdpServiceMissing" not in firing


def test_the_config_of_this_test_mirrors_the_local_stack() -> None:
    local = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (cdp,) = [job for job in local["scrape_configs"] if job["job_name"] == "cdp"]
    assert {static["labels"]["service"] for static in cdp["static_configs"]} == set(SERVICES)
    assert Path(ROOT / "deploy/prometheus/alerts.yml").is_file()
