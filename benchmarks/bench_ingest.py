"""Ingest throughput: single `/v1/track` requests/s (p50, p99) beside a no-op FastAPI endpoint,
and `/v1/batch` events/s beside a raw aiokafka producer, all measured in the same run.

The no-op app runs under uvicorn in its own process on a free port, exactly as the
service is served (the same uvicorn options and the same garbage-collector tuning). The raw producer is made by the service's producer factory and
sends the very envelopes ingest writes for the benchmark's calls to the same topic
(see _raw_producer). The load generator is a small HTTP/1.1 client over kept-alive
asyncio connections with every request built beforehand (so that it costs little on
the cores it shares with the server, and the same for both sides), with a bounded
number of concurrent requests, for a bounded time, to 127.0.0.1 only. Baseline and
subject alternate in ABBA order, round after round, and the median round counts. A
fixed pool of message ids is reused, so the dev stack's consumers see mostly duplicates.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from cdp_common.testing import free_port
from cdp_common.topics import TopicName
from cdp_ingest.domain.calls import Limits, build_event
from cdp_ingest.handlers import envelope_bytes
from cdp_ingest.main import create_tracking_producer
from cdp_ingest.settings import Settings
from procstat import process_stat

NAME = "ingest"
DURATION_S = 4.0
WARMUP_S = 1.0
# Baseline and subject alternate, round after round, and the median round counts, so a
# neighbour's burst of load on a shared machine hits both sides alike.
ROUNDS = 3
TRACK_CONCURRENCY = 128
BATCH_CONCURRENCY = 6
BATCH_SIZE = 500
RAW_EVENTS = 30_000
MESSAGE_POOL = 2000
RAW_PARTITIONER = DefaultPartitioner()

NOOP_APP = """
import uvicorn
from cdp_common.service import settle_heap
from fastapi import FastAPI

app = FastAPI()


@app.post("/noop")
async def noop() -> dict:
    return {"success": True}


settle_heap()
uvicorn.run(
    app,
    host="127.0.0.1",
    port=int(__import__("sys").argv[1]),
    log_config=None,
    access_log=False,
    proxy_headers=False,
)
"""


def _call(index: int) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": f"bench-user-{index % 500}",
        "event": "Product Viewed",
        "messageId": f"bench-{index % MESSAGE_POOL}",
        "properties": {
            "product_id": f"p-{index % 97}",
            "price": 19.99,
            "currency": "EUR",
            "category": "Games",
        },
        "context": {
            "library": {"name": "bench", "version": "1"},
            "page": {"path": "/p", "url": "https://shop.example/p"},
        },
    }


def _request(url: str, body: bytes, authorization: str | None) -> tuple[str, int, bytes]:
    """Return host, port and the complete HTTP/1.1 request bytes for a POST of `body` to `url`."""
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        raise SystemExit("the ingest benchmark only loads 127.0.0.1")
    head = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: 127.0.0.1:{parts.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if authorization:
        head.append(f"Authorization: {authorization}")
    return "127.0.0.1", parts.port, ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one request on a kept-alive connection and read its whole answer; return the status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lowered = head.lower()
    marker = lowered.find(b"content-length:")
    if marker >= 0:
        length = int(lowered[marker + 15 : lowered.index(b"\r\n", marker)])
        await reader.readexactly(length)
        return status
    if b"transfer-encoding: chunked" not in lowered:
        raise RuntimeError("the answer has neither Content-Length nor chunked encoding")
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return status


async def _load(
    *,
    url: str,
    bodies: list[bytes],
    concurrency: int,
    auth: tuple[str, str] | None,
    per_request: int,
    server_cpu: Callable[[], Awaitable[float]],
) -> dict[str, Any]:
    """Post bodies in a loop over `concurrency` kept-alive connections for DURATION_S; return rates and latencies.

    Beside them, the server's CPU time per request over the whole load (warm-up included),
    read from the server process before and after: what the server itself spends, whatever
    else the shared machine is doing.

    The client is a few lines over asyncio streams with every request built beforehand,
    so that the load generator (on the same cores as the server) costs little per request
    and the same for the baseline and the service.
    """
    authorization = (
        "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() if auth is not None else None
    )
    requests = [_request(url, body, authorization) for body in bodies]
    host, port = requests[0][0], requests[0][1]
    latencies: list[float] = []
    failures = 0
    answered = 0
    warm_until = time.perf_counter() + WARMUP_S
    stop_at = warm_until + DURATION_S

    async def worker(offset: int) -> None:
        nonlocal failures, answered
        reader, writer = await asyncio.open_connection(host, port)
        try:
            index = offset
            while True:
                started = time.perf_counter()
                if started >= stop_at:
                    return
                status = await _exchange(reader, writer, requests[index % len(requests)][2])
                finished = time.perf_counter()
                answered += 1
                index += concurrency
                if started >= warm_until:
                    if status == 200:
                        latencies.append(finished - started)
                    else:
                        failures += 1
        finally:
            writer.close()

    cpu_before = await server_cpu()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    cpu_seconds = await server_cpu() - cpu_before
    latencies.sort()
    count = len(latencies)
    return {
        "requests_per_s": round(count / DURATION_S),
        "events_per_s": round(count * per_request / DURATION_S),
        "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(count * 0.99) - 1] * 1000, 2) if latencies else None,
        "failures": failures,
        "server_cpu_us_per_request": round(cpu_seconds / max(answered, 1) * 1e6),
    }


async def _noop_app() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(  # noqa: S603, ASYNC220
        [sys.executable, "-c", NOOP_APP, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.post(f"http://127.0.0.1:{port}/noop")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    process.terminate()
                    raise
                await asyncio.sleep(0.1)
    return process, f"http://127.0.0.1:{port}/noop"


def _cpu_seconds_of(pid: int) -> float:
    """Return a local process's CPU time (user and system), from /proc."""
    return process_stat(pid)[2]


def _process_cpu_seconds(pid: int) -> Callable[[], Awaitable[float]]:
    """Return a probe of a local process's CPU time."""

    async def probe() -> float:
        return _cpu_seconds_of(pid)

    return probe


def _service_cpu_seconds(url: str) -> Callable[[], Awaitable[float]]:
    """Return a probe of a service's CPU time, from its process_cpu_seconds_total metric (/proc as well)."""

    async def probe() -> float:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{url}/metrics")
        response.raise_for_status()
        for line in response.text.splitlines():
            if line.startswith("process_cpu_seconds_total "):
                return float(line.split()[1])
        raise RuntimeError(f"{url}/metrics has no process_cpu_seconds_total")

    return probe


def _median_round(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return sorted(rounds, key=lambda r: float(r[key]))[len(rounds) // 2]


async def _raw_record_batches(
    producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]]
) -> None:
    """Stream every message into record batches per partition, each submitted when full; await all acks."""
    partitions = sorted(await producer.partitions_for(topic))
    partition_of: dict[bytes, int] = {}
    open_batches: dict[int, BatchBuilder] = {}
    deliveries = []
    for key, value in messages:
        # Each key's partition is computed once, as ingest's batcher does.
        partition = partition_of.get(key)
        if partition is None:
            partition = partition_of[key] = RAW_PARTITIONER(key, partitions, partitions)
        batch = open_batches.get(partition)
        if batch is None:
            batch = open_batches[partition] = producer.create_batch()
        if batch.append(timestamp=None, key=key, value=value) is None:
            batch.close()
            deliveries.append(await producer.send_batch(batch, topic, partition=partition))
            batch = open_batches[partition] = producer.create_batch()
            batch.append(timestamp=None, key=key, value=value)
    for partition, batch in open_batches.items():
        batch.close()
        deliveries.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*deliveries)


async def _raw_send_per_message(
    producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]]
) -> None:
    """Send blocks of BATCH_SIZE from BATCH_CONCURRENCY senders, one `send` per message, awaiting each block."""
    blocks = [messages[start : start + BATCH_SIZE] for start in range(0, len(messages), BATCH_SIZE)]
    partitions = sorted(await producer.partitions_for(topic))
    partition_of: dict[bytes, int] = {}

    async def sender() -> None:
        while blocks:
            block = blocks.pop()
            futures = []
            for key, value in block:
                partition = partition_of.get(key)
                if partition is None:
                    partition = partition_of[key] = RAW_PARTITIONER(key, partitions, partitions)
                futures.append(await producer.send(topic, value=value, key=key, partition=partition))
            await asyncio.gather(*futures)

    await asyncio.gather(*(sender() for _ in range(BATCH_CONCURRENCY)))


async def _raw_producer(env: dict[str, str], messages: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Produce ingest's own messages with the service's producer settings, two ways; return events/s.

    The messages are exactly what ingest writes for the benchmark's calls (the enriched
    envelopes, keyed by user id, with the benchmark source's event ids) and they go to
    the same topic, so the dev stack's consumers do the same work downstream of either.
    The producer is made by the service's own factory (idempotent, acks=all, same linger
    and batch size). Nothing is parsed, validated or serialised, and each key's partition
    is computed once, as ingest's batcher does (murmur2 in Python for every message
    would charge the baseline work ingest does not do). One way streams the
    messages into full record batches per partition and awaits the acknowledgements at
    the end (the most a raw aiokafka producer does); the other has the batch benchmark's
    shape (BATCH_CONCURRENCY senders of BATCH_SIZE messages, awaiting each block) with
    one `send` per message. The better of the two is the baseline.
    """
    settings = Settings(env=env.get("CDP_ENV", "dev"), kafka_bootstrap=env["CDP_KAFKA_BOOTSTRAP"])
    topic = settings.topic(TopicName.EVENTS)
    producer = create_tracking_producer(settings)
    await producer.start()
    rates: dict[str, int] = {}
    cpu_us: dict[str, float] = {}
    try:
        await _raw_send_per_message(producer, topic, messages[:BATCH_SIZE])
        for name, produce in (
            ("record_batches", _raw_record_batches),
            ("send_per_message", _raw_send_per_message),
        ):
            load = [messages[i % len(messages)] for i in range(RAW_EVENTS)]
            started, cpu_started = time.perf_counter(), time.process_time()
            await produce(producer, topic, load)
            rates[name] = round(RAW_EVENTS / (time.perf_counter() - started))
            cpu_us[name] = round((time.process_time() - cpu_started) / RAW_EVENTS * 1e6, 1)
    finally:
        await producer.stop()
    best = max(rates, key=rates.__getitem__)
    return {
        "events_per_s": rates[best],
        "cpu_us_per_event": cpu_us[best],
        **{f"{name}_events_per_s": rate for name, rate in rates.items()},
    }


async def _bench_source(env: dict[str, str]) -> tuple[str, str]:
    """Create a source without a practical rate limit; return its write key and id."""
    headers = {"Authorization": f"Bearer {env['CDP_ADMIN_TOKEN']}"}
    async with httpx.AsyncClient(timeout=10) as client:
        created = await client.post(
            f"{env['CDP_INGEST_URL']}/v1/sources", json={"name": "benchmark"}, headers=headers
        )
        created.raise_for_status()
        source = created.json()
        changed = await client.patch(
            f"{env['CDP_INGEST_URL']}/v1/sources/{source['id']}",
            json={"rate_limit_per_s": 1_000_000, "rate_limit_burst": 1_000_000},
            headers=headers,
        )
        changed.raise_for_status()
    return str(source["write_key"]), str(source["id"])


async def run(env: dict[str, str]) -> dict[str, Any]:
    """Measure the baselines and ingest's two paths, one after another."""
    ingest = env["CDP_INGEST_URL"]
    if not ingest.startswith("http://127.0.0.1:"):
        raise SystemExit("the ingest benchmark only loads 127.0.0.1")
    write_key, source_id = await _bench_source(env)
    auth = (write_key, "")
    track_bodies = [orjson.dumps(_call(i)) for i in range(MESSAGE_POOL)]
    batch_bodies = [
        orjson.dumps({"batch": [_call(b * BATCH_SIZE + i) for i in range(BATCH_SIZE)]})
        for b in range(MESSAGE_POOL // BATCH_SIZE)
    ]
    # The raw producer sends what ingest sends for the same calls: their enriched envelopes.
    now = datetime.now(UTC)
    raw_messages = []
    for index in range(MESSAGE_POOL):
        event = build_event(
            call=_call(index),
            call_type="track",
            source_id=source_id,
            received_at=now,
            limits=Limits(),
            client_ip="127.0.0.1",
        )
        key, value = envelope_bytes(event, now=now)
        raw_messages.append((key.encode(), value))

    ingest_cpu = _service_cpu_seconds(ingest)
    process, noop_url = await _noop_app()
    noop_rounds, track_rounds = [], []
    try:
        for round_index in range(ROUNDS):
            # ABBA order: the consumers' work after one side's events spills into the other side equally.
            for side in ("noop", "track") if round_index % 2 == 0 else ("track", "noop"):
                if side == "noop":
                    noop_rounds.append(
                        await _load(
                            url=noop_url,
                            bodies=track_bodies[:1],
                            concurrency=TRACK_CONCURRENCY,
                            auth=None,
                            per_request=1,
                            server_cpu=_process_cpu_seconds(process.pid),
                        )
                    )
                else:
                    track_rounds.append(
                        await _load(
                            url=f"{ingest}/v1/track",
                            bodies=track_bodies,
                            concurrency=TRACK_CONCURRENCY,
                            auth=auth,
                            per_request=1,
                            server_cpu=ingest_cpu,
                        )
                    )
    finally:
        process.terminate()
        process.wait(timeout=10)
    raw_rounds, batch_rounds = [], []
    for round_index in range(ROUNDS):
        for side in ("raw", "batch") if round_index % 2 == 0 else ("batch", "raw"):
            if side == "raw":
                raw_rounds.append(await _raw_producer(env, raw_messages))
            else:
                batch_rounds.append(
                    await _load(
                        url=f"{ingest}/v1/batch",
                        bodies=batch_bodies,
                        concurrency=BATCH_CONCURRENCY,
                        auth=auth,
                        per_request=BATCH_SIZE,
                        server_cpu=ingest_cpu,
                    )
                )
    noop = _median_round(noop_rounds, "requests_per_s")
    track = _median_round(track_rounds, "requests_per_s")
    raw = _median_round(raw_rounds, "events_per_s")
    batch = _median_round(batch_rounds, "events_per_s")
    return {
        "noop_fastapi": {
            k: noop[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request")
        },
        "track": {
            k: track[k]
            for k in ("requests_per_s", "p50_ms", "p99_ms", "failures", "server_cpu_us_per_request")
        },
        "track_vs_noop": round(track["requests_per_s"] / max(noop["requests_per_s"], 1), 3),
        # What the servers themselves spend per request (median rounds), apart from what
        # the shared machine's other work takes from either side.
        "noop_vs_track_server_cpu": round(
            noop["server_cpu_us_per_request"] / max(track["server_cpu_us_per_request"], 1), 3
        ),
        "raw_producer": raw,
        "batch": {
            "events_per_s": batch["events_per_s"],
            "requests_per_s": batch["requests_per_s"],
            "p50_ms": batch["p50_ms"],
            "p99_ms": batch["p99_ms"],
            "failures": batch["failures"],
            "server_cpu_us_per_event": round(batch["server_cpu_us_per_request"] / BATCH_SIZE, 1),
        },
        "batch_vs_raw_producer": round(batch["events_per_s"] / max(raw["events_per_s"], 1), 3),
        "goals": {"track_vs_noop": 0.6, "batch_events_per_s": 25_000, "batch_vs_raw_producer": 0.5},
        "setup": {
            "duration_s": DURATION_S,
            "rounds": ROUNDS,
            "track_concurrency": TRACK_CONCURRENCY,
            "batch_concurrency": BATCH_CONCURRENCY,
            "batch_size": BATCH_SIZE,
            "cpus": os.cpu_count(),
        },
    }
