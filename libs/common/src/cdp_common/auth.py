"""Bearer tokens with scopes: hashing, the replica of cdp.tokens.v1, and the FastAPI guard.

Tokens are created and revoked by ingest; every service keeps a replica of their
hashes from cdp.tokens.v1 and checks requests against it. The bootstrap admin token
from `CDP_ADMIN_TOKEN` has every scope.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from fastapi import Request
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_common.db import api_tokens_table
from cdp_common.envelope import Envelope
from cdp_common.events import TokenCreated, TokenRevoked
from cdp_common.web import ApiError

SCOPES = frozenset(
    {
        "sources:admin",
        "sources:write",
        "tokens:admin",
        "profiles:read",
        "profiles:write",
        "segments:read",
        "segments:write",
        "campaigns:read",
        "campaigns:write",
        "consents:read",
        "consents:write",
        "privacy:admin",
    }
)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do."""

    token_id: str
    scopes: frozenset[str]
    is_admin: bool = False

    def allows(self, scope: str) -> bool:
        """Whether the principal holds a scope."""
        return self.is_admin or scope in self.scopes


def hash_token(token: str) -> str:
    """Return the SHA-256 of a token, the only form in which tokens are stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """Return a new token id and the secret token that carries it."""
    token_id = uuid.uuid4().hex[:16]
    return token_id, f"cdp_{token_id}_{secrets.token_urlsafe(32)}"


async def apply_token_created(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
    """Store a created token's hash and scopes in this service's replica."""
    data: TokenCreated = envelope.data
    statement = postgresql.insert(api_tokens_table).values(
        token_id=data.token_id,
        name=data.name,
        token_hash=data.token_hash,
        scopes=list(data.scopes),
        expires_at=data.expires_at,
    )
    await session.execute(statement.on_conflict_do_nothing(index_elements=["token_id"]))


async def apply_token_revoked(*, session: AsyncSession, envelope: Envelope[Any]) -> None:
    """Mark a token revoked in this service's replica."""
    data: TokenRevoked = envelope.data
    await session.execute(
        api_tokens_table.update()
        .where(api_tokens_table.c.token_id == data.token_id, api_tokens_table.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now(), updated_at=sa.func.now())
    )


async def authenticate(
    *, session_factory: async_sessionmaker[AsyncSession], admin_token: str, authorization: str | None
) -> Principal:
    """Resolve an Authorization header to a principal, or raise a 401."""
    if not authorization:
        raise ApiError(
            status=401,
            code="unauthorized",
            message="an Authorization: Bearer <token> header is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            status=401,
            code="unauthorized",
            message="the Authorization header must be 'Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return Principal(token_id="admin", scopes=SCOPES, is_admin=True)  # noqa: S106
    async with session_factory() as session:
        row = (
            await session.execute(
                sa.select(
                    api_tokens_table.c.token_id, api_tokens_table.c.scopes, api_tokens_table.c.expires_at
                ).where(
                    api_tokens_table.c.token_hash == hash_token(token),
                    api_tokens_table.c.revoked_at.is_(None),
                )
            )
        ).first()
    if row is None or (row.expires_at is not None and row.expires_at <= datetime.now(UTC)):
        raise ApiError(
            status=401,
            code="invalid_token",
            message="the token is unknown, expired or revoked",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return Principal(token_id=row.token_id, scopes=frozenset(row.scopes))


GuardT = TypeVar("GuardT", bound=Callable[..., Awaitable[Principal]])
_SCOPE_OF_GUARD: dict[Callable[..., Any], str] = {}


def guards_scope(scope: str) -> Callable[[GuardT], GuardT]:
    """Mark a FastAPI dependency as the guard of a scope, which the OpenAPI document names."""

    def mark(guard: GuardT) -> GuardT:
        _SCOPE_OF_GUARD[guard] = scope
        return guard

    return mark


def guarded_scope(guard: Callable[..., Any] | None) -> str | None:
    """Return the scope a guard admits, when it was marked with guards_scope."""
    return _SCOPE_OF_GUARD.get(guard) if guard is not None else None


def require_scope(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """Return a FastAPI dependency that admits only principals holding a scope."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def guard(request: Request) -> Principal:
        runtime = request.app.state.runtime
        principal = await authenticate(
            session_factory=runtime.session_factory,
            admin_token=runtime.settings.admin_token.get_secret_value(),
            authorization=request.headers.get("authorization"),
        )
        if not principal.allows(scope):
            raise ApiError(
                status=403,
                code="forbidden",
                message=f"the token lacks the scope {scope!r}",
                details={"required_scope": scope},
            )
        return principal

    return guards_scope(scope)(guard)
