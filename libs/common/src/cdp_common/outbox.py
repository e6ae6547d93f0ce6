"""The transactional outbox: rows written with the change, published by one relay.

Writers take a transaction-scoped advisory lock before inserting, so row ids are
handed out in commit order and the relay, reading in id order, publishes in
commit order. One relay per service is active at a time: it holds a session-level
advisory lock on the connection it does all its work on, so if that connection
dies the lock goes with it and the relay stops publishing. A row is marked
published only after Kafka acknowledged it, so it is published at least once; a
batch Kafka refuses is sent again, whole, while the relay keeps the lead.

The relay works on its connection without explicit transactions (each statement
commits alone), remembers the last id it sent so a read starts past the rows
already sent, and marks a sent batch in the same statement that reads the next:
an idle relay woken by a commit sends its rows after one statement, and a busy one
reads them as soon as the batch it is sending is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from cdp_common.db import outbox_table
from cdp_common.envelope import Envelope
from cdp_common.metrics import OUTBOX_BACKLOG, OUTBOX_LEADER, OUTBOX_OLDEST_AGE, OUTBOX_PUBLISHED

logger = logging.getLogger(__name__)

# The write lock and the relay's wake-up as a select list. A writer may take them inside a
# statement of its own (then calling note_outbox_write_lock) to save a round trip, as long as
# every outbox row that statement inserts is computed from them, so no id is drawn before.
OUTBOX_WRITE_LOCK = (
    "pg_advisory_xact_lock(hashtextextended('cdp-outbox-write:' || current_schema(), 0)),"
    " pg_notify('cdp_outbox_' || current_schema(), '')"
)
_WRITE_LOCK_AND_NOTIFY = sa.text(f"SELECT {OUTBOX_WRITE_LOCK}")
# One statement prepared once whatever the number of rows; ids follow the order given.
_INSERT_ROWS = sa.text(
    "INSERT INTO outbox (topic, key, event_id, payload)"
    " SELECT u.t, u.k, u.e, u.p FROM unnest(CAST(:topics AS text[]), CAST(:keys AS text[]),"
    " CAST(:event_ids AS text[]), CAST(:payloads AS bytea[])) WITH ORDINALITY AS u(t, k, e, p, n)"
    " ORDER BY u.n"
)
_RELAY_LOCK = sa.text(
    "SELECT pg_try_advisory_lock(hashtextextended('cdp-outbox-relay:' || current_schema(), 0))"
)
# Marks the rows of the batch sent before (acknowledged by then) and reads the next one.
# The read's snapshot predates the update, so rows just marked still look unpublished to
# it; starting past the last id sent keeps them out, and keeps the read off the rows the
# relay has already dealt with. Writers hand out ids in commit order under the write
# lock, so a row committed later always has a larger id than every row visible now.
_MARK_AND_READ = """
    WITH marked AS (UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[]))
    SELECT id, topic, key, payload FROM outbox
     WHERE published_at IS NULL AND id > $2
     ORDER BY id LIMIT $3
"""
# The age of the oldest unpublished row: ids follow commit order, so it is the first row of the
# partial index on unpublished ids.
_OLDEST_UNPUBLISHED_AGE = sa.text(
    "SELECT EXTRACT(EPOCH FROM now() - created_at) FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1"
)
# Longest wait between two attempts to publish a batch Kafka refused.
_PUBLISH_RETRY_MAX_S = 10.0
# How often the leader reports its backlog (a count over the unpublished rows) and deletes
# rows published longer ago than the retention, on a connection of the pool beside the
# relay's, so neither ever holds up a commit's rows.
_BACKLOG_REPORT_S = 5.0
_CLEANUP_S = 60.0


@dataclass(frozen=True)
class OutboxMessage:
    """One row of the outbox, ready to publish."""

    id: int
    topic: str
    key: str
    payload: bytes


class Publisher(Protocol):
    """Publishes messages to Kafka in order and returns once all are acknowledged."""

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> None: ...


def _messages(rows: Sequence[Any]) -> list[OutboxMessage]:
    return [OutboxMessage(id=r["id"], topic=r["topic"], key=r["key"], payload=r["payload"]) for r in rows]


def notify_channel(schema: str) -> str:
    """Return the LISTEN/NOTIFY channel that wakes a service's relay."""
    return f"cdp_outbox_{schema}"


async def lock_outbox_writes(*, session: AsyncSession) -> None:
    """Take the outbox's write lock (and queue the relay's wake-up) once per transaction.

    The lock is transaction-scoped, so holding it from the first outbox write to the commit
    is what hands out row ids in commit order; taking it again would only cost a round trip.
    """
    current = session.sync_session.get_transaction()
    if current is not None and session.info.get("cdp_outbox_locked_in") is current:
        return
    await session.execute(_WRITE_LOCK_AND_NOTIFY)
    note_outbox_write_lock(session=session)


def note_outbox_write_lock(*, session: AsyncSession) -> None:
    """Note that the transaction holds the write lock (taken with OUTBOX_WRITE_LOCK in a statement)."""
    session.info["cdp_outbox_locked_in"] = session.sync_session.get_transaction()


async def add_to_outbox(*, session: AsyncSession, topic: str, envelope: Envelope[Any]) -> None:
    """Write an envelope to the outbox in the caller's transaction."""
    await add_many_to_outbox(session=session, messages=[(topic, envelope)])


async def add_many_to_outbox(*, session: AsyncSession, messages: Sequence[tuple[str, Envelope[Any]]]) -> None:
    """Write (topic, envelope) pairs to the outbox in the caller's transaction, in this order."""
    if not messages:
        return
    await lock_outbox_writes(session=session)
    await session.execute(
        _INSERT_ROWS,
        {
            "topics": [topic for topic, _ in messages],
            "keys": [envelope.subject for _, envelope in messages],
            "event_ids": [envelope.id for _, envelope in messages],
            "payloads": [envelope.to_bytes() for _, envelope in messages],
        },
    )


async def oldest_unpublished_age(*, conn: AsyncConnection) -> float:
    """Return how many seconds the oldest unpublished row has waited (0 when every row went out)."""
    age = (await conn.execute(_OLDEST_UNPUBLISHED_AGE)).scalar_one_or_none()
    return max(float(age), 0.0) if age is not None else 0.0


async def purge_published(*, session: AsyncSession, keys: list[str]) -> int:
    """Delete published outbox rows under these keys, so an erased person's payloads go at once."""
    result = await session.execute(
        outbox_table.delete().where(outbox_table.c.key.in_(keys), outbox_table.c.published_at.is_not(None))
    )
    return int(getattr(result, "rowcount", 0) or 0)


class OutboxRelay:
    """Publishes a service's outbox rows in commit order while it holds the relay lock."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        publisher: Publisher,
        service: str,
        batch_size: int = 500,
        idle_wait_s: float = 1.0,
        retention_s: float = 3600.0,
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._service = service
        self._batch_size = batch_size
        self._idle_wait_s = idle_wait_s
        self._retention_s = retention_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False

    def start(self) -> None:
        """Run the relay in the background."""
        self._task = asyncio.create_task(self.run(), name=f"outbox-relay-{self._service}")

    async def stop(self) -> None:
        """Stop the relay and release its lock."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run(self) -> None:
        """Take the lead when the lock is free and publish until cancelled."""
        while True:
            try:
                async with self._engine.connect() as conn:
                    await self._lead(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("outbox relay failed; retrying", extra={"service": self._service})
            finally:
                self._set_leader(False)
            await asyncio.sleep(self._idle_wait_s)

    def _set_leader(self, leader: bool) -> None:
        self.is_leader = leader
        OUTBOX_LEADER.labels(self._service).set(1 if leader else 0)
        if not leader:
            # Only the leader's figures are current; a former leader's would stay behind forever.
            for gauge in (OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE):
                with contextlib.suppress(KeyError):
                    gauge.remove(self._service)

    async def _lead(self, conn: AsyncConnection) -> None:
        while not await self._try_lock(conn):
            await asyncio.sleep(self._idle_wait_s)
        self._set_leader(True)
        logger.info("outbox relay is leader", extra={"service": self._service})
        housekeeping = asyncio.create_task(self._keep_house(), name=f"outbox-housekeeping-{self._service}")
        try:
            driver = await self._listen(conn)
            sent_up_to = 0
            sent: list[OutboxMessage] = []
            while True:
                # Cleared before reading, so a commit notified during the read or after it
                # wakes the wait below at once instead of after the idle wait.
                self._wake.clear()
                rows = await driver.fetch(_MARK_AND_READ, [m.id for m in sent], sent_up_to, self._batch_size)
                self._count_published(sent)
                sent = _messages(rows)
                if sent:
                    await self._publish(driver, sent)
                    sent_up_to = sent[-1].id
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._idle_wait_s)
                except TimeoutError:
                    # Nothing woke the relay for a while: read from the oldest unpublished
                    # row again, so a row written without the write lock is not left behind.
                    sent_up_to = 0
        finally:
            housekeeping.cancel()
            await asyncio.gather(housekeeping, return_exceptions=True)
            # Closing the connection for real releases the lock and the listener; a
            # pooled connection would keep both alive.
            await asyncio.shield(conn.invalidate())

    async def _publish(self, driver: Any, messages: Sequence[OutboxMessage]) -> None:
        """Publish a batch until Kafka acknowledged all of it, keeping the lead meanwhile.

        A failed attempt is repeated whole, so what went out before the failure goes out again
        (at least once). Between attempts a statement on the lock's connection makes sure the
        lead is still held; if the connection is gone, so is the lead, and the relay stops here.
        """
        failures = 0
        while True:
            try:
                await self._publisher.publish_batch(messages)
                return
            except Exception as exc:
                failures += 1
                logger.warning(
                    "outbox publishing failed; retrying",
                    exc_info=failures == 1,
                    extra={"service": self._service, "error": type(exc).__name__, "attempts": failures},
                )
            await asyncio.sleep(min(self._idle_wait_s * failures, _PUBLISH_RETRY_MAX_S))
            await driver.execute("SELECT 1")

    async def _try_lock(self, conn: AsyncConnection) -> bool:
        async with conn.begin():
            return bool((await conn.execute(_RELAY_LOCK)).scalar_one())

    async def _listen(self, conn: AsyncConnection) -> Any:
        """Listen for commits that wrote rows; return the driver's connection the relay reads on."""
        async with conn.begin():
            schema = (await conn.execute(sa.text("SELECT current_schema()"))).scalar_one()
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.add_listener(notify_channel(schema), lambda *_: self._wake.set())
        return driver

    def _count_published(self, messages: Sequence[OutboxMessage]) -> None:
        for message in messages:
            OUTBOX_PUBLISHED.labels(self._service, message.topic).inc()

    async def _keep_house(self) -> None:
        """Report the backlog and delete old published rows now and then, while leading."""
        last_cleanup = 0.0
        while True:
            try:
                async with self._engine.begin() as conn:
                    await self._report_backlog(conn)
                    if time.monotonic() - last_cleanup > _CLEANUP_S:
                        await self._delete_old(conn)
                        last_cleanup = time.monotonic()
            except Exception:
                # Only figures and old rows wait for the next turn; publishing goes on.
                logger.exception("outbox housekeeping failed; retrying", extra={"service": self._service})
            await asyncio.sleep(_BACKLOG_REPORT_S)

    async def _report_backlog(self, conn: AsyncConnection) -> None:
        row = (
            await conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.coalesce(
                        sa.func.extract("epoch", sa.func.now() - sa.func.min(outbox_table.c.created_at)),
                        0,
                    ),
                ).where(outbox_table.c.published_at.is_(None))
            )
        ).one()
        OUTBOX_BACKLOG.labels(self._service).set(row[0])
        OUTBOX_OLDEST_AGE.labels(self._service).set(float(row[1]))

    async def _delete_old(self, conn: AsyncConnection) -> None:
        await conn.execute(
            outbox_table.delete().where(
                outbox_table.c.published_at
                < sa.func.now() - sa.text(f"interval '{int(self._retention_s)} seconds'")
            )
        )
