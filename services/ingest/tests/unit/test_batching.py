"""The batcher answers a caller only when every batch its events went into is acknowledged,
and fails it when one is refused or not acknowledged in time (a fake producer stands in
for the broker; the real one is driven by the integration and durability tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from cdp_common.testing import wait_for
from cdp_ingest.batching import PARTITIONER, EventBatcher

PARTITIONS = [0, 1]


class FakeProducer:
    """Takes record batches and leaves their delivery to the test."""

    def __init__(self) -> None:
        self.deliveries: dict[int, list[asyncio.Future[Any]]] = {0: [], 1: []}
        self.records: dict[int, int] = {0: 0, 1: 0}

    async def partitions_for(self, topic: str) -> set[int]:
        return set(PARTITIONS)

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(16_384, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.deliveries[partition].append(delivery)
        self.records[partition] += batch.record_count()
        return delivery

    async def submitted(self, partition: int, count: int) -> asyncio.Future[Any]:
        """Wait until `count` batches of a partition were submitted; return the last one's delivery."""

        async def probe() -> asyncio.Future[Any] | None:
            deliveries = self.deliveries[partition]
            return deliveries[count - 1] if len(deliveries) >= count else None

        return await wait_for(
            probe, timeout=5, interval=0.001, what=f"batch {count} of partition {partition}"
        )


def key_on(partition: int) -> bytes:
    """Return a key the batcher sends to `partition`."""
    return next(
        key
        for key in (f"user-{n}".encode() for n in range(100))
        if PARTITIONER(key, PARTITIONS, PARTITIONS) == partition
    )


async def test_a_caller_returns_only_once_every_partition_acknowledged_its_events() -> None:
    producer = FakeProducer()
    batcher = EventBatcher(producer=producer, topic="events", timeout_s=5)
    caller = asyncio.create_task(batcher.publish([(key_on(0), b"a"), (key_on(1), b"b"), (key_on(0), b"c")]))
    first = await producer.submitted(0, 1)
    second = await producer.submitted(1, 1)
    assert producer.records == {0: 2, 1: 1}
    first.set_result(None)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(caller), 0.05)
    second.set_result(None)
    await asyncio.wait_for(caller, 1)


async def test_callers_sharing_a_batch_each_get_its_outcome() -> None:
    producer = FakeProducer()
    batcher = EventBatcher(producer=producer, topic="events", timeout_s=5)
    first = asyncio.create_task(batcher.publish([(key_on(0), b"a")]))
    delivery = await producer.submitted(0, 1)
    # Events arriving while the first batch waits for the broker ride in the next one.
    second = asyncio.create_task(batcher.publish([(key_on(0), b"b")]))
    third = asyncio.create_task(batcher.publish([(key_on(0), b"c")]))
    delivery.set_result(None)
    await asyncio.wait_for(first, 1)
    refused = await producer.submitted(0, 2)
    assert producer.records[0] == 3
    refused.set_exception(KafkaError("not enough replicas"))
    for caller in (second, third):
        with pytest.raises(KafkaError, match="not enough replicas"):
            await asyncio.wait_for(caller, 1)


async def test_a_batch_not_acknowledged_in_time_fails_its_callers() -> None:
    producer = FakeProducer()
    batcher = EventBatcher(producer=producer, topic="events", timeout_s=0.05)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(batcher.publish([(key_on(1), b"a")]), 5)
    # A late acknowledgement changes nothing for a caller that was already answered, nor for the next.
    (await producer.submitted(1, 1)).set_result(None)
    later = asyncio.create_task(batcher.publish([(key_on(1), b"b")]))
    (await producer.submitted(1, 2)).set_result(None)
    await asyncio.wait_for(later, 1)
