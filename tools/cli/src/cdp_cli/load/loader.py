"""The load: chunks of whole people written with COPY, each in one transaction, the disk checked
before, and the tables' secondary indexes dropped and built again around a large load."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from cdp_cli.load.drawing import profile_id_of
from cdp_cli.load.rendering import COLUMNS, render_piece

CHUNK_PROFILES = 25_000
# People rendered and copied at a time inside a chunk's transaction, and how many pieces are
# rendered ahead of the one being copied: big enough for COPY to stream, small enough that
# rendering overlaps with copying and memory stays bounded.
PIECE_PROFILES = 2_500
PIECES_AHEAD = 3
# Bytes the base takes on disk (tables and indexes, as pg_total_relation_size counts them),
# measured on a base of 100,000 people with 10 events each: per person and per event.
BYTES_PER_PROFILE = 5_700
BYTES_PER_EVENT = 860
# Room kept free beyond the estimate: WAL, index builds and the database's own growth.
DISK_HEADROOM = 1.25
# A load adding at least this many events, and at least as many as the store holds, drops the
# tables' secondary indexes and builds them again after: one sorted build beats millions of
# single inserts (on 100,000 people with 10 events each, 2x faster in all).
REBUILD_EVENTS_FROM = 1_000_000

# The secondary indexes of the base's tables, exactly as the services' migrations create them.
# Only an index whose definition still reads like this is dropped, so it is built back the same;
# unique indexes stay (they are constraints).
SECONDARY_INDEXES = {
    "profile.profiles_id_hash": "CREATE INDEX profiles_id_hash ON profile.profiles USING btree (id_hash)",
    "profile.profiles_updated": "CREATE INDEX profiles_updated ON profile.profiles USING btree (updated_at, id)",
    "profile.profiles_traits": "CREATE INDEX profiles_traits ON profile.profiles USING gin (traits jsonb_path_ops)",
    "profile.identifiers_profile_id": "CREATE INDEX identifiers_profile_id ON profile.identifiers "
    "USING btree (profile_id)",
    "profile.identifiers_value_hash": "CREATE INDEX identifiers_value_hash ON profile.identifiers "
    "USING btree (value_hash)",
    "profile.events_profile_time": "CREATE INDEX events_profile_time ON profile.events USING btree "
    '(profile_id, "timestamp", seq)',
    "profile.events_profile_name_time": "CREATE INDEX events_profile_name_time ON profile.events USING btree "
    '(profile_id, name, "timestamp")',
    "profile.events_profile_type_time": "CREATE INDEX events_profile_type_time ON profile.events USING btree "
    '(profile_id, type, "timestamp")',
    "segment.known_profiles_traits": "CREATE INDEX known_profiles_traits ON segment.known_profiles "
    "USING gin (traits jsonb_path_ops)",
    "segment.known_profiles_computed": "CREATE INDEX known_profiles_computed ON segment.known_profiles "
    "USING gin (computed jsonb_path_ops)",
}


@dataclass(frozen=True)
class LoadProgress:
    """How far a load is: people done of the total (those already there count as done), rate, time left."""

    done: int
    total: int
    skipped: int
    rate_per_s: float
    eta_s: float | None
    elapsed_s: float


@dataclass(frozen=True)
class LoadResult:
    """What a load wrote and how long it took."""

    profiles: int
    events: int
    skipped: int
    seconds: float
    indexes_rebuilt: bool
    bytes_before: int
    bytes_after: int
    warnings: tuple[str, ...] = ()


class NotEnoughDisk(Exception):
    """The database's disk cannot take the load; the message says how much it needs and has."""


class LoadRefused(Exception):
    """The target cannot take a load (schemas missing, for instance); the message says why."""


def plain_url(database_url: str) -> str:
    """Return a database URL asyncpg understands (without SQLAlchemy's driver suffix)."""
    for prefix in ("postgresql+asyncpg://", "postgres+asyncpg://"):
        if database_url.startswith(prefix):
            return "postgresql://" + database_url[len(prefix) :]
    return database_url


def estimate_bytes(*, profiles: int, events_per_profile: int) -> int:
    """Return the bytes a base of this size takes in the database, tables and indexes."""
    return int(profiles * (BYTES_PER_PROFILE + events_per_profile * BYTES_PER_EVENT))


async def database_directory(connection: asyncpg.Connection) -> Path | None:
    """Return the database's data directory when it is on this machine and can be found."""
    try:
        found = await connection.fetchval("SHOW data_directory")
    except asyncpg.PostgresError:
        found = None
    return _first_existing([found, "/var/lib/postgresql", "/var/lib/pgsql"])


def _first_existing(candidates: Sequence[str | None]) -> Path | None:
    """Return the first of these paths that exists here."""
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


async def check_disk(
    *,
    connection: asyncpg.Connection,
    database_url: str,
    profiles: int,
    events_per_profile: int,
    data_dir: Path | None,
) -> str | None:
    """Refuse a load the database's disk cannot take; return a note when the disk could not be checked."""
    host = urlsplit(plain_url(database_url)).hostname or "localhost"
    directory = data_dir or (
        await database_directory(connection) if host in ("127.0.0.1", "localhost", "::1") else None
    )
    if directory is None:
        return "the database's disk is not on this machine (or not found): free space not checked"
    needed = int(estimate_bytes(profiles=profiles, events_per_profile=events_per_profile) * DISK_HEADROOM)
    free = shutil.disk_usage(directory).free
    if needed > free:
        most = int(free / DISK_HEADROOM / (BYTES_PER_PROFILE + events_per_profile * BYTES_PER_EVENT))
        raise NotEnoughDisk(
            f"{profiles:,} people with {events_per_profile} events each need about {_size(needed)} "
            f"(with {round((DISK_HEADROOM - 1) * 100)}% headroom) but {directory} has {_size(free)} free: "
            f"load at most {most:,} people, or free space first"
        )
    return None


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


BASE_TABLES = (
    ("profile", "profiles"),
    ("profile", "identifiers"),
    ("profile", "events"),
    ("profile", "orders"),
    ("segment", "known_profiles"),
)


async def table_sizes(connection: asyncpg.Connection) -> dict[str, dict[str, int]]:
    """Return the bytes of each table of the base: the table, its indexes and all (TOAST included)."""
    rows = await connection.fetch(
        """
        SELECT n.nspname || '.' || c.relname AS name, pg_table_size(c.oid) AS heap,
               pg_indexes_size(c.oid) AS indexes, pg_total_relation_size(c.oid) AS total
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND (n.nspname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
         ORDER BY 1
        """,
        [s for s, _ in BASE_TABLES],
        [t for _, t in BASE_TABLES],
    )
    return {r["name"]: {"table": r["heap"], "indexes": r["indexes"], "total": r["total"]} for r in rows}


async def base_bytes(connection: asyncpg.Connection) -> int:
    """Return the bytes profile's and segment's tables of the base take, indexes and TOAST included."""
    return sum(size["total"] for size in (await table_sizes(connection)).values())


async def _require_schemas(connection: asyncpg.Connection) -> None:
    found = {
        (r["table_schema"], r["table_name"])
        for r in await connection.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('profile', 'segment')"
        )
    }
    missing = sorted(f"{s}.{t}" for s, t in set(BASE_TABLES) - found)
    if missing:
        raise LoadRefused(
            f"the database has no {', '.join(missing)}: start the services once (they migrate their schemas)"
        )


async def _definitions(connection: asyncpg.Connection) -> list[str]:
    rows = await connection.fetch("SELECT key FROM profile.computed_definitions ORDER BY key")
    return [r["key"] for r in rows]


async def _held_indexes(connection: asyncpg.Connection) -> dict[str, str]:
    rows = await connection.fetch(
        "SELECT schemaname || '.' || indexname AS name, indexdef FROM pg_indexes"
        " WHERE (schemaname, tablename) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [s for s, _ in BASE_TABLES],
        [t for _, t in BASE_TABLES],
    )
    return {r["name"]: r["indexdef"] for r in rows}


async def restore_indexes(database_url: str) -> list[str]:
    """Build the secondary indexes a load dropped and did not build again (it was cut off); return them."""
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        held = await _held_indexes(connection)
    finally:
        await connection.close()
    missing = [name for name in SECONDARY_INDEXES if name not in held]
    await _build_indexes(database_url, missing)
    return missing


async def _build_indexes(database_url: str, names: Sequence[str]) -> None:
    """Build indexes, one table's at a time on each of two connections."""
    if not names:
        return
    by_table: dict[str, list[str]] = {}
    for name in names:
        by_table.setdefault(SECONDARY_INDEXES[name].split(" ON ", 1)[1].split(" ", 1)[0], []).append(name)

    async def build(tables: list[list[str]]) -> None:
        connection = await asyncpg.connect(plain_url(database_url))
        try:
            await connection.execute("SET maintenance_work_mem = '256MB'")
            for indexes in tables:
                for name in indexes:
                    definition = SECONDARY_INDEXES[name].replace(
                        "CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1
                    )
                    await connection.execute(definition)
        finally:
            await connection.close()

    # Two halves that take about as long (measured on 100,000 people): the event store's three
    # B-trees with the identifiers', and the profiles' GIN index with the rest.
    first = [by_table.pop(t) for t in ("profile.events", "profile.identifiers") if t in by_table]
    await asyncio.gather(build(first), build(list(by_table.values())))


async def _drop_indexes(connection: asyncpg.Connection) -> list[str]:
    """Drop the secondary indexes that read exactly as the loader builds them again; return their names."""
    held = await _held_indexes(connection)
    dropped = [name for name, definition in SECONDARY_INDEXES.items() if held.get(name) == definition]
    for name in dropped:
        await connection.execute(f"DROP INDEX IF EXISTS {name}")
    return dropped


async def _estimated_rows(connection: asyncpg.Connection, table: str) -> int:
    """Return the planner's row count of a table, or count up to REBUILD_EVENTS_FROM when it has none."""
    estimate: int = await connection.fetchval(
        "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass", table
    )
    if estimate >= 0:
        return estimate
    counted: int = await connection.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT $1) s",  # noqa: S608 - one of BASE_TABLES
        REBUILD_EVENTS_FROM,
    )
    return counted


async def _existing(connection: asyncpg.Connection, ids: list[str]) -> set[str]:
    rows = await connection.fetch("SELECT id FROM profile.profiles WHERE id = ANY($1::text[])", ids)
    return {r["id"] for r in rows}


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2)))


@dataclass
class _Tally:
    """What the writers have done so far."""

    started: float
    total: int
    loaded: int = 0
    events: int = 0
    skipped: int = 0

    def report(self) -> LoadProgress:
        elapsed = time.perf_counter() - self.started
        rate = self.loaded / elapsed if elapsed > 0 else 0.0
        left = self.total - self.loaded - self.skipped
        return LoadProgress(
            done=self.loaded + self.skipped,
            total=self.total,
            skipped=self.skipped,
            rate_per_s=rate,
            eta_s=left / rate if rate > 0 else (0.0 if left == 0 else None),
            elapsed_s=elapsed,
        )


@dataclass(frozen=True)
class _Generation:
    """What every person of a load is drawn from."""

    seed: int
    events_per_profile: int
    years: float
    now: datetime
    hash_key: str


async def load_base(
    *,
    database_url: str,
    profiles: int,
    hash_key: str,
    events_per_profile: int = 10,
    years: float = 2.0,
    seed: int = 0,
    now: datetime | None = None,
    progress: Callable[[LoadProgress], None] | None = None,
    check_free_disk: bool = True,
    data_dir: Path | None = None,
    rebuild_indexes: bool | None = None,
    workers: int | None = None,
    writers: int = 2,
) -> LoadResult:
    """Load `profiles` generated people into profile's and segment's tables; those already there are kept.

    `hash_key` must be the services' `CDP_HASH_KEY` (identifiers are found by keyed hash on
    erasure). `now` anchors the generated times (default: this hour); a rerun with the same
    seed writes only the people missing, whatever `now` is. `rebuild_indexes` drops the
    tables' secondary indexes for the load and builds them again after (default: when the
    load adds at least REBUILD_INDEXES_FROM events and at least doubles the event store).
    """
    if profiles < 0 or events_per_profile < 1 or years <= 0 or writers < 1:
        raise LoadRefused("profiles must be >= 0, events per profile >= 1, years > 0 and writers >= 1")
    generation = _Generation(
        seed=seed,
        events_per_profile=events_per_profile,
        years=years,
        now=now or datetime.now(UTC).replace(minute=0, second=0, microsecond=0),
        hash_key=hash_key,
    )
    tally = _Tally(started=time.perf_counter(), total=profiles)
    warnings: list[str] = []
    restored = await restore_indexes(database_url)
    if restored:
        warnings.append(f"built again the indexes an interrupted load left out: {', '.join(restored)}")
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        await _require_schemas(connection)
        defined = await _definitions(connection)
        if defined:
            warnings.append(
                "user-defined computed traits count none of the loaded events until defined again: "
                + ", ".join(defined)
            )
        bytes_before = await base_bytes(connection)
        if check_free_disk:
            note = await check_disk(
                connection=connection,
                database_url=database_url,
                profiles=profiles,
                events_per_profile=events_per_profile,
                data_dir=data_dir,
            )
            if note:
                warnings.append(note)
        people = await _estimated_rows(connection, "profile.profiles")
        stored = await _estimated_rows(connection, "profile.events")
        # Those already there are mostly the first ones asked for (one seed is the usual case).
        adding = max(profiles - people, 0) * events_per_profile
        rebuild = (
            rebuild_indexes if rebuild_indexes is not None else adding >= max(REBUILD_EVENTS_FROM, stored)
        )
        dropped: list[str] = []
        try:
            if rebuild:
                dropped = await _drop_indexes(connection)
            await _write_all(
                database_url, generation, tally, progress, workers or _default_workers(), writers
            )
        finally:
            if dropped:
                await _build_indexes(database_url, dropped)
        if tally.loaded:
            for schema, table in BASE_TABLES:
                await connection.execute(f"ANALYZE {schema}.{table}")
        bytes_after = await base_bytes(connection)
    finally:
        await connection.close()
    return LoadResult(
        profiles=tally.loaded,
        events=tally.events,
        skipped=tally.skipped,
        seconds=time.perf_counter() - tally.started,
        indexes_rebuilt=bool(dropped),
        bytes_before=bytes_before,
        bytes_after=bytes_after,
        warnings=tuple(warnings),
    )


async def _write_all(
    database_url: str,
    generation: _Generation,
    tally: _Tally,
    progress: Callable[[LoadProgress], None] | None,
    workers: int,
    writers: int,
) -> None:
    """Write every chunk: `writers` connections take the next chunk in turn, renderers in `workers` processes."""
    chunks = iter(range(0, tally.total, CHUNK_PROFILES))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"))

    async def writer() -> None:
        connection = await asyncpg.connect(plain_url(database_url))
        try:
            await connection.execute("SET synchronous_commit = off")
            for start in chunks:
                chunk = range(start, min(start + CHUNK_PROFILES, tally.total))
                ids = {profile_id_of(seed=generation.seed, index=i): i for i in chunk}
                there = await _existing(connection, list(ids))
                missing = [i for pid, i in ids.items() if pid not in there]
                tally.skipped += len(chunk) - len(missing)
                if missing:
                    people, events = await _write_chunk(connection, pool, missing, generation)
                    tally.loaded += people
                    tally.events += events
                if progress is not None:
                    progress(tally.report())
        finally:
            await connection.close()

    try:
        await asyncio.gather(*(writer() for _ in range(writers)))
    finally:
        pool.shutdown(cancel_futures=True)


async def _write_chunk(
    connection: asyncpg.Connection, pool: ProcessPoolExecutor, indexes: list[int], generation: _Generation
) -> tuple[int, int]:
    """Render a chunk's people in the worker processes, a few pieces ahead, and copy them in one transaction."""
    loop = asyncio.get_running_loop()
    pieces = [indexes[s : s + PIECE_PROFILES] for s in range(0, len(indexes), PIECE_PROFILES)]
    pending = iter(pieces)
    rendering: list[asyncio.Future[tuple[int, int, dict[str, bytes]]]] = []

    def render_next() -> None:
        piece = next(pending, None)
        if piece is not None:
            rendering.append(loop.run_in_executor(pool, _render, generation, piece))

    for _ in range(PIECES_AHEAD):
        render_next()
    people = events = 0
    try:
        async with connection.transaction():
            while rendering:
                count, written, rows = await rendering.pop(0)
                render_next()
                for schema, table in BASE_TABLES:
                    await connection.copy_to_table(
                        table, schema_name=schema, columns=list(COLUMNS[table]), source=_slices(rows[table])
                    )
                people += count
                events += written
    finally:
        for future in rendering:
            future.cancel()
    return people, events


def _render(generation: _Generation, indexes: list[int]) -> tuple[int, int, dict[str, bytes]]:
    return render_piece(
        seed=generation.seed,
        indexes=indexes,
        events_per_profile=generation.events_per_profile,
        years=generation.years,
        now=generation.now,
        hash_key=generation.hash_key,
    )


async def _slices(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """Yield rendered rows to COPY a megabyte at a time."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


def describe(progress: LoadProgress) -> str:
    """Return a progress report in one line: done of total, rate, time left."""
    eta = "?" if progress.eta_s is None else str(timedelta(seconds=int(progress.eta_s)))
    return (
        f"{progress.done:,}/{progress.total:,} people ({progress.skipped:,} already there), "
        f"{progress.rate_per_s:,.0f}/s, {timedelta(seconds=int(progress.elapsed_s))} elapsed, eta {eta}"
    )
