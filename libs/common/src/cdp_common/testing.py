"""Pytest plugin: fixtures for the real Kafka broker and the real PostgreSQL.

Every test session gets its own `CDP_ENV` (so its own topics, consumer groups and
database) and removes them at the end, so tests never share state with a running
stack or with each other's sessions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import email.policy
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from cdp_common.envelope import Envelope
from cdp_common.events import InvalidEvent, UnknownEventType, decode_envelope
from cdp_common.settings import PlatformSettings

T = TypeVar("T")

DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_ADMIN_DATABASE_URL = "postgresql://cdp:cdp@127.0.0.1:5432/postgres"


def _require_port(address: str, what: str) -> None:
    host, _, port = address.rpartition(":")
    if not port_open(int(port), host):
        pytest.fail(f"{what} is not reachable at {address}: start it with `make infra`", pytrace=False)


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "a condition",
) -> T:
    """Poll an async probe until it returns something truthy, or fail after a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.1, what: str = "a condition"
) -> T:
    """Poll a blocking probe until it returns something truthy, or fail after a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on a port right now."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port() -> int:
    """Return a TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class PlatformUnderTest:
    """The isolated environment of one test session."""

    env: str
    kafka_bootstrap: str
    database_url: str
    admin_token: str
    hash_key: str

    def environ(self) -> dict[str, str]:
        """Return the CDP_* environment variables a service of this session runs with."""
        return {
            "CDP_ENV": self.env,
            "CDP_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CDP_DATABASE_URL": self.database_url,
            "CDP_ADMIN_TOKEN": self.admin_token,
            "CDP_HASH_KEY": self.hash_key,
            "CDP_TOPIC_PARTITIONS": "2",
            "CDP_CONSUMER_RETRY_BACKOFF_S": "0.05",
        }

    def settings(self, cls: type[PlatformSettings] = PlatformSettings, **overrides: Any) -> PlatformSettings:
        """Build settings of a class for this session, with overrides."""
        values: dict[str, Any] = {
            "env": self.env,
            "kafka_bootstrap": self.kafka_bootstrap,
            "database_url": self.database_url,
            "admin_token": self.admin_token,
            "hash_key": self.hash_key,
            "topic_partitions": 2,
            "consumer_retry_backoff_s": 0.05,
        }
        values.update(overrides)
        return cls(**values)


@pytest.fixture(scope="session")
def platform() -> Iterator[PlatformUnderTest]:
    """Create a session-private environment: a database and a topic prefix; remove both after."""
    kafka = os.environ.get("CDP_TEST_KAFKA_BOOTSTRAP", DEFAULT_KAFKA)
    admin_url = os.environ.get("CDP_TEST_DATABASE_URL", DEFAULT_ADMIN_DATABASE_URL)
    _require_port(kafka, "Kafka")
    host_port = admin_url.split("@", 1)[1].split("/", 1)[0]
    _require_port(host_port, "PostgreSQL")
    env = "t" + secrets.token_hex(5)
    database = f"cdp_{env}"
    server_url = admin_url.rsplit("/", 1)[0]

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()

    async def drop() -> None:
        await drop_database(admin_url, database)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            mine = [t for t in await admin.list_topics() if t.startswith(env)]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    asyncio.run(create())
    try:
        yield PlatformUnderTest(
            env=env,
            kafka_bootstrap=kafka,
            database_url=f"{server_url}/{database}",
            admin_token="cdp_admin_" + secrets.token_hex(16),
            hash_key=secrets.token_hex(16),
        )
    finally:
        asyncio.run(drop())


async def read_topic(
    *,
    bootstrap: str,
    topic: str,
    until: Callable[[list[Envelope[Any]]], bool],
    timeout: float = 30.0,
) -> list[Envelope[Any]]:
    """Read a topic from its start until `until` holds for the envelopes read so far."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    envelopes: list[Envelope[Any]] = []
    try:
        deadline = time.monotonic() + timeout

        async def known_partitions() -> set[int] | None:
            partitions: set[int] | None = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
            return partitions

        partitions = await wait_for(
            known_partitions, timeout=timeout, interval=0.2, what=f"topic {topic} to exist"
        )
        assignment = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        while not until(envelopes):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s reading {topic}; read {len(envelopes)}")
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        envelopes.append(decode_envelope(record.value))
                    except (InvalidEvent, UnknownEventType):
                        continue
    finally:
        await consumer.stop()
    return envelopes


async def answers_ready(url: str) -> bool:
    """Whether a service at a base URL answers /readyz with 200."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(f"{url}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


@asynccontextmanager
async def serving(app: Any, port: int) -> AsyncIterator[None]:
    """Serve an ASGI app with uvicorn in this event loop, on loopback, until the block ends."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        if task.done():
            raise AssertionError(f"the server on port {port} did not start; its log is above")
        return bool(server.started)

    try:
        await wait_for(started, timeout=90, interval=0.1, what=f"the server on port {port}")
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, timeout=30)


@asynccontextmanager
async def private_database(platform: PlatformUnderTest, name: str) -> AsyncIterator[str]:
    """Create a database of its own beside the session's, yield its URL, and drop it after."""
    base = platform.database_url.rsplit("/", 1)[0]
    database = f"cdp_{platform.env}_{name}".replace("-", "_")
    admin = await asyncpg.connect(f"{base}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    try:
        yield f"{base}/{database}"
    finally:
        await drop_database(f"{base}/postgres", database)


async def drop_database(admin_url: str, database: str, *, timeout: float = 120.0) -> None:
    """Drop a database, ending the connections still open to it.

    FORCE may not end a maintenance worker (autovacuum analysing what a bulk load wrote): it
    belongs to a role the tests' role cannot signal. DROP without FORCE cancels such workers
    itself and fails only while a client is still connected, so it is tried until then.
    """
    admin = await asyncpg.connect(admin_url)

    async def dropped() -> bool:
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            return True
        except asyncpg.InsufficientPrivilegeError:
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
                return True
            except asyncpg.ObjectInUseError:
                return False

    try:
        await wait_for(dropped, timeout=timeout, interval=0.5, what=f"the database {database} to be dropped")
    finally:
        await admin.close()


@dataclass
class ServiceProcess:
    """One service running as its own process, as `make up` runs it."""

    name: str
    port: int
    environ: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        """Base URL of the service's HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process with its log in a file."""
        env = {**os.environ, **self.environ, f"CDP_{self.name.upper()}_PORT": str(self.port)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", f"cdp_{self.name}"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    async def wait_ready(self, timeout: float = 240.0) -> None:
        """Wait until /readyz answers 200, failing early if the process died."""

        async def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log_path.read_text()[-4000:]}")
            return await answers_ready(self.url)

        await wait_for(ready, timeout=timeout, interval=0.3, what=f"{self.name} to be ready")

    def stop(self, kill: bool = False) -> None:
        """Stop the process (SIGTERM, or SIGKILL to simulate a crash) and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# The repository's root: the local stack's Kafka jars and configuration, for a private broker.
ROOT = Path(__file__).resolve().parents[4]
KAFKA_LIBS = ROOT / ".run" / "kafka" / "libs"
KAFKA_CONFIG = ROOT / "deploy" / "local" / "kafka"


class PrivateKafka:
    """A single-node KRaft broker of one test, in a directory of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.controller_port = free_port()
        self.properties = directory / "server.properties"
        self.log = directory / "kafka.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The broker's address."""
        return f"127.0.0.1:{self.port}"

    def _java(self, *arguments: str) -> list[str]:
        return [
            "java",
            "-Xms256m",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",
            f"-Dkafka.logs.dir={self.directory}",
            f"-Dlog4j.configuration=file:{KAFKA_CONFIG / 'log4j.properties'}",
            "-cp",
            f"{KAFKA_LIBS}/*",
            *arguments,
        ]

    def format(self) -> None:
        """Write the broker's configuration and format its storage."""
        template = (KAFKA_CONFIG / "server.properties").read_text()
        self.properties.write_text(
            template.replace("@KAFKA_PORT@", str(self.port))
            .replace("@KAFKA_CONTROLLER_PORT@", str(self.controller_port))
            .replace("@KAFKA_DATA@", str(self.directory / "data"))
        )
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        subprocess.run(  # noqa: S603
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.properties)),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def launch(self) -> None:
        """Start the broker process without waiting for it."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603
                self._java("kafka.Kafka", str(self.properties)), stdout=log, stderr=subprocess.STDOUT
            )

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        self.launch()
        assert self.process is not None
        process = self.process

        def listening() -> bool:
            assert process.poll() is None, self.log.read_text()[-3000:]
            return port_open(self.port)

        wait_until(listening, timeout=120, interval=0.2, what="the private broker to start")

    def kill(self) -> None:
        """Stop the broker the hard way, as a crash or a lost machine would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)


_counter = 0


def unique_env(platform: PlatformUnderTest) -> str:
    """Return an environment name of this session that no other test uses (own topics, groups)."""
    global _counter
    _counter += 1
    return f"{platform.env}-{_counter}"


SERVICES = ("ingest", "profile", "segment", "campaign", "consent")


class Stack:
    """The five services of a test session, running as processes, and the credentials to call them."""

    def __init__(self, services: dict[str, ServiceProcess], admin_token: str, write_key: str) -> None:
        self.services = services
        self.admin_token = admin_token
        self.write_key = write_key

    def url(self, name: str) -> str:
        """Base URL of one service."""
        return self.services[name].url

    def admin(self) -> dict[str, str]:
        """Headers that authenticate as the session's admin."""
        return {"Authorization": f"Bearer {self.admin_token}"}


def service_processes(environ: dict[str, str], *, logs: Path) -> dict[str, ServiceProcess]:
    """Return the five services on free ports, each told where the others are; none started yet."""
    ports = {name: free_port() for name in SERVICES}
    shared = {
        **environ,
        **{f"CDP_{name.upper()}_URL": f"http://127.0.0.1:{port}" for name, port in ports.items()},
    }
    return {
        name: ServiceProcess(name=name, port=ports[name], environ=shared, log_path=logs / f"{name}.log")
        for name in SERVICES
    }


async def start_services(services: dict[str, ServiceProcess]) -> None:
    """Start the services and wait until every one is ready."""
    first, *others = services.values()
    # The first start creates the platform's topics; starting it alone avoids five racing creators.
    first.start()
    await first.wait_ready()
    for service in others:
        service.start()
    await asyncio.gather(*(service.wait_ready() for service in others))


@pytest.fixture(scope="session")
def stack(platform: PlatformUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Start the five services once per session in the session's environment, on free ports."""
    write_key = "wk_" + secrets.token_hex(12)
    environ = {
        **platform.environ(),
        "CDP_DEFAULT_WRITE_KEY": write_key,
        "CDP_SMTP_URL": os.environ.get("CDP_TEST_SMTP_URL", "smtp://127.0.0.1:1"),
    }
    services = service_processes(environ, logs=tmp_path_factory.mktemp("service-logs"))
    try:
        asyncio.run(start_services(services))
        yield Stack(services, platform.admin_token, write_key)
    finally:
        for service in services.values():
            service.stop()


class MailboxHandler:
    """An aiosmtpd handler that keeps every message it receives; refuses addresses at bounce.test."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:  # noqa: N802
        """Refuse recipients at bounce.test as an unknown user; accept the rest."""
        if address.endswith("@bounce.test"):
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """Keep the message as it arrived."""
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"


@dataclass
class Mailbox:
    """The real SMTP server of the tests and the messages it received."""

    port: int
    handler: MailboxHandler

    def to(self, address: str) -> list[EmailMessage]:
        """Return the messages sent to an address."""
        return [m for m in self.handler.messages if address in str(m["To"])]


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    """Run a real SMTP server (aiosmtpd) on a free loopback port for the whole session."""
    from aiosmtpd.controller import Controller

    handler = MailboxHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Mailbox(port=port, handler=handler)
    finally:
        controller.stop()
