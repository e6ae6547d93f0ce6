"""The Kafka runner: producer, topic set-up, and consumers with manual commits.

A consumer handles each message in one database transaction that also records the
envelope id, commits its offset only after that transaction committed, retries a
failing handler a bounded number of times and then sends the message to the
topic's dead-letter topic and carries on. Infrastructure failures (the database or
Kafka unreachable) are retried without limit instead: they say nothing about the
message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAlreadyExistsError,
    UnknownProducerId,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_common.db import record_processed, record_processed_many, transaction
from cdp_common.envelope import Envelope, Payload
from cdp_common.events import (
    DeadLetter,
    InvalidEvent,
    UnknownEventType,
    envelope_of_document,
    make_envelope,
    read_envelope_document,
)
from cdp_common.metrics import (
    CONSUMER_LAG,
    CONSUMER_LAST_POLL_AGE,
    DLQ_MESSAGES,
    HANDLER_DURATION,
    HANDLER_RETRIES,
    KAFKA_PRODUCER_REPLACED,
    MESSAGE_AGE,
    MESSAGES_CONSUMED,
)
from cdp_common.outbox import OutboxMessage
from cdp_common.settings import PlatformSettings
from cdp_common.topics import Topic, TopicName

logger = logging.getLogger(__name__)

# How many handled event ids a runner keeps in memory to know a redelivery without checking it again.
RECENT_EVENT_IDS = 100_000
# Long loops over a poll's events hand the event loop to the service's other tasks (its
# outbox relay above all, publishing what the last transaction committed) this often.
YIELD_EVERY = 64


async def let_others_run(done: int) -> None:
    """Hand the event loop to other tasks once every YIELD_EVERY items of a long loop (`done` counts from 0)."""
    if done % YIELD_EVERY == YIELD_EVERY - 1:
        await asyncio.sleep(0)


class Handler(Protocol):
    """An event handler: applies one event inside the caller's transaction."""

    async def __call__(self, *, session: AsyncSession, envelope: Envelope[Any]) -> None: ...


class BatchHandler(Protocol):
    """Applies consecutive events of one type inside the caller's transaction, as if one at a time.

    Its effect must equal calling the type's one-event handler on each envelope in order; the
    runner falls back to that handler when a batch fails, so a poison message is found alone.
    """

    async def __call__(self, *, session: AsyncSession, envelopes: Sequence[Envelope[Any]]) -> None: ...


_INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    ConnectionError,
    OSError,
    KafkaError,
)


def create_producer(settings: PlatformSettings, *, client_id: str) -> AIOKafkaProducer:
    """Create the idempotent producer (acks=all) a service publishes with."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=f"{settings.env}.{client_id}",
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        request_timeout_ms=15_000,
    )


# Errors after which a producer's idempotent sequence cannot go on: the broker no longer agrees
# with the producer on its id, epoch or next sequence number, so every later send of that
# producer fails the same way. Only a new producer (a new id, sequences from 0) gets through.
BROKEN_PRODUCER_ERRORS: tuple[type[KafkaError], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)
# How long a replaced producer may take to finish what it still holds before it is left behind.
RETIRE_TIMEOUT_S = 30.0


class KafkaPublisher:
    """Publishes messages with the service's producer and waits for every acknowledgement.

    Given a way to make producers, it replaces a producer that failed with one of
    BROKEN_PRODUCER_ERRORS; the failed call still raises, and the caller's next attempt goes
    out with the new producer. A message the broken producer delivered before the failure is
    delivered again then: at least once, and consumers skip it by its envelope id.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        make_producer: Callable[[], AIOKafkaProducer] | None = None,
        service: str = "",
    ) -> None:
        self._producer = producer
        self._make_producer = make_producer
        self._service = service
        self._replacing = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        if make_producer is not None:
            # Exported at 0 from the start, so the first replacement counts as an increase.
            for error in BROKEN_PRODUCER_ERRORS:
                KAFKA_PRODUCER_REPLACED.labels(service, error.__name__)

    @property
    def producer(self) -> AIOKafkaProducer:
        """The producer messages go out with now."""
        return self._producer

    async def publish(self, *, topic: str, key: str, value: bytes) -> None:
        """Publish one message and wait until Kafka acknowledged it."""
        producer = self._producer
        try:
            await producer.send_and_wait(topic, value=value, key=key.encode())
        except BROKEN_PRODUCER_ERRORS as exc:
            await self._replace(producer, exc)
            raise

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> None:
        """Publish messages in order and wait until Kafka acknowledged all of them."""
        producer = self._producer
        try:
            futures = [await producer.send(m.topic, value=m.payload, key=m.key.encode()) for m in messages]
            # Every outcome is collected, so no failed delivery is left unread; the first failure is raised.
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failure is not None:
                raise failure
        except BROKEN_PRODUCER_ERRORS as exc:
            await self._replace(producer, exc)
            raise

    async def stop(self) -> None:
        """Flush and stop the producer, and wait for replaced ones to finish stopping."""
        await self._producer.stop()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _replace(self, broken: AIOKafkaProducer, error: BaseException) -> None:
        """Start a new producer in place of a broken one, once, whoever else saw it fail."""
        if self._make_producer is None:
            return
        async with self._replacing:
            if self._producer is not broken:
                return
            fresh = self._make_producer()
            try:
                await fresh.start()
            except (KafkaError, OSError):
                # Kafka cannot be reached now: the next failure of the broken producer tries again.
                await fresh.stop()
                logger.warning(
                    "a new producer could not start; keeping the broken one for now",
                    extra={"service": self._service, "error": type(error).__name__},
                )
                return
            self._producer = fresh
        reason = type(error).__name__
        KAFKA_PRODUCER_REPLACED.labels(self._service, reason).inc()
        logger.warning("producer replaced", extra={"service": self._service, "error": reason})
        retiring = asyncio.create_task(self._retire(broken), name=f"producer-retire-{self._service}")
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)

    async def _retire(self, producer: AIOKafkaProducer) -> None:
        """Stop a replaced producer, letting it finish the batches it holds for other partitions."""
        try:
            async with asyncio.timeout(RETIRE_TIMEOUT_S):
                await producer.stop()
        except Exception:
            logger.warning("a replaced producer did not stop cleanly", extra={"service": self._service})


def topic_configs(settings: PlatformSettings, name: Topic) -> dict[str, str]:
    """Return the Kafka configuration of a platform topic."""
    configs = {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
    if name.compacted:
        configs["cleanup.policy"] = "compact"
    elif name is TopicName.EVENTS:
        configs["retention.ms"] = str(settings.events_retention_ms)
    elif name.carries_personal_data:
        configs["retention.ms"] = str(settings.personal_retention_ms)
    return configs


async def ensure_topics(settings: PlatformSettings, names: Sequence[Topic]) -> None:
    """Create the topics and their dead-letter topics that do not exist yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted: list[NewTopic] = []
        for name in names:
            for topic in (settings.topic(name), settings.dlq_topic(name)):
                if topic not in existing:
                    wanted.append(
                        NewTopic(
                            name=topic,
                            num_partitions=settings.topic_partitions,
                            replication_factor=settings.topic_replication_factor,
                            topic_configs=topic_configs(settings, name),
                        )
                    )
        for topic in wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
    finally:
        await admin.close()


def _observe_age(group_id: str, envelope: Envelope[Any]) -> None:
    """Record how long after its envelope time a message was processed."""
    age = (datetime.now(UTC) - envelope.time).total_seconds()
    MESSAGE_AGE.labels(group_id, envelope.type).observe(max(age, 0.0))


class ConsumerRunner:
    """Consumes platform topics in one group and dispatches typed envelopes to handlers."""

    def __init__(
        self,
        *,
        settings: PlatformSettings,
        group_id: str,
        topics: Sequence[Topic],
        handlers: Mapping[type[Payload], Handler],
        session_factory: async_sessionmaker[AsyncSession],
        publisher: KafkaPublisher,
        source: str,
        auto_offset_reset: str = "earliest",
        batch_handlers: Mapping[type[Payload], BatchHandler] | None = None,
    ) -> None:
        self._settings = settings
        self.group_id = group_id
        self._topics = [settings.topic(t) for t in topics]
        self._topic_of = {settings.topic(t): t for t in topics}
        # By the `type` an envelope names, so a message is routed (or skipped) before it is checked.
        self._handlers = {payload.EVENT_TYPE: handler for payload, handler in handlers.items()}
        self._batch_handlers = dict(batch_handlers or {})
        self._session_factory = session_factory
        self._publisher = publisher
        self._source = source
        self._auto_offset_reset = auto_offset_reset
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._handled = _RecentIds(RECENT_EVENT_IDS)
        self._lag_task: asyncio.Task[None] | None = None
        self._progressed_at = time.monotonic()

    async def start(self) -> None:
        """Join the group and start consuming in the background."""
        self._consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=self.group_id,
            client_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self._auto_offset_reset,
            isolation_level="read_committed",
            max_poll_interval_ms=600_000,
        )
        await self._consumer.start()
        self._progressed_at = time.monotonic()
        CONSUMER_LAST_POLL_AGE.labels(self.group_id).set_function(self.since_last_poll)
        self._task = asyncio.create_task(self._consume(), name=f"consumer-{self.group_id}")
        self._lag_task = asyncio.create_task(self._watch_lag(self._consumer), name=f"lag-{self.group_id}")

    async def stop(self) -> None:
        """Finish the message at hand, commit, and leave the group."""
        self._stopping.set()
        if self._lag_task is not None:
            self._lag_task.cancel()
            await asyncio.gather(self._lag_task, return_exceptions=True)
        with contextlib.suppress(KeyError):
            CONSUMER_LAST_POLL_AGE.remove(self.group_id)
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    @property
    def assigned(self) -> bool:
        """Whether the group gave this consumer partitions to read."""
        return self._consumer is not None and bool(self._consumer.assignment())

    @property
    def running(self) -> bool:
        """Whether the consume loop is alive."""
        return self._task is not None and not self._task.done()

    def since_last_poll(self) -> float:
        """Seconds since the consume loop last completed a poll or finished a message.

        An idle consumer completes an empty poll every consumer_poll_timeout_s, and a long batch
        counts each message it finishes, so only a consumer that truly stands still ages.
        """
        return time.monotonic() - self._progressed_at

    def _progressed(self) -> None:
        self._progressed_at = time.monotonic()

    async def _consume(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        timeout_ms = int(self._settings.consumer_poll_timeout_s * 1000)
        gather_ms = int(self._settings.consumer_gather_s * 1000)
        commit_every = self._settings.consumer_commit_interval_s
        # Offsets are committed while the next poll is fetched and handled, at most once every
        # commit_every seconds (each commit is a request the broker writes down); each commit
        # is awaited before the next one starts and before the loop ends.
        committing: asyncio.Task[None] | None = None
        handled: dict[TopicPartition, int] = {}
        last_commit = time.monotonic()
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(
                    timeout_ms=timeout_ms, max_records=self._settings.consumer_batch_size
                )
                self._progressed()
                room = self._settings.consumer_batch_size - sum(len(records) for records in batches.values())
                if batches and room > 0 and gather_ms > 0:
                    # Each partition's later records come after the ones already taken, in order.
                    for tp, records in (
                        await consumer.getmany(timeout_ms=gather_ms, max_records=room)
                    ).items():
                        batches.setdefault(tp, []).extend(records)
                if batches:
                    # One transaction for the whole poll: each partition's records stay in order,
                    # and the fixed cost of a transaction is paid once, not once per partition.
                    await self.process_batch([r for records in batches.values() for r in records])
                    handled.update({tp: records[-1].offset + 1 for tp, records in batches.items()})
                if handled and time.monotonic() - last_commit >= commit_every:
                    if committing is not None:
                        await committing
                    committing = asyncio.create_task(self._commit(consumer, handled))
                    handled, last_commit = {}, time.monotonic()
        finally:
            if committing is not None:
                await asyncio.shield(committing)
            if handled:
                await asyncio.shield(self._commit(consumer, handled))

    async def process_batch(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Handle records (each partition's in order) in one transaction when all succeed.

        When a handler fails, the batch is rolled back and its records are handled one
        at a time, so only the poison message goes to the DLQ.
        """
        decoded: list[tuple[ConsumerRecord[bytes, bytes], Envelope[Any], Handler]] = []
        for done, record in enumerate(records):
            await let_others_run(done)
            routed = await self._route(record)
            if routed is not None:
                decoded.append((record, *routed))
        if not decoded:
            return
        if len(decoded) == 1:
            record, envelope, handler = decoded[0]
            outcome = await self._handle_with_retries(record, envelope, handler)
            MESSAGES_CONSUMED.labels(self.group_id, envelope.type, outcome).inc()
            return
        infrastructure_failures = 0
        while True:
            started = time.perf_counter()
            try:
                outcomes = await self._apply_together(decoded)
                break
            except _INFRASTRUCTURE_ERRORS as exc:
                infrastructure_failures += 1
                await self._wait_for_infrastructure(exc, infrastructure_failures, decoded[0][1].id)
            except Exception:
                for record, envelope, handler in decoded:
                    outcome = await self._handle_with_retries(record, envelope, handler)
                    MESSAGES_CONSUMED.labels(self.group_id, envelope.type, outcome).inc()
                return
        self._handled.add_all(envelope.id for _, envelope, _ in decoded)
        self._progressed()
        self._observe_batch(decoded, outcomes, elapsed=(time.perf_counter() - started) / len(decoded))

    def _observe_batch(
        self,
        decoded: Sequence[tuple[ConsumerRecord[bytes, bytes], Envelope[Any], Handler]],
        outcomes: Sequence[str],
        *,
        elapsed: float,
    ) -> None:
        """Record a batch's metrics: each label set looked up once, the clock read once."""
        now = datetime.now(UTC)
        ages: dict[str, list[float]] = {}
        tally: Counter[tuple[str, str]] = Counter()
        for (_, envelope, _), outcome in zip(decoded, outcomes, strict=True):
            tally[(envelope.type, outcome)] += 1
            if outcome == "processed":
                ages.setdefault(envelope.type, []).append((now - envelope.time).total_seconds())
        for kind, seen in ages.items():
            duration = HANDLER_DURATION.labels(self.group_id, kind)
            age = MESSAGE_AGE.labels(self.group_id, kind)
            for value in seen:
                duration.observe(elapsed)
                age.observe(max(value, 0.0))
        for (kind, outcome), count in tally.items():
            MESSAGES_CONSUMED.labels(self.group_id, kind, outcome).inc(count)

    async def _apply_together(
        self, decoded: Sequence[tuple[ConsumerRecord[bytes, bytes], Envelope[Any], Handler]]
    ) -> list[str]:
        outcomes: list[str] = []
        async with transaction(self._session_factory) as session:
            fresh = await record_processed_many(
                session=session, consumer=self.group_id, event_ids=[envelope.id for _, envelope, _ in decoded]
            )
            run: list[Envelope[Any]] = []
            for _, envelope, handler in decoded:
                if envelope.id not in fresh:
                    outcomes.append("duplicate")
                    continue
                fresh.discard(envelope.id)
                outcomes.append("processed")
                if run and type(run[0].data) is not type(envelope.data):
                    await self._apply_run(session, run)
                    run = []
                if type(envelope.data) in self._batch_handlers:
                    run.append(envelope)
                else:
                    await handler(session=session, envelope=envelope)
            if run:
                await self._apply_run(session, run)
        return outcomes

    async def _apply_run(self, session: AsyncSession, run: Sequence[Envelope[Any]]) -> None:
        """Hand consecutive events of one type to that type's batch handler."""
        await self._batch_handlers[type(run[0].data)](session=session, envelopes=run)

    async def _route(self, record: ConsumerRecord[bytes, bytes]) -> tuple[Envelope[Any], Handler] | None:
        try:
            document = read_envelope_document(record.value)
            fields = document if isinstance(document, dict) else {}
            event_id, kind = fields.get("id"), fields.get("type")
            if isinstance(event_id, str) and event_id in self._handled:
                # Handled by this runner and committed: a redelivery, known without checking it again.
                MESSAGES_CONSUMED.labels(self.group_id, str(kind)[:200], "duplicate").inc()
                return None
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if isinstance(kind, str) and handler is None:
                # Not this consumer's business: skipped without checking a payload it never reads.
                MESSAGES_CONSUMED.labels(self.group_id, kind[:200], "skipped").inc()
                return None
            # Refuses a message without a string type, so from here on a handler was found.
            envelope = envelope_of_document(document)
        except UnknownEventType as exc:
            MESSAGES_CONSUMED.labels(self.group_id, str(exc), "skipped").inc()
            return None
        except InvalidEvent as exc:
            await self._dead_letter(record, error=str(exc), attempts=0)
            MESSAGES_CONSUMED.labels(self.group_id, "invalid", "dead_lettered").inc()
            return None
        assert handler is not None
        return envelope, handler

    async def _wait_for_infrastructure(self, exc: BaseException, failures: int, event_id: str) -> None:
        logger.warning(
            "infrastructure unavailable; retrying",
            extra={"group": self.group_id, "event_id": event_id, "error": type(exc).__name__},
        )
        if self._stopping.is_set():
            raise exc
        await asyncio.sleep(min(self._settings.consumer_retry_backoff_s * 2**failures, 10.0))

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        # A partition the group has given to another member since is left to it; its next
        # owner sees the records again and skips them through the processed-event record.
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError):
            # A rebalance took the partition away (during a long batch it may already be
            # unassigned here); its next owner sees the record
            # again and skips it through the processed-event record.
            logger.warning("offset commit failed after a rebalance", extra={"group": self.group_id})

    async def _watch_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Export the lag of the assigned partitions as the broker sees it, every consumer_lag_interval_s.

        It runs beside the consume loop, so a consumer stuck in a handler still shows its lag grow.
        """
        reported: set[TopicPartition] = set()
        while True:
            try:
                reported = await self._report_lag(consumer, reported)
            except Exception as exc:
                # Only the figure waits for the next turn (a rebalance, the broker briefly away).
                logger.warning(
                    "consumer lag not read; retrying",
                    extra={"group": self.group_id, "error": type(exc).__name__},
                )
            await asyncio.sleep(self._settings.consumer_lag_interval_s)

    async def _report_lag(
        self, consumer: AIOKafkaConsumer, reported: set[TopicPartition]
    ) -> set[TopicPartition]:
        """Set each assigned partition's lag (log end minus the group's committed offset); drop the others."""
        assigned: set[TopicPartition] = set(consumer.assignment())
        for tp in reported - assigned:
            # Given to another member, which reports it from now on.
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(self.group_id, tp.topic, str(tp.partition))
        if not assigned:
            return set()
        ends: dict[TopicPartition, int] = await consumer.end_offsets(list(assigned))
        committed: dict[TopicPartition, int | None] = {tp: await consumer.committed(tp) for tp in assigned}
        never = [tp for tp, offset in committed.items() if offset is None]
        if never:
            # Nothing committed yet: the group starts where auto_offset_reset puts it.
            starts: dict[TopicPartition, int] = (
                await consumer.beginning_offsets(never) if self._auto_offset_reset == "earliest" else ends
            )
            committed.update({tp: starts.get(tp) for tp in never})
        for tp in assigned:
            end, done = ends.get(tp), committed.get(tp)
            if end is not None and done is not None:
                CONSUMER_LAG.labels(self.group_id, tp.topic, str(tp.partition)).set(max(end - done, 0))
        return assigned

    async def process(self, record: ConsumerRecord[bytes, bytes]) -> str:
        """Handle one record to the end (processed, duplicate, skipped or dead-lettered)."""
        routed = await self._route(record)
        if routed is None:
            return "skipped_or_dead_lettered"
        envelope, handler = routed
        outcome = await self._handle_with_retries(record, envelope, handler)
        MESSAGES_CONSUMED.labels(self.group_id, envelope.type, outcome).inc()
        return outcome

    async def _handle_with_retries(
        self, record: ConsumerRecord[bytes, bytes], envelope: Envelope[Any], handler: Handler
    ) -> str:
        attempts = 0
        infrastructure_failures = 0
        while True:
            started = time.perf_counter()
            try:
                async with transaction(self._session_factory) as session:
                    fresh = await record_processed(
                        session=session, consumer=self.group_id, event_id=envelope.id
                    )
                    if fresh:
                        await handler(session=session, envelope=envelope)
                self._handled.add_all((envelope.id,))
                self._progressed()
                if not fresh:
                    return "duplicate"
                HANDLER_DURATION.labels(self.group_id, envelope.type).observe(time.perf_counter() - started)
                _observe_age(self.group_id, envelope)
                return "processed"
            except _INFRASTRUCTURE_ERRORS as exc:
                infrastructure_failures += 1
                await self._wait_for_infrastructure(exc, infrastructure_failures, envelope.id)
            except Exception as exc:
                attempts += 1
                if attempts > self._settings.consumer_max_retries:
                    logger.exception(
                        "handler failed; sending to the DLQ",
                        extra={"group": self.group_id, "event_id": envelope.id},
                    )
                    await self._dead_letter(record, error=f"{type(exc).__name__}: {exc}", attempts=attempts)
                    self._progressed()
                    return "dead_lettered"
                HANDLER_RETRIES.labels(self.group_id).inc()
                await asyncio.sleep(self._settings.consumer_retry_backoff_s * 2 ** (attempts - 1))

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], *, error: str, attempts: int) -> None:
        name = self._topic_of.get(record.topic)
        dlq = self._settings.dlq_topic(name) if name is not None else f"{record.topic}.dlq"
        raw = record.value or b""
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            value = "base64:" + base64.b64encode(raw).decode()
        key = record.key.decode(errors="replace") if record.key is not None else None
        envelope = make_envelope(
            payload=DeadLetter(
                group_id=self.group_id,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=key,
                value=value,
                error=error[:4000],
                attempts=attempts,
            ),
            source=self._source,
            subject=key or f"{record.topic}:{record.partition}:{record.offset}",
        )
        while True:
            try:
                await self._publisher.publish(topic=dlq, key=envelope.subject, value=envelope.to_bytes())
                break
            except KafkaError:
                if self._stopping.is_set():
                    raise
                logger.warning("dead-letter topic unavailable; retrying", extra={"group": self.group_id})
                await asyncio.sleep(1.0)
        DLQ_MESSAGES.labels(self.group_id, dlq).inc()


class _RecentIds:
    """The ids of events this runner handled and committed, the most recent `size` to twice `size` of them.

    A redelivered event among them is counted as a duplicate before its payload is checked
    again; the processed-event record in the database still decides for every other one.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._current: set[str] = set()
        self._previous: set[str] = set()

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._current or event_id in self._previous

    def add_all(self, event_ids: Iterable[str]) -> None:
        """Remember ids whose transaction committed; the older generation goes when the newer fills up."""
        self._current.update(event_ids)
        if len(self._current) >= self._size:
            self._previous, self._current = self._current, set()
