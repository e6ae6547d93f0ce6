"""With the broker stopped in the middle of a load, every event that got a 200 is in Kafka
afterwards, and the clients' retries deliver the rest once the broker is back. While it is
down, /readyz names Kafka and the log writes each repeated error once per interval.

Stopping the shared broker would disturb every other test session, so this test runs a
private single-node Kafka (the jars of the local stack, its own ports and data
directory) and a private ingest process that publishes to it.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cdp_common.testing import KAFKA_LIBS, PlatformUnderTest, PrivateKafka, read_topic, wait_for
from cdp_common.topics import TopicName

from ..conftest import start_ingest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

BATCHES = 120
EVENTS_PER_BATCH = 25
SENDERS = 4


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    if not (KAFKA_LIBS / ".complete").exists():
        pytest.fail("the Kafka jars are missing: run `make install`", pytrace=False)
    kafka = PrivateKafka(tmp_path)
    kafka.format()
    # The ingest process started next waits for the broker itself, so both start together.
    kafka.launch()
    try:
        yield kafka
    finally:
        kafka.kill()


@dataclass
class Tally:
    """What the clients saw."""

    acknowledged: set[str] = field(default_factory=set)
    acknowledged_while_down: set[str] = field(default_factory=set)
    unavailable: int = 0
    connection_errors: int = 0
    retried_batches: int = 0
    broker_down: bool = False


async def send_with_retries(
    client: httpx.AsyncClient, url: str, write_key: str, batch: list[dict[str, str]], tally: Tally
) -> None:
    """Send one batch until it gets a 200, retrying 503s as the Segment clients do (for at most 3 minutes)."""
    attempts = 0

    async def attempt() -> bool:
        nonlocal attempts
        attempts += 1
        try:
            response = await client.post(f"{url}/v1/batch", json={"batch": batch}, auth=(write_key, ""))
        except httpx.TransportError:
            tally.connection_errors += 1
            return False
        if response.status_code != 200:
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"]
            tally.unavailable += 1
            return False
        assert response.json()["accepted"] == len(batch)
        ids = {item["messageId"] for item in batch}
        tally.acknowledged |= ids
        if tally.broker_down:
            tally.acknowledged_while_down |= ids
        if attempts > 1:
            tally.retried_batches += 1
        return True

    # 0.3 s between tries is the client's backoff.
    await wait_for(attempt, timeout=180, interval=0.3, what="the batch to be acknowledged")


async def test_accepted_events_survive_a_broker_outage_and_retries_deliver_the_rest(
    platform: PlatformUnderTest,
    private_kafka: PrivateKafka,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    env = f"{platform.env}-dur{secrets.token_hex(2)}"
    process, write_key = await asyncio.to_thread(
        start_ingest,
        platform,
        tmp_path,
        CDP_ENV=env,
        CDP_KAFKA_BOOTSTRAP=private_kafka.bootstrap,
        CDP_PRODUCE_TIMEOUT_S="2",
    )
    try:
        run = secrets.token_hex(4)
        batches = [
            [
                {"type": "track", "userId": f"u{b % 17}", "event": "Load", "messageId": f"{run}-{b}-{i}"}
                for i in range(EVENTS_PER_BATCH)
            ]
            for b in range(BATCHES)
        ]
        queue: asyncio.Queue[list[dict[str, str]]] = asyncio.Queue()
        for batch in batches:
            queue.put_nowait(batch)
        tally = Tally()

        async def sender(client: httpx.AsyncClient) -> None:
            while not queue.empty():
                await send_with_retries(client, process.url, write_key, queue.get_nowait(), tally)

        async def quarter_acknowledged() -> bool:
            return len(tally.acknowledged) >= BATCHES * EVENTS_PER_BATCH // 4

        async def refused_while_down() -> bool:
            return tally.unavailable >= 3

        async def outage() -> None:
            await wait_for(quarter_acknowledged, timeout=120, what="a quarter of the load to be acknowledged")
            tally.broker_down = True
            await asyncio.to_thread(private_kafka.kill)
            await wait_for(refused_while_down, timeout=120, what="503 answers during the outage")
            await asyncio.to_thread(private_kafka.start)
            tally.broker_down = False

        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.wait_for(
                asyncio.gather(outage(), *(sender(client) for _ in range(SENDERS))), timeout=240
            )

        everything = {item["messageId"] for batch in batches for item in batch}
        assert tally.acknowledged == everything, "the retries deliver every event in the end"
        assert tally.unavailable >= 3
        assert tally.retried_batches >= 1
        envelopes = await read_topic(
            bootstrap=private_kafka.bootstrap,
            topic=f"{env}.{TopicName.EVENTS.value}",
            until=lambda found: everything <= {e.data.messageId for e in found},
            timeout=120,
        )
        in_kafka = {e.data.messageId for e in envelopes}
        assert tally.acknowledged <= in_kafka, "every event that got a 200 is in Kafka"
        assert not tally.acknowledged_while_down - in_kafka
        # What the outage cost, counted: 503s answered, batches that needed retries, and the
        # copies a retry left in Kafka (same envelope id, so consumers apply them once).
        record_property("events", len(everything))
        record_property("unavailable_answers", tally.unavailable)
        record_property("retried_batches", tally.retried_batches)
        record_property("duplicates_in_kafka", len(envelopes) - len(in_kafka))
        assert len({e.id for e in envelopes}) == len(in_kafka), "a resent event keeps its envelope id"
    finally:
        await asyncio.to_thread(process.stop)


async def test_while_the_broker_is_down_readyz_names_it_and_each_error_is_logged_once_an_interval(
    platform: PlatformUnderTest, private_kafka: PrivateKafka, tmp_path: Path
) -> None:
    interval_s = 2.0
    process, _ = await asyncio.to_thread(
        start_ingest,
        platform,
        tmp_path,
        CDP_ENV=f"{platform.env}-logs{secrets.token_hex(2)}",
        CDP_KAFKA_BOOTSTRAP=private_kafka.bootstrap,
        CDP_LOG_REPEAT_INTERVAL_S=str(interval_s),
    )
    log_path = process.log_path
    try:
        await asyncio.to_thread(private_kafka.kill)
        async with httpx.AsyncClient(timeout=10) as client:

            async def kafka_named() -> bool:
                ready = await client.get(f"{process.url}/readyz")
                return ready.status_code == 503 and "kafka" in ready.json()["problems"]

            await wait_for(kafka_named, timeout=120, what="/readyz to name Kafka")
        down_at = time.monotonic()
        seen = len(log_path.read_text().splitlines())

        def since_down() -> list[dict[str, object]]:
            written = [
                json.loads(line) for line in log_path.read_text().splitlines()[seen:] if line.startswith("{")
            ]
            return [line for line in written if line.get("level") in ("WARNING", "ERROR")]

        async def summarised() -> bool:
            return any("repeated" in line for line in since_down())

        await wait_for(summarised, timeout=120, what="a repeated error to be written with its count")
        windows = (time.monotonic() - down_at) / interval_s
        lines = since_down()
        repeats = Counter(
            (
                line["logger"],
                re.sub(r" \(repeated [\d,]+ times in the last \d+ s\)$", "", str(line["message"])),
            )
            for line in lines
        )
        assert max(repeats.values()) <= windows + 2, repeats.most_common(3)
        held_back = sum(int(str(line["repeated"])) for line in lines if "repeated" in line)
        assert held_back >= 1
    finally:
        process.stop()
