"""What every service process runs, from start to stop: engine, migrations, topics, producer,
consumers, relay, jobs, periodic jobs and the service's hooks, and the FastAPI app with health,
readiness, metrics and the contract's error handling."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cdp_common.auth import apply_token_created, apply_token_revoked
from cdp_common.db import create_engine, create_session_factory
from cdp_common.envelope import Payload
from cdp_common.events import TokenCreated, TokenRevoked
from cdp_common.jobs import JobKind, JobRunner
from cdp_common.kafka import (
    BatchHandler,
    ConsumerRunner,
    Handler,
    KafkaPublisher,
    create_producer,
    ensure_topics,
)
from cdp_common.logs import configure_logging
from cdp_common.metrics import DB_POOL_CONNECTIONS, HTTP_REQUEST_DURATION, HTTP_REQUESTS
from cdp_common.migrations import migrate
from cdp_common.openapi import ApiDescription, MethodsAllowed, describe_api
from cdp_common.outbox import OutboxRelay, oldest_unpublished_age
from cdp_common.periodic import PeriodicJob, PeriodicJobs
from cdp_common.retention import pruning_job
from cdp_common.screening import BodySizeLimitMiddleware, UnstorableInputMiddleware, body_screening
from cdp_common.settings import PlatformSettings
from cdp_common.topics import ServiceTopic, Topic, TopicName
from cdp_common.web import install_error_handlers

logger = logging.getLogger(__name__)


async def _retrying(what: str, start: Callable[[], Awaitable[None]], *, attempts: int = 30) -> None:
    """Run a start-up step, waiting for a dependency that is still coming up."""
    for attempt in range(1, attempts + 1):
        try:
            await start()
            return
        except (OSError, KafkaError, sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            if attempt == attempts:
                raise
            logger.warning("%s not reachable yet (%s); retrying", what, type(exc).__name__)
            await asyncio.sleep(min(0.5 * attempt, 3.0))


@dataclass(frozen=True)
class ConsumerSpec:
    """One consumer group of a service: what it reads and which handler takes each type."""

    purpose: str
    topics: Sequence[Topic]
    handlers: Mapping[type[Payload], Handler]
    batch_handlers: Mapping[type[Payload], BatchHandler] = field(default_factory=dict)


# Objects alive across a request's wait (its events, its task) count towards the collector's
# youngest generation; at CPython's 700 a busy service collected it every few requests and
# promoted in-flight objects into the generations that full collections scan.
YOUNG_GC_THRESHOLD = 50_000


def settle_heap() -> None:
    """Leave what start-up built out of the garbage collector's sight, and collect the young less often.

    Requests and messages allocate and free many objects each; reference counting frees nearly
    all of them, so the cyclic collector only has cycles to find. Without this, its frequent
    young collections promote in-flight objects, and every full collection walks the libraries'
    whole long-lived heap again.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, oldest)


@dataclass
class ServiceRuntime:
    """The whole life of one service process: what it declares, and the resources built for it.

    A service's main.py declares its consumers, queued-job kinds, periodic jobs (`jobs.py`) and
    its start and stop hooks (at construction, or by setting them before start); `build_app`
    puts the runtime in the app's lifespan. The engine and the session factory exist from
    construction (connections are made on first use), so what main.py builds before start can
    hold them.
    """

    service: str
    settings: PlatformSettings
    migrations: Path
    consumers: Sequence[ConsumerSpec] = ()
    # Topics private to the service, created beside the contract's topics every service creates.
    topics: Sequence[ServiceTopic] = ()
    jobs: Mapping[str, JobKind] = field(default_factory=dict)
    periodic: Sequence[PeriodicJob] = ()
    # Run in order once the platform's parts run, before the jobs and periodic jobs start.
    on_start: Sequence[Callable[[ServiceRuntime], Awaitable[None]]] = ()
    # Run in order once the periodic jobs, the jobs and the consumers stopped, before the relay,
    # the producer and the engine stop.
    on_stop: Sequence[Callable[[ServiceRuntime], Awaitable[None]]] = ()
    engine: AsyncEngine = field(init=False)
    session_factory: async_sessionmaker[AsyncSession] = field(init=False)
    producer: AIOKafkaProducer = field(init=False)
    publisher: KafkaPublisher = field(init=False)
    relay: OutboxRelay = field(init=False)
    runners: list[ConsumerRunner] = field(init=False, default_factory=list)
    job_runner: JobRunner = field(init=False)
    periodic_jobs: PeriodicJobs = field(init=False)

    def __post_init__(self) -> None:
        self.engine = create_engine(
            database_url=self.settings.database_url, schema=self.service, pool_size=self.settings.db_pool_size
        )
        self.session_factory = create_session_factory(self.engine)

    async def start(self) -> None:
        """Migrate, create topics, start the relay and the consumers, run the start hooks, then the jobs."""
        self.job_runner = JobRunner(
            service=self.service,
            engine=self.engine,
            session_factory=self.session_factory,
            kinds=self.jobs,
            workers=self.settings.job_workers,
            step_pause_s=self.settings.job_step_pause_s,
        )
        pruning = pruning_job(
            service=self.service,
            keep=timedelta(days=self.settings.processed_events_keep_days),
            interval_s=self.settings.processed_events_prune_interval_s,
        )
        self.periodic_jobs = PeriodicJobs(
            service=self.service,
            session_factory=self.session_factory,
            jobs=[*self.periodic, pruning],
            stop_grace_s=self.settings.periodic_stop_grace_s,
        )
        if self.settings.migrate_on_start:
            await _retrying(
                "database",
                lambda: migrate(engine=self.engine, schema=self.service, script_location=self.migrations),
            )
        await _retrying("kafka", lambda: ensure_topics(self.settings, [*TopicName, *self.topics]))
        await _retrying("kafka", self._start_producer)
        self.publisher = KafkaPublisher(
            self.producer,
            make_producer=lambda: create_producer(self.settings, client_id=self.service),
            service=self.service,
        )
        self.relay = OutboxRelay(
            engine=self.engine,
            publisher=self.publisher,
            service=self.service,
            batch_size=self.settings.outbox_batch_size,
            idle_wait_s=self.settings.outbox_poll_interval_s,
        )
        self.relay.start()
        tokens = ConsumerSpec(
            purpose="tokens",
            topics=[TopicName.TOKENS],
            handlers={TokenCreated: apply_token_created, TokenRevoked: apply_token_revoked},
        )
        for spec in (tokens, *self.consumers):
            runner = ConsumerRunner(
                settings=self.settings,
                group_id=self.settings.group_id(self.service, spec.purpose),
                topics=spec.topics,
                handlers=spec.handlers,
                session_factory=self.session_factory,
                publisher=self.publisher,
                source=self.service,
                batch_handlers=spec.batch_handlers,
            )
            await runner.start()
            self.runners.append(runner)
        for hook in self.on_start:
            await hook(self)
        self.job_runner.start()
        self.periodic_jobs.start()
        settle_heap()
        logger.info("service started", extra={"env": self.settings.env})

    async def _start_producer(self) -> None:
        producer = create_producer(self.settings, client_id=self.service)
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self.producer = producer

    async def stop(self) -> None:
        """Stop the periodic jobs (a run in flight finishes), the jobs and the consumers; run the stop
        hooks; then stop the relay, the producer and the engine."""
        if hasattr(self, "periodic_jobs"):
            await self.periodic_jobs.stop()
        if hasattr(self, "job_runner"):
            await self.job_runner.stop()
        await asyncio.gather(*(runner.stop() for runner in self.runners), return_exceptions=True)
        for hook in self.on_stop:
            try:
                await hook(self)
            except Exception:
                logger.exception("a stop hook failed; stopping the rest", extra={"hook": repr(hook)})
        if hasattr(self, "relay"):
            await self.relay.stop()
        if hasattr(self, "publisher"):
            await self.publisher.stop()
        await self.engine.dispose()

    async def readiness(self) -> dict[str, str]:
        """Check the database, the outbox, Kafka, the consumers and the periodic jobs; return a problem per failing part."""
        problems: dict[str, str] = {}
        try:
            async with asyncio.timeout(2):
                async with self.engine.connect() as conn:
                    outbox_age = await oldest_unpublished_age(conn=conn)
            if outbox_age > self.settings.outbox_stall_s:
                problems["outbox"] = f"oldest unpublished row is {outbox_age:.0f} s old"
        except Exception as exc:
            problems["database"] = type(exc).__name__
        try:
            async with asyncio.timeout(2):
                # The publisher's producer: it replaces the one built at start-up when that one breaks.
                await self.publisher.producer.client.fetch_all_metadata()
        except Exception as exc:
            problems["kafka"] = type(exc).__name__
        for runner in self.runners:
            if not runner.running:
                problems[f"consumer:{runner.group_id}"] = "stopped"
            elif (idle := runner.since_last_poll()) > self.settings.consumer_stall_s:
                problems[f"consumer:{runner.group_id}"] = f"no poll completed for {idle:.0f} s"
        for name in self.periodic_jobs.stopped() if hasattr(self, "periodic_jobs") else []:
            problems[f"periodic:{name}"] = "stopped"
        return problems


class HttpMetricsMiddleware:
    """Count and time every HTTP request by the route template it matched, never the raw path."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            HTTP_REQUESTS.labels(self.service, method, template, str(status)).inc()
            HTTP_REQUEST_DURATION.labels(self.service, method, template).observe(
                time.perf_counter() - started
            )


def _report_pool(runtime: ServiceRuntime | None) -> None:
    """Set the pool gauges from the engine's pool, when the runtime has one."""
    engine: AsyncEngine | None = getattr(runtime, "engine", None)
    if runtime is None or engine is None:
        return
    pool = engine.sync_engine.pool
    checked_out = getattr(pool, "checkedout", None)
    checked_in = getattr(pool, "checkedin", None)
    if checked_out is None or checked_in is None:
        return
    DB_POOL_CONNECTIONS.labels(runtime.service, "in_use").set(checked_out())
    DB_POOL_CONNECTIONS.labels(runtime.service, "idle").set(checked_in())
    size = getattr(pool, "size", None)
    max_overflow = getattr(pool, "_max_overflow", 0)
    if size is not None:
        DB_POOL_CONNECTIONS.labels(runtime.service, "max").set(size() + max(max_overflow, 0))


def _operations_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        problems = await request.app.state.runtime.readiness()
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        _report_pool(getattr(request.app.state, "runtime", None))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def build_app(
    *,
    runtime: ServiceRuntime,
    routers: Sequence[APIRouter],
    title: str,
    description: ApiDescription = ApiDescription(),  # noqa: B008 (frozen, never changed)
    **fastapi_args: Any,
) -> FastAPI:
    """Create a service's app: lifespan around the runtime, operations routes, error bodies,
    the OpenAPI document with security and errors, and `Allow` with every method of a path."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(
            service=runtime.service,
            level=runtime.settings.log_level,
            repeat_interval_s=runtime.settings.log_repeat_interval_s,
        )
        app.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=title, lifespan=lifespan, **fastapi_args)
    install_error_handlers(app)
    describe_api(app, description)
    app.add_middleware(MethodsAllowed, routes=lambda: app.router.routes)
    app.add_middleware(UnstorableInputMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=runtime.settings.max_body_bytes)
    app.add_middleware(HttpMetricsMiddleware, service=runtime.service)
    app.include_router(_operations_router())
    for router in routers:
        app.include_router(router, dependencies=body_screening(router))
    return app


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run an app with uvicorn in this process."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, proxy_headers=False)
