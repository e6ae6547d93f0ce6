"""Replaying a dead-letter topic: each message back onto the topic it came from, except the erased.

Erasure is respected twice: messages keyed by a profile id that `profile.erased`
names on cdp.profiles.v1 (the survivor or a merged-away id) are skipped here, and
tracking events of an erased person that are replayed are dropped by profile itself,
which checks its keyed-hash tombstones before it creates anyone.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cdp_common.events import DeadLetter, InvalidEvent, ProfileErased, UnknownEventType, decode_envelope
from cdp_common.topics import ServiceTopic, Topic, TopicName


@dataclass
class ReplayReport:
    """What a replay did with each dead letter."""

    outcomes: Counter[str] = field(default_factory=Counter)


def topic_by_name(name: str) -> Topic:
    """Find a topic by its contract name (cdp.events.v1) or short name (events); a full name the
    contract's shared topics do not hold is a service's own topic (cdp.campaign-sends.v1)."""
    for topic in TopicName:
        if name in (topic.value, topic.name.lower(), topic.dlq):
            return topic
    if re.fullmatch(r"cdp\.[a-z0-9-]+\.v1", name):
        return ServiceTopic(name)
    known = ", ".join(topic.name.lower() for topic in TopicName)
    raise ValueError(f"unknown topic {name!r}; one of {known} or a cdp.*.v1 name")


async def read_to_end(*, bootstrap: str, topic: str) -> list[bytes | None]:
    """Read a topic's values from the start up to its end at the time of the call."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    values: list[bytes | None] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return values
        assignment = [TopicPartition(topic, partition) for partition in partitions]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        ends = await consumer.end_offsets(assignment)
        remaining = {tp for tp in assignment if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                values.extend(record.value for record in records)
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return values


async def erased_profile_ids(*, bootstrap: str, profiles_topic: str) -> set[str]:
    """Return every profile id that a profile.erased message names, merged-away ids included."""
    erased: set[str] = set()
    for value in await read_to_end(bootstrap=bootstrap, topic=profiles_topic):
        try:
            envelope = decode_envelope(value, known={ProfileErased.EVENT_TYPE: ProfileErased})
        except (InvalidEvent, UnknownEventType):
            continue
        erased.add(envelope.data.profile_id)
        erased.update(envelope.data.merged_profile_ids)
    return erased


def _subject_of(value: bytes) -> str | None:
    try:
        return decode_envelope(value).subject
    except UnknownEventType:
        return None
    except InvalidEvent:
        return None


async def replay_dead_letters(
    *,
    bootstrap: str,
    env: str,
    topic: Topic,
    dry_run: bool,
    on_total: Callable[[int], Any],
    on_progress: Callable[[str], Any],
) -> ReplayReport:
    """Re-publish the dead letters of one topic to their original topic, skipping erased subjects."""
    report = ReplayReport()
    dlq = f"{env}.{topic.dlq}"
    letters_raw, erased = await asyncio.gather(
        read_to_end(bootstrap=bootstrap, topic=dlq),
        erased_profile_ids(bootstrap=bootstrap, profiles_topic=f"{env}.{TopicName.PROFILES.value}"),
    )
    on_total(len(letters_raw))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for raw in letters_raw:
            outcome = await _replay_one(raw, producer=producer, erased=erased, dry_run=dry_run)
            report.outcomes[outcome] += 1
            on_progress(outcome)
    finally:
        await producer.stop()
    return report


async def _replay_one(
    raw: bytes | None, *, producer: AIOKafkaProducer, erased: set[str], dry_run: bool
) -> str:
    try:
        letter = decode_envelope(raw, known={DeadLetter.EVENT_TYPE: DeadLetter}).data
    except (InvalidEvent, UnknownEventType):
        return "not_a_dead_letter"
    if letter.value.startswith("base64:"):
        return "skipped_not_an_envelope"
    original = letter.value.encode()
    subject = _subject_of(original)
    if subject is None:
        return "skipped_not_an_envelope"
    if subject in erased or (letter.key is not None and letter.key in erased):
        return "skipped_erased"
    if not dry_run:
        key = letter.key.encode() if letter.key is not None else None
        await producer.send_and_wait(letter.topic, original, key=key)
    return "would_replay" if dry_run else "replayed"
