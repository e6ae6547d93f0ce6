"""FastAPI dependencies every service's routers use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


def get_session_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    """Return the service's session factory."""
    factory: async_sessionmaker[AsyncSession] = request.app.state.runtime.session_factory
    return factory


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Yield a session in a transaction that commits when the request handler returns."""
    async with get_session_factory(request)() as session, session.begin():
        yield session


# "function": the transaction commits before the answer is sent, so a client told 200 or 201
# finds its change committed (FastAPI's default would commit after the answer went out).
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """Yield a session for a route that reads with a single statement: the statement stands alone,
    so the request costs no BEGIN and COMMIT round trips."""
    async with get_session_factory(request)() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]
