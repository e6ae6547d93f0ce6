"""Merges the accepted events of concurrent requests into Kafka record batches, one chain per partition.

Handing the producer one message at a time costs a future, a partitioner call and
the accumulator's bookkeeping per event; here an event costs one append to an open
record batch of its partition, and a request waits on one future of its own, settled
once every batch its events went into is acknowledged. One task per partition submits
that partition's batches in order, closing each as it submits it, so events that
arrive while a submission waits for the broker ride in the partition's next, larger
batch. (A submitted batch is never appended to: the producer numbers a batch's records
when it takes it, and builds it later.) A batch is acknowledged when the producer's
delivery of it resolves (idempotent producer, acks=all); its callers fail when that
delivery fails, or when it has not come within the timeout of the batch's opening.
One timer per batch bounds the wait of every caller in it, since a caller joins a
batch after it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any, Protocol

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

logger = logging.getLogger(__name__)

# The partitioner `AIOKafkaProducer.send` uses, so a key lands on the same partition either way.
PARTITIONER = DefaultPartitioner()
MAX_CACHED_KEYS = 100_000


class RecordBatchProducer(Protocol):
    """What the batcher needs of AIOKafkaProducer: partitions, empty batches, and their submission."""

    async def partitions_for(self, topic: str) -> set[int]:
        """Return the topic's partitions."""

    def create_batch(self) -> BatchBuilder:
        """Return an empty record batch."""

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        """Submit a closed batch; return the future of its delivery."""


class _Delivery:
    """One caller's wait: its future, and how many of its batches are not acknowledged yet."""

    __slots__ = ("future", "unacknowledged")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.unacknowledged = 0


class _OpenBatch:
    """A record batch being filled, the callers waiting on it, and the timer bounding their wait."""

    __slots__ = ("builder", "deadline", "deliveries")

    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder
        self.deliveries: list[_Delivery] = []
        self.deadline: asyncio.TimerHandle | None = None

    def acknowledge(self) -> None:
        """Settle every caller whose batches are now all acknowledged."""
        if self.deadline is not None:
            self.deadline.cancel()
        for delivery in self.deliveries:
            delivery.unacknowledged -= 1
            if delivery.unacknowledged == 0 and not delivery.future.done():
                delivery.future.set_result(None)
        self.deliveries = []

    def fail(self, exc: BaseException) -> None:
        """Fail every caller waiting on this batch."""
        if self.deadline is not None:
            self.deadline.cancel()
        error = (
            exc
            if isinstance(exc, KafkaError | TimeoutError)
            else KafkaError(f"the batch was not sent: {exc!r}")
        )
        for delivery in self.deliveries:
            if not delivery.future.done():
                delivery.future.set_exception(error)
        self.deliveries = []


class EventBatcher:
    """Appends keyed messages to open record batches of one topic and submits them to the producer."""

    def __init__(self, *, producer: RecordBatchProducer, topic: str, timeout_s: float) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s
        self._partitions: list[int] = []
        self._partition_of: dict[bytes, int] = {}
        # Per partition: the batches not yet submitted (the last one open) and the task submitting them.
        self._chains: dict[int, list[_OpenBatch]] = {}
        self._submitters: dict[int, asyncio.Task[None]] = {}

    async def publish(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Append (key, value) messages and return once Kafka acknowledged every one of them.

        Raises KafkaError when a batch was refused or could not be sent, and TimeoutError
        when one was not acknowledged within `timeout_s` of its opening.
        """
        if not self._partitions:
            async with asyncio.timeout(self.timeout_s):
                self._partitions = sorted(await self.producer.partitions_for(self.topic))
        loop = asyncio.get_running_loop()
        delivery = _Delivery(loop.create_future())
        for key, value in messages:
            partition = self._partition_of.get(key)
            if partition is None:
                if len(self._partition_of) >= MAX_CACHED_KEYS:
                    self._partition_of.clear()
                partition = PARTITIONER(key, self._partitions, self._partitions)
                self._partition_of[key] = partition
            chain = self._chains.get(partition)
            if chain is None:
                chain = self._chains[partition] = []
                self._submitters[partition] = asyncio.create_task(self._submit(partition, chain))
            if not chain or chain[-1].builder.append(timestamp=None, key=key, value=value) is None:
                chain.append(self._open_batch(loop))
                if chain[-1].builder.append(timestamp=None, key=key, value=value) is None:
                    # The batches this caller joined settle without it.
                    delivery.future.cancel()
                    raise MessageSizeTooLargeError(f"a message of {len(value)} bytes exceeds a record batch")
            waiting = chain[-1].deliveries
            # A caller's appends run without a pause, so it is the batch's last waiter if it joined before.
            if not waiting or waiting[-1] is not delivery:
                waiting.append(delivery)
                delivery.unacknowledged += 1
        if delivery.unacknowledged:
            await delivery.future

    def _open_batch(self, loop: asyncio.AbstractEventLoop) -> _OpenBatch:
        batch = _OpenBatch(self.producer.create_batch())
        batch.deadline = loop.call_later(
            self.timeout_s,
            batch.fail,
            TimeoutError(f"Kafka did not acknowledge the batch within {self.timeout_s:g} s"),
        )
        return batch

    async def _submit(self, partition: int, chain: list[_OpenBatch]) -> None:
        """Submit a partition's batches in order until none is left; a refused one fails with the rest."""
        try:
            while chain:
                batch = chain.pop(0)
                # Closed before the producer sees it: a batch is never appended to once submitted.
                batch.builder.close()
                try:
                    delivery = await self.producer.send_batch(batch.builder, self.topic, partition=partition)
                except BaseException as exc:
                    # Later batches of this partition must not overtake a batch that was not sent.
                    for unsent in (batch, *chain):
                        unsent.builder.close()
                        unsent.fail(exc)
                    chain.clear()
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    return
                delivery.add_done_callback(functools.partial(_settle, batch))
        finally:
            del self._chains[partition]
            del self._submitters[partition]

    async def close(self) -> None:
        """Wait until every open batch was submitted to the producer."""
        while self._submitters:
            with contextlib.suppress(Exception):
                await asyncio.shield(next(iter(self._submitters.values())))


def _settle(batch: _OpenBatch, delivery: asyncio.Future[Any]) -> None:
    if delivery.cancelled():
        batch.fail(KafkaError("the batch's delivery was cancelled"))
    elif (exc := delivery.exception()) is not None:
        batch.fail(exc)
    else:
        batch.acknowledge()
