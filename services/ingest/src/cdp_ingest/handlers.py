"""Commands of the ingest service: sources, tokens, and accepting tracking calls."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiokafka.errors import KafkaError
from cdp_common.auth import hash_token, new_token
from cdp_common.events import TokenCreated, TokenRevoked, TrackingEventReceived, make_envelope
from cdp_common.kafka import KafkaPublisher
from cdp_common.outbox import OutboxMessage, add_to_outbox
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_ingest import store
from cdp_ingest.domain.calls import event_id, partition_key
from cdp_ingest.metrics import EVENTS_ACCEPTED, KAFKA_UNAVAILABLE

SERVICE = "ingest"


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge the events in time; nothing was accepted."""


async def create_source(*, session: AsyncSession, name: str, write_key: str | None = None) -> dict[str, Any]:
    """Create a source and return it with its write key (shown once)."""
    key = write_key or "wk_" + uuid.uuid4().hex + uuid.uuid4().hex[:16]
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


class WriteKeys:
    """Resolves write keys to sources, with a short cache so tracking calls skip the database."""

    def __init__(self, *, session_factory: async_sessionmaker[AsyncSession], ttl_s: float) -> None:
        self._session_factory = session_factory
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, str | None]] = {}

    async def source_of(self, write_key: str) -> str | None:
        """Return the source id of a write key, or None when it is unknown or disabled."""
        digest = hash_token(write_key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self._session_factory() as session:
            source_id = await store.find_source_by_write_key(session=session, write_key_hash=digest)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl_s, source_id)
        return source_id


async def publish_events(
    *, publisher: KafkaPublisher, topic: str, events: Sequence[TrackingEventReceived], timeout_s: float
) -> None:
    """Write accepted events to Kafka and return once every one is acknowledged (acks=all)."""
    messages = []
    for index, event in enumerate(events):
        envelope = make_envelope(
            payload=event,
            source=SERVICE,
            subject=partition_key(event),
            id=event_id(source_id=event.sourceId, message_id=event.messageId),
        )
        messages.append(
            OutboxMessage(id=index, topic=topic, key=envelope.subject, payload=envelope.to_bytes())
        )
    try:
        async with asyncio.timeout(timeout_s):
            await publisher.publish_batch(messages)
    except (KafkaError, TimeoutError) as exc:
        KAFKA_UNAVAILABLE.inc()
        raise KafkaUnavailable(str(exc)) from exc
    for event in events:
        EVENTS_ACCEPTED.labels(event.sourceId, event.type).inc()
