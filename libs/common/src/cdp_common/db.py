"""The async engine, session factory and the tables every service has in its schema."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

platform_metadata = sa.MetaData()

outbox_table = sa.Table(
    "outbox",
    platform_metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("published_at", sa.DateTime(timezone=True)),
)
sa.Index(
    "outbox_unpublished",
    outbox_table.c.id,
    postgresql_where=outbox_table.c.published_at.is_(None),
)

processed_events_table = sa.Table(
    "processed_events",
    platform_metadata,
    sa.Column("consumer", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
# For the pruning of records older than the retention window (cdp_common.retention).
sa.Index("processed_events_age", processed_events_table.c.processed_at, postgresql_using="brin")

api_tokens_table = sa.Table(
    "api_tokens",
    platform_metadata,
    sa.Column("token_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("scopes", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)


def json_text(value: Any) -> str:
    """Serialise a JSON column's value: fast for the usual documents, the standard library for the rest."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        # Integers beyond 64 bits and other rarities; the standard library decides as before.
        return json.dumps(value)


# A run of 19 digits or more may be an integer beyond 64 bits, which the fast parser would
# turn into an inexact float. Found by turning every digit into "0" and looking for 19 zeros:
# under 1 µs for a 550-byte message, where a regular expression took 7.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19


def has_long_digit_run(text: str | bytes) -> bool:
    """Whether JSON text holds a run of 19 digits or more (perhaps an integer beyond 64 bits)."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return _LONG_RUN in raw.translate(_DIGITS_AS_ZERO)


def json_value(text: str | bytes) -> Any:
    """Read JSON exactly: fast for the usual documents, the standard library for long numbers."""
    if not has_long_digit_run(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # what the standard library may still read, or refuse with its own message
    return json.loads(text)


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _connect_args(database_url: str, schema: str) -> dict[str, Any]:
    """Return the driver's connection arguments: the schema, and no TLS on the loopback interface.

    The driver negotiates TLS whenever the server offers it; on the loopback interface that
    protects nothing and costs CPU on both ends for every row. A URL that names an `ssl` or
    `sslmode` keeps its choice.
    """
    args: dict[str, Any] = {"server_settings": {"search_path": schema, "application_name": f"cdp-{schema}"}}
    url = make_url(database_url)
    if url.host in _LOOPBACK_HOSTS and not {"ssl", "sslmode"} & set(url.query):
        args["ssl"] = False
    return args


def create_engine(*, database_url: str, schema: str, pool_size: int = 10) -> AsyncEngine:
    """Create the service's engine; every connection works in the service's own schema."""
    engine = create_async_engine(
        database_url,
        json_serializer=json_text,
        json_deserializer=json_value,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args=_connect_args(database_url, schema),
    )
    sa.event.listen(engine.sync_engine, "checkout", _refuse_closed_connection)
    return engine


def _refuse_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Make the pool replace a pooled connection the server has closed (a restart, a terminated backend).

    The driver notices the closed socket by itself, so the check costs no round trip; the
    pool's own pre-ping would cost three (BEGIN, a query, ROLLBACK) on every checkout.
    """
    if dbapi_connection.driver_connection.is_closed():
        raise sa.exc.DisconnectionError("the database closed this pooled connection")


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Create the session factory the service's unit of work uses."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """Open a session in a transaction that commits on success and rolls back on error."""
    async with factory() as session, session.begin():
        yield session


T = TypeVar("T")


async def once_per_transaction(session: AsyncSession, key: str, load: Callable[[], Awaitable[T]]) -> T:
    """Return what `load` reads, read once in the session's current transaction and kept for the rest of it.

    For what a consumer's poll or a request reads again and again (definitions, rules):
    every event of one transaction is then applied against the same reading.
    """
    transaction = session.get_transaction()
    held = session.info.get(key)
    if held is not None and held[0] is transaction:
        return held[1]  # type: ignore[no-any-return]
    value = await load()
    session.info[key] = (transaction, value)
    return value


def forget_for_transaction(session: AsyncSession, key: str) -> None:
    """Drop what `once_per_transaction` kept under `key`, after the transaction changed it."""
    session.info.pop(key, None)


async def record_processed(*, session: AsyncSession, consumer: str, event_id: str) -> bool:
    """Record that a consumer handled an event; False when it already had (a redelivery)."""
    statement = (
        postgresql.insert(processed_events_table)
        .values(consumer=consumer, event_id=event_id)
        .on_conflict_do_nothing()
        .returning(processed_events_table.c.event_id)
    )
    result = await session.execute(statement)
    return result.first() is not None


# One statement whatever the number of ids, so it is prepared once per connection.
_RECORD_PROCESSED_MANY = sa.text(
    "INSERT INTO processed_events (consumer, event_id)"
    " SELECT :consumer, unnest(CAST(:event_ids AS text[]))"
    " ON CONFLICT DO NOTHING RETURNING event_id"
)


async def record_processed_many(*, session: AsyncSession, consumer: str, event_ids: list[str]) -> set[str]:
    """Record many handled events at once; return the ids not seen before."""
    rows = await session.execute(
        _RECORD_PROCESSED_MANY, {"consumer": consumer, "event_ids": list(dict.fromkeys(event_ids))}
    )
    return set(rows.scalars())
