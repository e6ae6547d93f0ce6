"""The intake pipeline of tracking calls, after api.py has read the request: the source and its rate
limit, the checks and the tracking plan for every call, publishing what passed, and recording
the plan's violations.

`Intake` holds what the pipeline keeps for the process's life (built by main.py once the
runtime runs). A whole request refused (unknown write key, rate limit, a batch that is not an
array or holds too many calls) raises the contract's error, counted (`cdp_ingest.intake.refuse`);
a call refused is kept in `Screened.rejected` for api.py to answer; Kafka not taking the events
raises `handlers.KafkaUnavailable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from cdp_common.topics import TopicName
from cdp_common.web import ApiError
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_ingest import handlers
from cdp_ingest.batching import EventBatcher
from cdp_ingest.domain.calls import CALL_TYPES, Limits, build_event, check_shape, merge_batch_defaults
from cdp_ingest.domain.errors import CallError
from cdp_ingest.domain.plans import Violation
from cdp_ingest.domain.ratelimit import RateLimiter, retry_after_header
from cdp_ingest.domain.transactions import parse_transaction, transaction_call
from cdp_ingest.intake import parse_json, refuse
from cdp_ingest.metrics import EVENTS_REFUSED, RATE_LIMITED
from cdp_ingest.settings import Settings

logger = logging.getLogger(__name__)


class Intake:
    """The long-lived state of the tracking path: settings, limits, write keys, rate limits, producer."""

    def __init__(
        self,
        *,
        settings: Settings,
        write_keys: handlers.WriteKeys,
        producer: AIOKafkaProducer,
        session_factory: async_sessionmaker[AsyncSession],
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.session_factory = session_factory
        self.batcher = EventBatcher(
            producer=producer, topic=settings.topic(TopicName.EVENTS), timeout_s=settings.produce_timeout_s
        )
        self.limits = settings.limits()
        self.proxies = settings.proxy_networks()
        self.write_keys = write_keys
        self.rate_limiter = RateLimiter()

    async def close(self) -> None:
        """Send what the batcher holds, then stop the producer."""
        await self.batcher.close()
        await self.producer.stop()


class Screened:
    """Events that passed validation and the plan, and what was refused or flagged on the way."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.violations: list[tuple[str, Violation, bool]] = []


async def source_for(*, intake: Intake, write_key: str, call_type: str) -> handlers.SourceConfig:
    """Return the enabled source of a write key, refusing an unknown key and a source over its rate."""
    source = await intake.write_keys.source_of(write_key)
    if source is None:
        raise refuse(401, "invalid_write_key", "the write key is unknown or disabled", call_type=call_type)
    rate = source.rate_limit_per_s or intake.settings.rate_limit_per_s
    burst = source.rate_limit_burst or intake.settings.rate_limit_burst
    wait = intake.rate_limiter.wait_time(key=source.id, rate_per_s=rate, burst=burst, now=time.monotonic())
    if wait > 0:
        RATE_LIMITED.labels(source.id).inc()
        raise refuse(
            429,
            "rate_limited",
            f"the write key exceeds {rate:g} requests per second; retry later",
            {"retry_after_s": retry_after_header(wait)},
            source=source.id,
            call_type=call_type,
            headers={"Retry-After": retry_after_header(wait)},
        )
    return source


def _encoded_size(call: dict[str, Any], limits: Limits) -> int:
    try:
        return len(orjson.dumps(call))
    except orjson.JSONEncodeError:
        check_shape(call, limits)  # says which value cannot be encoded (an integer beyond 64 bits)
        raise CallError("invalid_item", "the item cannot be encoded as JSON", None) from None


def screen(
    *,
    screened: Screened,
    index: int,
    call: Any,
    call_type: str | None,
    source: handlers.SourceConfig,
    intake: Intake,
    received_at: datetime,
    ip: str | None,
    check_size: bool,
    thorough: bool = True,
) -> CallError | None:
    """Validate one call into `screened`; return why it was refused, if it was."""
    try:
        if not isinstance(call, dict):
            raise CallError("invalid_item", "each item must be a JSON object", None)
        kind = call_type or call.get("type")
        if not isinstance(kind, str) or kind not in CALL_TYPES:
            raise CallError("invalid_type", f"type must be one of {sorted(CALL_TYPES)}", "type")
        if check_size and _encoded_size(call, intake.limits) > intake.limits.max_event_bytes:
            raise CallError(
                "event_too_large", f"the event exceeds {intake.limits.max_event_bytes} bytes", None
            )
        event = build_event(
            call=call,
            call_type=kind,
            source_id=source.id,
            received_at=received_at,
            limits=intake.limits,
            client_ip=ip,
            thorough=thorough,
        )
        if source.plan is not None:
            verdict = source.plan.evaluate(event)
            refused = verdict.event is None
            screened.violations.extend((event["messageId"], v, refused) for v in verdict.violations)
            if verdict.refusal is not None:
                raise verdict.refusal
            assert verdict.event is not None
            event = verdict.event
    except CallError as exc:
        EVENTS_REFUSED.labels(
            source.id, call_type or str(call.get("type") if isinstance(call, dict) else None), exc.code
        ).inc()
        screened.rejected.append({"index": index, "error": exc.as_body()})
        return exc
    screened.events.append(event)
    return None


async def publish_and_record(*, intake: Intake, screened: Screened, source_id: str) -> None:
    """Publish the events that passed, then record the plan's violations (a lost record is only logged)."""
    if screened.events:
        await handlers.publish_events(batcher=intake.batcher, events=screened.events)
    if not screened.violations:
        return
    try:
        await handlers.record_violations(
            session_factory=intake.session_factory, source_id=source_id, found=screened.violations
        )
    except (sa_exc.SQLAlchemyError, OSError):
        # The events are in Kafka already; a lost violation record must not turn that into an error.
        logger.exception("tracking-plan violations could not be recorded", extra={"source": source_id})


async def accept_call(
    *,
    intake: Intake,
    body: dict[str, Any],
    call_type: str,
    write_key: str,
    received_at: datetime,
    ip: str | None,
    thorough: bool,
) -> CallError | None:
    """Take one call of a known type through the pipeline; return why it was refused, if it was."""
    source = await source_for(intake=intake, write_key=write_key, call_type=call_type)
    screened = Screened()
    refusal = screen(
        screened=screened,
        index=0,
        call=body,
        call_type=call_type,
        source=source,
        intake=intake,
        received_at=received_at,
        ip=ip,
        check_size=False,
        thorough=thorough,
    )
    await publish_and_record(intake=intake, screened=screened, source_id=source.id)
    return refusal


async def accept_batch(
    *,
    intake: Intake,
    body: dict[str, Any],
    write_key: str,
    received_at: datetime,
    ip: str | None,
    thorough: bool,
) -> Screened:
    """Take a batch's calls through the pipeline; return what was accepted and refused."""
    settings = intake.settings
    source = await source_for(intake=intake, write_key=write_key, call_type="batch")
    items = body.get("batch")
    if not isinstance(items, list):
        raise refuse(
            400,
            "invalid_batch",
            "batch must be an array of calls",
            {"field": "batch"},
            source=source.id,
            call_type="batch",
        )
    if len(items) > settings.max_batch_events:
        raise refuse(
            413,
            "too_many_events",
            f"a batch holds at most {settings.max_batch_events} events",
            {"limit_events": settings.max_batch_events, "events": len(items)},
            source=source.id,
            call_type="batch",
        )
    screened = Screened()
    # Most batches carry no shared context, integrations or sentAt: then nothing is merged.
    shared = bool(body.get("context") or body.get("integrations")) or body.get("sentAt") is not None
    for index, item in enumerate(items):
        call = merge_batch_defaults(item, body) if shared and isinstance(item, dict) else item
        screen(
            screened=screened,
            index=index,
            call=call,
            call_type=None,
            source=source,
            intake=intake,
            received_at=received_at,
            ip=ip,
            check_size=True,
            thorough=thorough,
        )
    await publish_and_record(intake=intake, screened=screened, source_id=source.id)
    return screened


async def accept_transactions(
    *,
    intake: Intake,
    documents: Sequence[tuple[int, bytes]],
    bulk: bool,
    write_key: str,
    received_at: datetime,
    ip: str | None,
) -> Screened:
    """Take transactions (each a JSON document and its index) through the pipeline as track calls."""
    source = await source_for(intake=intake, write_key=write_key, call_type="transaction")
    screened = Screened()
    for index, line in documents:
        try:
            document = parse_json(line, call_type="transaction", max_depth=intake.limits.max_depth)
        except ApiError as exc:
            screened.rejected.append(
                {"index": index, "error": {"code": exc.code, "message": exc.message, "details": exc.details}}
            )
            continue
        try:
            call = transaction_call(parse_transaction(document))
        except CallError as exc:
            EVENTS_REFUSED.labels(source.id, "transaction", exc.code).inc()
            screened.rejected.append({"index": index, "error": exc.as_body()})
            continue
        screen(
            screened=screened,
            index=index,
            call=call,
            call_type="track",
            source=source,
            intake=intake,
            received_at=received_at,
            ip=ip,
            check_size=bulk,
        )
    await publish_and_record(intake=intake, screened=screened, source_id=source.id)
    return screened
