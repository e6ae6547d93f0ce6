"""Tables and queries of the ingest service: sources with their write keys, and issued tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

metadata = sa.MetaData()

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("write_key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("disabled_at", sa.DateTime(timezone=True)),
    sa.Column("rate_limit_per_s", sa.Float),
    sa.Column("rate_limit_burst", sa.Integer),
    sa.Column("rotated_at", sa.DateTime(timezone=True)),
)

tracking_plans = sa.Table(
    "tracking_plans",
    metadata,
    sa.Column("source_id", sa.Text, sa.ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("document", postgresql.JSONB, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

plan_violations = sa.Table(
    "plan_violations",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("source_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("event_name", sa.Text),
    sa.Column("path", sa.Text),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("refused", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

issued_tokens = sa.Table(
    "issued_tokens",
    metadata,
    sa.Column("token_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("scopes", postgresql.ARRAY(sa.Text), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


async def insert_source(
    *, session: AsyncSession, source_id: str, name: str, write_key_hash: str
) -> dict[str, Any]:
    """Insert a source; an existing write key hash keeps its source."""
    statement = (
        postgresql.insert(sources)
        .values(id=source_id, name=name, write_key_hash=write_key_hash)
        .on_conflict_do_nothing(index_elements=["write_key_hash"])
    )
    await session.execute(statement)
    row = (
        (await session.execute(sa.select(sources).where(sources.c.write_key_hash == write_key_hash)))
        .mappings()
        .one()
    )
    return _source_document(row)


def _source_document(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "created_at": _iso(row["created_at"]),
        "disabled_at": _iso(row["disabled_at"]),
        "rotated_at": _iso(row["rotated_at"]),
        "rate_limit_per_s": row["rate_limit_per_s"],
        "rate_limit_burst": row["rate_limit_burst"],
    }


async def find_enabled_source(*, session: AsyncSession, write_key_hash: str) -> dict[str, Any] | None:
    """Return the enabled source that owns a write key, with its limits and tracking plan."""
    found = (
        (
            await session.execute(
                sa.select(
                    sources.c.id,
                    sources.c.rate_limit_per_s,
                    sources.c.rate_limit_burst,
                    tracking_plans.c.document.label("plan"),
                )
                .select_from(sources.outerjoin(tracking_plans, tracking_plans.c.source_id == sources.c.id))
                .where(sources.c.write_key_hash == write_key_hash, sources.c.disabled_at.is_(None))
            )
        )
        .mappings()
        .first()
    )
    return dict(found) if found is not None else None


async def get_source(*, session: AsyncSession, source_id: str) -> dict[str, Any] | None:
    """Return one source, or None."""
    row = (await session.execute(sa.select(sources).where(sources.c.id == source_id))).mappings().first()
    return _source_document(row) if row is not None else None


async def update_source(
    *, session: AsyncSession, source_id: str, values: dict[str, Any]
) -> dict[str, Any] | None:
    """Change columns of a source and return it, or None when there is no such source."""
    row = (
        (
            await session.execute(
                sources.update().where(sources.c.id == source_id).values(**values).returning(sources)
            )
        )
        .mappings()
        .first()
    )
    return _source_document(row) if row is not None else None


async def put_tracking_plan(*, session: AsyncSession, source_id: str, document: dict[str, Any]) -> None:
    """Store (or replace) a source's tracking plan."""
    statement = postgresql.insert(tracking_plans).values(source_id=source_id, document=document)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["source_id"], set_={"document": document, "updated_at": sa.func.now()}
        )
    )


async def get_tracking_plan(*, session: AsyncSession, source_id: str) -> dict[str, Any] | None:
    """Return a source's tracking plan document with its update time."""
    row = (
        (await session.execute(sa.select(tracking_plans).where(tracking_plans.c.source_id == source_id)))
        .mappings()
        .first()
    )
    if row is None:
        return None
    return {**row["document"], "updated_at": _iso(row["updated_at"])}


async def insert_violations(*, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Record tracking-plan violations."""
    if rows:
        await session.execute(plan_violations.insert(), rows)


async def list_violations(
    *, session: AsyncSession, source_id: str, before: int | None, limit: int
) -> list[dict[str, Any]]:
    """Return a source's violations, newest first, before a cursor position."""
    query = (
        sa.select(plan_violations)
        .where(plan_violations.c.source_id == source_id)
        .order_by(plan_violations.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(plan_violations.c.id < before)
    return [
        {
            "id": row["id"],
            "kind": row["kind"],
            "type": row["event_type"],
            "event": row["event_name"],
            "path": row["path"],
            "rule": row["rule"],
            "message_id": row["message_id"],
            "refused": row["refused"],
            "at": _iso(row["created_at"]),
        }
        for row in (await session.execute(query)).mappings()
    ]


async def list_sources(*, session: AsyncSession, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Return sources ordered by id, after a cursor position."""
    query = sa.select(sources).order_by(sources.c.id).limit(limit)
    if after is not None:
        query = query.where(sources.c.id > after)
    return [_source_document(r) for r in (await session.execute(query)).mappings()]


async def insert_token(
    *,
    session: AsyncSession,
    token_id: str,
    name: str,
    token_hash: str,
    scopes: list[str],
    expires_at: datetime | None,
) -> dict[str, Any]:
    """Insert an issued token (its hash only)."""
    row = (
        (
            await session.execute(
                issued_tokens.insert()
                .values(
                    token_id=token_id, name=name, token_hash=token_hash, scopes=scopes, expires_at=expires_at
                )
                .returning(issued_tokens)
            )
        )
        .mappings()
        .one()
    )
    return token_document(row)


def token_document(row: Any) -> dict[str, Any]:
    """Return the API form of an issued token (never its secret or hash)."""
    return {
        "id": row["token_id"],
        "name": row["name"],
        "scopes": list(row["scopes"]),
        "expires_at": _iso(row["expires_at"]),
        "created_at": _iso(row["created_at"]),
        "revoked_at": _iso(row["revoked_at"]),
    }


async def revoke_token(*, session: AsyncSession, token_id: str) -> tuple[dict[str, Any] | None, bool]:
    """Mark a token revoked; return it and whether this call revoked it."""
    revoked = (
        (
            await session.execute(
                issued_tokens.update()
                .where(issued_tokens.c.token_id == token_id, issued_tokens.c.revoked_at.is_(None))
                .values(revoked_at=sa.func.now())
                .returning(issued_tokens)
            )
        )
        .mappings()
        .first()
    )
    if revoked is not None:
        return token_document(revoked), True
    row = (
        (await session.execute(sa.select(issued_tokens).where(issued_tokens.c.token_id == token_id)))
        .mappings()
        .first()
    )
    return (token_document(row) if row is not None else None), False


async def list_tokens(*, session: AsyncSession, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Return issued tokens ordered by id, after a cursor position."""
    query = sa.select(issued_tokens).order_by(issued_tokens.c.token_id).limit(limit)
    if after is not None:
        query = query.where(issued_tokens.c.token_id > after)
    return [token_document(r) for r in (await session.execute(query)).mappings()]
