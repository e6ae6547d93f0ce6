"""The computed traits segment asks profile for (event conditions), and how they come into the copy.

main.py passes a `ComputedTraitsClient`; tests pass their own fake through the same seam.
A request is recorded in the segment's transaction (`pending`), and the watch (a periodic job,
`cdp_segment.jobs`, every `computed_trait_poll_s`) pushes it: profile accepts it (`defined`, building it as a job of its
own), says when it is `ready`, and serves its values page by page. Profile publishes no
message for the values its backfill wrote, so segment copies them (`computed_trait_fill`
job, in `cdp_segment.jobs`); once they are in the copy the trait is `ready` here too, and the
build jobs of the segments that waited for it (parked, holding no worker) are released.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from cdp_common.jobs import FINISHED, get_job, new_job_id, submit_job
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_segment import store
from cdp_segment.domain.rules import parse_rule
from cdp_segment.store import builds, claims

logger = logging.getLogger(__name__)

FILL_JOB = "computed_trait_fill"


class ComputedTraitRefused(Exception):
    """Profile answered that a computed-trait definition is not valid (a 4xx other than 409)."""


@dataclass(frozen=True)
class TraitStatus:
    """What profile says of a computed trait: `building` or `ready`, and its job's progress."""

    status: str
    done: int = 0
    total: int | None = None


@dataclass(frozen=True)
class ValuesPage:
    """A page of a computed trait's values by profile id, and the id to carry on after (None at the end)."""

    items: list[dict[str, Any]]
    next: str | None


class ComputedTraitsClient(Protocol):
    """Profile's computed-trait API."""

    async def define(self, spec: dict[str, Any]) -> str | None:
        """Define a computed trait; return the id of profile's job that builds it (None when it existed)."""
        ...

    async def status(self, key: str) -> TraitStatus | None:
        """Return a computed trait's status, or None when profile does not know it."""
        ...

    async def values(self, key: str, *, after: str | None, limit: int) -> ValuesPage:
        """Return a page of the trait's values of active profiles, in profile id order."""
        ...

    async def claim(self, spec: dict[str, Any], owner: str) -> None:
        """Define a computed trait, or add an owner to the same definition."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Let go of an owner of a computed trait (done too when profile does not know the trait)."""
        ...


class HttpComputedTraitsClient:
    """Profile's `/v1/computed-traits` over HTTP."""

    def __init__(self, *, base_url: str, admin_token: str, timeout_s: float = 5.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_token}"}
        self._timeout_s = timeout_s

    async def define(self, spec: dict[str, Any]) -> str | None:
        """Create the computed trait (202 with profile's job); one that exists already (409) counts as done."""
        response = await self._post(spec)
        if response.status_code == 409:
            return None
        if response.status_code in (200, 201, 202):
            body = response.json()
            job = body.get("job") or {}
            trait = body.get("computed_trait") or {}
            job_id = job.get("id") or trait.get("job_id")
            return str(job_id) if job_id else None
        # 404 and 405: profile does not serve the endpoint yet; try again later.
        if 400 <= response.status_code < 500 and response.status_code not in (404, 405):
            raise ComputedTraitRefused(f"{response.status_code}: {response.text[:500]}")
        raise httpx.HTTPStatusError(
            f"profile answered {response.status_code}", request=response.request, response=response
        )

    async def claim(self, spec: dict[str, Any], owner: str) -> None:
        """Ask for the computed trait with an owner: created (202) or the owner added (200)."""
        response = await self._post({**spec, "owner": owner})
        if response.status_code not in (200, 202):
            raise httpx.HTTPStatusError(
                f"profile answered {response.status_code}: {response.text[:300]}",
                request=response.request,
                response=response,
            )

    async def release(self, key: str, owner: str) -> None:
        """Release an owner; a trait profile does not know (404) has no owner to release."""
        async with httpx.AsyncClient(timeout=self._timeout_s) as client:
            response = await client.delete(
                f"{self._base_url}/v1/computed-traits/{key}/owners/{owner}", headers=self._headers
            )
        if response.status_code != 404:
            response.raise_for_status()

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(timeout=self._timeout_s) as client:
            return await client.post(f"{self._base_url}/v1/computed-traits", json=body, headers=self._headers)

    async def status(self, key: str) -> TraitStatus | None:
        """Return `GET /v1/computed-traits/{key}` as a status; None on 404."""
        async with httpx.AsyncClient(timeout=self._timeout_s) as client:
            response = await client.get(f"{self._base_url}/v1/computed-traits/{key}", headers=self._headers)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body = response.json()
        job = body.get("job") or {}
        return TraitStatus(
            status=str(body.get("status", "ready")), done=int(job.get("done") or 0), total=job.get("total")
        )

    async def values(self, key: str, *, after: str | None, limit: int) -> ValuesPage:
        """Return one page of `GET /v1/computed-traits/{key}/values`."""
        params: dict[str, str | int] = {"limit": limit}
        if after:
            params["after"] = after
        async with httpx.AsyncClient(timeout=max(self._timeout_s, 30.0)) as client:
            response = await client.get(
                f"{self._base_url}/v1/computed-traits/{key}/values", params=params, headers=self._headers
            )
        response.raise_for_status()
        body = response.json()
        return ValuesPage(items=list(body["items"]), next=body.get("next"))


@dataclass(frozen=True)
class TraitProgress:
    """How far one computed trait is from being in the copy: its state and the work done of the work known."""

    state: str  # waiting (for profile to accept it), building, filling, ready, refused
    done: int = 0
    total: int = 0
    error: str | None = None


@dataclass
class _Decision:
    request: builds.TraitRequest
    status: str | None = None
    error: str | None = None
    profile_job_id: str | None = None
    fill_expected: int | None = None
    forget_fill: str | None = None


_ASK_ERRORS = (httpx.HTTPError, OSError, ValueError, KeyError)


async def _ask_profile(client: ComputedTraitsClient, decision: _Decision) -> TraitProgress:
    """Ask profile what a request needs (define it, or how far its building is); no database work here."""
    request = decision.request
    status = request.status
    if status in ("pending", "refused"):
        try:
            decision.profile_job_id = await client.define(request.spec)
        except ComputedTraitRefused as exc:
            decision.status, decision.error = "refused", str(exc)
            logger.error("profile refused a computed trait", extra={"key": request.key, "error": str(exc)})
            return TraitProgress(state="refused", error=str(exc))
        except _ASK_ERRORS as exc:
            decision.status, decision.error = "pending", f"{type(exc).__name__}: {exc}"[:500]
            return TraitProgress(state="waiting", error=decision.error)
        decision.status = "defined"
    try:
        found = await client.status(request.key)
    except _ASK_ERRORS as exc:
        return TraitProgress(state="building", error=f"{type(exc).__name__}: {exc}"[:500])
    if found is None:
        # Profile does not know the trait (it was never stored there, or is gone): define it again.
        decision.status, decision.error = "pending", "profile does not know the computed trait"
        return TraitProgress(state="waiting", error=decision.error)
    total = found.total or found.done
    if found.status != "ready":
        # The fill that follows goes over about as many values as profile's job goes over profiles.
        return TraitProgress(state="building", done=found.done, total=2 * total)
    decision.fill_expected = total
    return TraitProgress(state="filling", done=total, total=2 * total)


async def advance_traits(
    *, session: AsyncSession, client: ComputedTraitsClient, keys: Collection[str] | None = None
) -> dict[str, TraitProgress]:
    """Move computed-trait requests on (these keys, or every one not ready) and return their progress.

    Pending ones are defined in profile; defined ones whose building profile has finished get
    the job that copies their values (one per trait). Profile is asked before anything is
    written, so no row stays locked while it answers.
    """
    decisions = [_Decision(r) for r in await builds.trait_requests(session=session, keys=keys)]
    progress: dict[str, TraitProgress] = {}
    for decision in decisions:
        request = decision.request
        if request.status == "ready":
            progress[request.key] = TraitProgress(state="ready")
        elif request.fill_job_id is not None:
            fill = await get_job(session=session, job_id=request.fill_job_id)
            if fill is None or fill["state"] in FINISHED - {"succeeded"}:
                decision.forget_fill = request.fill_job_id
                progress[request.key] = TraitProgress(state="filling", error=(fill or {}).get("error"))
            else:
                expected = int(fill["params"].get("expected") or 0)
                progress[request.key] = TraitProgress(
                    state="filling",
                    done=expected + int(fill["done"]),
                    total=expected + int(fill["total"] or expected),
                )
        else:
            progress[request.key] = await _ask_profile(client, decision)
    for decision in decisions:
        key = decision.request.key
        if decision.status is not None:
            await store.mark_computed_trait(
                session=session,
                key=key,
                status=decision.status,
                error=decision.error,
                profile_job_id=decision.profile_job_id,
            )
        if decision.forget_fill is not None:
            await builds.forget_fill(session=session, key=key, job_id=decision.forget_fill)
        if decision.fill_expected is not None:
            job_id = new_job_id()
            if await builds.claim_fill(session=session, key=key, job_id=job_id):
                await submit_job(
                    session=session,
                    kind=FILL_JOB,
                    params={"key": key, "expected": decision.fill_expected},
                    job_id=job_id,
                )
    return progress


async def release_ready_builds(
    *, session: AsyncSession, progress: dict[str, TraitProgress] | None = None
) -> list[str]:
    """Let the parked build jobs whose computed traits are all in the copy start; return their ids.

    The others show how far profile and the fill are with their traits.
    """
    released = []
    for waiting in await builds.waiting_builds(session=session):
        keys = {spec.key for spec in parse_rule(waiting.rule).computed_traits}
        ready = await builds.ready_traits(session=session, keys=keys)
        # A trait profile refused never comes: the job starts, to fail with the reason.
        refused = await builds.ready_traits(session=session, keys=keys - ready, status="refused")
        if keys <= ready | refused:
            await builds.release_job(session=session, job_id=waiting.job_id)
            released.append(waiting.job_id)
        elif progress:
            known = [progress[key] for key in keys if key in progress]
            await builds.report_waiting(
                session=session,
                job_id=waiting.job_id,
                done=sum(p.done for p in known),
                total=sum(p.total for p in known),
            )
    return released


def owner_of(segment_key: str) -> str:
    """Return how profile names a segment as the owner of a computed trait."""
    return f"segment:{segment_key}"


async def settle_claims(*, session: AsyncSession, client: ComputedTraitsClient) -> None:
    """Tell profile which segments rely on which computed traits: new claims add the segment as an
    owner, released ones let go of it. Profile is asked before anything is written; what it
    cannot take now is tried again at the next watch."""
    answered: list[tuple[claims.Claim, str | None]] = []
    for claim in await claims.unsettled_claims(session=session):
        try:
            if claim.released:
                await client.release(claim.key, owner_of(claim.segment_key))
            elif claim.spec is not None:
                await client.claim(claim.spec, owner_of(claim.segment_key))
            else:
                continue
        except _ASK_ERRORS as exc:
            answered.append((claim, f"{type(exc).__name__}: {exc}"[:500]))
            continue
        answered.append((claim, None))
    for claim, error in answered:
        if error is not None:
            logger.warning(
                "profile did not settle a computed-trait claim; retrying",
                extra={"key": claim.key, "segment": claim.segment_key, "error": error},
            )
        await claims.settle_claim(session=session, claim=claim, error=error)


async def watch_computed_traits(
    *, session: AsyncSession, client: ComputedTraitsClient
) -> dict[str, TraitProgress]:
    """Move every computed-trait request that is not ready on, settle the segments' claims on them
    and release the segments that waited for them, in the session's transaction; return the
    requests' progress."""
    progress = await advance_traits(session=session, client=client)
    await settle_claims(session=session, client=client)
    await release_ready_builds(session=session, progress=progress)
    return progress
