"""Merges the accepted events of concurrent requests into Kafka record batches, one chain per partition.

Handing the producer one message at a time costs a future, a partitioner call and
the accumulator's bookkeeping per event; here an event costs one append to an open
record batch of its partition, and a request waits on the few batches its events went
into. One flusher task submits the open batches (in order, per partition) whenever
there are any, so events that arrive while a submission waits for the broker simply
ride in the next, larger batches. A batch's future is the producer's: it resolves when
Kafka acknowledged the batch (idempotent producer, acks=all) and fails when it could not.
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
        self._chains: dict[int, list[_OpenBatch]] = {}
        self._flusher: asyncio.Task[None] | None = None

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
                chain = self._chains[partition] = [self._open_batch()]
            if chain[-1].builder.append(timestamp=None, key=key, value=value) is None:
                chain.append(self._open_batch())
                if chain[-1].builder.append(timestamp=None, key=key, value=value) is None:
                    raise MessageSizeTooLargeError(f"a message of {len(value)} bytes exceeds a record batch")
            futures.add(chain[-1].future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return futures

    def _open_batch(self) -> _OpenBatch:
        return _OpenBatch(self.producer.create_batch(), asyncio.get_running_loop().create_future())

    async def _flush(self) -> None:
        """Submit open batches until none are left; a failed submission fails its batch's future."""
        while self._chains:
            chains, self._chains = self._chains, {}
            await asyncio.gather(*(self._submit(partition, chain) for partition, chain in chains.items()))

    async def _submit(self, partition: int, chain: list[_OpenBatch]) -> None:
        for index, batch in enumerate(chain):
            batch.builder.close()
            try:
                delivery = await self.producer.send_batch(batch.builder, self.topic, partition=partition)
            except BaseException as exc:
                # Later batches of this partition must not overtake a batch that was not sent.
                for unsent in chain[index:]:
                    _fail(unsent.future, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            delivery.add_done_callback(lambda done, future=batch.future: _settle(future, done))

    async def close(self) -> None:
        """Wait for the flusher to hand every open batch to the producer."""
        while self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flusher)


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
