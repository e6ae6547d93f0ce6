"""Merges the accepted events of concurrent requests into Kafka record batches, one chain per partition.

Handing the producer one message at a time costs a future, a partitioner call and
the accumulator's bookkeeping per event; here an event costs one append to an open
record batch of its partition, and a request waits on the few batches its events went
into. One task per partition submits that partition's batches in order, closing each
as it submits it, so events that arrive while a submission waits for the broker ride
in the partition's next, larger batch. (A submitted batch is never appended to: the
producer numbers a batch's records when it takes it, and builds it later.) A batch's
future is the producer's: it resolves when Kafka acknowledged the batch (idempotent
producer, acks=all) and fails when it could not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

logger = logging.getLogger(__name__)

# The partitioner `AIOKafkaProducer.send` uses, so a key lands on the same partition either way.
PARTITIONER = DefaultPartitioner()
MAX_CACHED_KEYS = 100_000


class _OpenBatch:
    """A record batch being filled, with the future its senders wait on."""

    __slots__ = ("builder", "future")

    def __init__(self, builder: BatchBuilder, future: asyncio.Future[None]) -> None:
        self.builder = builder
        self.future = future


class EventBatcher:
    """Appends keyed messages to open record batches of one topic and submits them to the producer."""

    def __init__(self, *, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._partitions: list[int] = []
        self._partition_of: dict[bytes, int] = {}
        # Per partition: the batches not yet submitted (the last one open) and the task submitting them.
        self._chains: dict[int, list[_OpenBatch]] = {}
        self._submitters: dict[int, asyncio.Task[None]] = {}

    async def add(self, messages: list[tuple[bytes, bytes]]) -> set[asyncio.Future[None]]:
        """Append (key, value) messages; return the futures of the batches they went into."""
        if not self._partitions:
            self._partitions = sorted(await self.producer.partitions_for(self.topic))
        futures: set[asyncio.Future[None]] = set()
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
                chain.append(self._open_batch())
                if chain[-1].builder.append(timestamp=None, key=key, value=value) is None:
                    raise MessageSizeTooLargeError(f"a message of {len(value)} bytes exceeds a record batch")
            futures.add(chain[-1].future)
        return futures

    def _open_batch(self) -> _OpenBatch:
        return _OpenBatch(self.producer.create_batch(), asyncio.get_running_loop().create_future())

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
                        _fail(unsent.future, exc)
                    chain.clear()
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    return
                delivery.add_done_callback(lambda done, future=batch.future: _settle(future, done))
        finally:
            del self._chains[partition]
            del self._submitters[partition]

    async def close(self) -> None:
        """Wait until every open batch was submitted to the producer."""
        while self._submitters:
            with contextlib.suppress(Exception):
                await asyncio.shield(next(iter(self._submitters.values())))


def _fail(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(
            exc if isinstance(exc, KafkaError) else KafkaError(f"the batch was not sent: {exc!r}")
        )


def _settle(future: asyncio.Future[None], delivery: asyncio.Future[Any]) -> None:
    if future.done():
        return
    if delivery.cancelled():
        future.set_exception(KafkaError("the batch's delivery was cancelled"))
    elif (exc := delivery.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(None)
