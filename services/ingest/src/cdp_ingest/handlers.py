"""Commands of the ingest service: sources, tracking plans, tokens, and publishing accepted events."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from cdp_common.auth import hash_token, new_token
from cdp_common.events import TokenCreated, TokenRevoked, TrackingEventReceived, make_envelope
from cdp_common.outbox import add_to_outbox
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_ingest import store
from cdp_ingest.batching import EventBatcher
from cdp_ingest.domain.calls import event_ids, partition_key
from cdp_ingest.domain.plans import TrackingPlan, Violation, plan_from_document
from cdp_ingest.metrics import KAFKA_UNAVAILABLE, PLAN_VIOLATIONS, PRODUCE_DURATION, events_accepted

SERVICE = "ingest"


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge the events in time; nothing was accepted."""


def new_write_key() -> str:
    """Return a fresh random write key."""
    return "wk_" + uuid.uuid4().hex + uuid.uuid4().hex[:16]


async def create_source(*, session: AsyncSession, name: str, write_key: str | None = None) -> dict[str, Any]:
    """Create a source and return it with its write key (shown once)."""
    key = write_key or new_write_key()
    source = await store.insert_source(
        session=session, source_id="src_" + uuid.uuid4().hex[:16], name=name, write_key_hash=hash_token(key)
    )
    return {**source, "write_key": key}


async def create_token(
    *, session: AsyncSession, name: str, scopes: Sequence[str], expires_at: datetime | None, tokens_topic: str
) -> dict[str, Any]:
    """Issue a token, store its hash, and announce it to every service through the outbox."""
    token_id, secret = new_token()
    token = await store.insert_token(
        session=session,
        token_id=token_id,
        name=name,
        token_hash=hash_token(secret),
        scopes=sorted(set(scopes)),
        expires_at=expires_at,
    )
    announcement = TokenCreated(
        token_id=token_id,
        name=name,
        token_hash=hash_token(secret),
        scopes=token["scopes"],
        expires_at=expires_at,
    )
    await add_to_outbox(
        session=session,
        topic=tokens_topic,
        envelope=make_envelope(payload=announcement, source=SERVICE, subject=token_id),
    )
    return {**token, "token": secret}


async def revoke_token(*, session: AsyncSession, token_id: str, tokens_topic: str) -> dict[str, Any] | None:
    """Revoke a token everywhere; None when no such token was issued."""
    token, revoked_now = await store.revoke_token(session=session, token_id=token_id)
    if revoked_now:
        await add_to_outbox(
            session=session,
            topic=tokens_topic,
            envelope=make_envelope(payload=TokenRevoked(token_id=token_id), source=SERVICE, subject=token_id),
        )
    return token


async def rotate_write_key(*, session: AsyncSession, source_id: str) -> dict[str, Any] | None:
    """Give a source a new write key (the old one stops working) and return it with the key, shown once."""
    key = new_write_key()
    source = await store.update_source(
        session=session,
        source_id=source_id,
        values={"write_key_hash": hash_token(key), "rotated_at": datetime.now(UTC)},
    )
    return {**source, "write_key": key} if source is not None else None


async def set_source_enabled(
    *, session: AsyncSession, source_id: str, enabled: bool
) -> dict[str, Any] | None:
    """Enable or disable a source; a disabled source's write key gets 401."""
    return await store.update_source(
        session=session, source_id=source_id, values={"disabled_at": None if enabled else datetime.now(UTC)}
    )


@dataclass(frozen=True)
class SourceConfig:
    """What the tracking path needs to know about the source of a write key."""

    id: str
    rate_limit_per_s: float | None
    rate_limit_burst: int | None
    plan: TrackingPlan | None


class WriteKeys:
    """Resolves write keys to sources, with a short cache so tracking calls skip the database.

    Concurrent calls with a key that is not cached wait for one lookup instead of each
    querying the database. Another replica learns of a rotated or disabled key when its
    cache entry expires (`write_key_cache_s`); this process forgets its cache at once.
    """

    def __init__(self, *, session_factory: async_sessionmaker[AsyncSession], ttl_s: float) -> None:
        self._session_factory = session_factory
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, SourceConfig | None]] = {}
        self._lookups: dict[str, asyncio.Task[SourceConfig | None]] = {}
        self._generation = 0

    def forget(self) -> None:
        """Drop every cached resolution (after a source changed)."""
        self._cache.clear()
        self._lookups.clear()
        self._generation += 1

    async def source_of(self, write_key: str) -> SourceConfig | None:
        """Return the source of a write key, or None when it is unknown or disabled."""
        cached = self._cache.get(write_key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        lookup = self._lookups.get(write_key)
        if lookup is None:
            lookup = self._lookups[write_key] = asyncio.create_task(
                self._look_up(write_key, generation=self._generation)
            )
        # A caller that gives up (a cancelled request) must not cancel the others' lookup.
        return await asyncio.shield(lookup)

    async def _look_up(self, write_key: str, *, generation: int) -> SourceConfig | None:
        started = time.monotonic()
        try:
            async with self._session_factory() as session:
                row = await store.find_enabled_source(session=session, write_key_hash=hash_token(write_key))
        finally:
            if generation == self._generation:
                self._lookups.pop(write_key, None)
        config = None
        if row is not None:
            config = SourceConfig(
                id=row["id"],
                rate_limit_per_s=row["rate_limit_per_s"],
                rate_limit_burst=row["rate_limit_burst"],
                plan=plan_from_document(row["plan"]) if row["plan"] is not None else None,
            )
        if generation == self._generation:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[write_key] = (started + self._ttl_s, config)
        return config


def envelope_bytes(event: dict[str, Any], *, now: datetime) -> tuple[str, bytes]:
    """Return the Kafka key and the JSON envelope of an accepted event document."""
    key, value = EnvelopeWriter(source_id=event["sourceId"], now=now).message(event)
    return key.decode(), value


# A source's event-id function holds the hash of its prefix, copied for every id: shared safely.
_event_ids_of_source = functools.lru_cache(maxsize=4096)(event_ids)


class EnvelopeWriter:
    """Writes the Kafka messages of one request's events, all of one source and one time.

    What the envelopes share (type, source, time, and the event ids' hash of the source)
    is rendered once; each message is its id, subject and event document spliced into
    it, the JSON that serialising the whole envelope gives.
    """

    _head = b'{"specversion":"1.0","id":"'
    _type_and_source = (
        b'","type":'
        + orjson.dumps(TrackingEventReceived.EVENT_TYPE)
        + b',"source":'
        + orjson.dumps(SERVICE)
        + b',"time":'
    )

    def __init__(self, *, source_id: str, now: datetime) -> None:
        self._event_id = _event_ids_of_source(source_id)
        self._middle = (
            self._type_and_source
            + orjson.dumps(now, option=orjson.OPT_UTC_Z)
            + b',"datacontenttype":"application/json","subject":'
        )

    def message(self, event: dict[str, Any]) -> tuple[bytes, bytes]:
        """Return the Kafka key and the envelope of one event document."""
        key = partition_key(event)
        value = b"".join(
            (
                self._head,
                self._event_id(event["messageId"]).encode(),
                self._middle,
                orjson.dumps(key[:500]),
                b',"data":',
                orjson.dumps(event, option=orjson.OPT_UTC_Z),
                b"}",
            )
        )
        return key.encode(), value


async def publish_events(*, batcher: EventBatcher, events: Sequence[dict[str, Any]]) -> None:
    """Write accepted events to Kafka and return once every one is acknowledged (acks=all)."""
    started = time.perf_counter()
    # A request's events all come from one source.
    source_id = events[0]["sourceId"]
    writer = EnvelopeWriter(source_id=source_id, now=datetime.now(UTC))
    messages = [writer.message(event) for event in events]
    try:
        await batcher.publish(messages)
    except (KafkaError, TimeoutError) as exc:
        KAFKA_UNAVAILABLE.inc()
        raise KafkaUnavailable(str(exc) or type(exc).__name__) from exc
    PRODUCE_DURATION.observe(time.perf_counter() - started)
    if len(events) == 1:
        events_accepted(source_id, events[0]["type"]).inc()
        return
    counts: dict[str, int] = {}
    for event in events:
        counts[event["type"]] = counts.get(event["type"], 0) + 1
    for call_type, count in counts.items():
        events_accepted(source_id, call_type).inc(count)


async def record_violations(
    *,
    session_factory: async_sessionmaker[AsyncSession],
    source_id: str,
    found: Sequence[tuple[str, Violation, bool]],
) -> None:
    """Record tracking-plan violations (message id, violation, whether the event was refused) and count them."""
    if not found:
        return
    rows = [
        {
            "source_id": source_id,
            "kind": violation.kind,
            "event_type": violation.event_type,
            "event_name": violation.event_name,
            "path": violation.path,
            "rule": violation.rule,
            "message_id": message_id,
            "refused": refused,
        }
        for message_id, violation, refused in found
    ]
    async with session_factory() as session, session.begin():
        await store.insert_violations(session=session, rows=rows)
    for _, violation, refused in found:
        PLAN_VIOLATIONS.labels(source_id, violation.kind, str(refused).lower()).inc()
