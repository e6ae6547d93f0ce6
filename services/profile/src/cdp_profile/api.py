"""HTTP routes of the profile service: profiles, identity, computed traits, duplicates."""

from __future__ import annotations

from datetime import UTC, datetime
from datetime import date as date_type
from decimal import Decimal
from typing import Annotated, Any, Literal

from cdp_common.auth import Principal, require_scope
from cdp_common.deps import ReadSessionDep, SessionDep
from cdp_common.jobs import get_job, jobs_router
from cdp_common.patterns import compile_linear
from cdp_common.privacy import access_router
from cdp_common.web import ApiError, PageParams, decode_cursor, encode_cursor, page_params
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy.ext.asyncio import AsyncSession

from cdp_profile import accounts, computed_traits, duplicates, handlers, rates, store
from cdp_profile.computed_traits import OWNER_PATTERN
from cdp_profile.context import SERVICE, ProfileContext
from cdp_profile.domain.computed import KEY_PATTERN, Definition, PropertyFilter, clock_traits, derive_defined
from cdp_profile.domain.identity import (
    TYPE_PATTERN,
    IdentityRules,
    InvalidReference,
    parse_ref,
)
from cdp_profile.domain.traits import common_traits
from cdp_profile.metrics import QUARANTINED_IDENTIFIERS
from cdp_profile.orders import order_document

ProfileReader = Annotated[Principal, Depends(require_scope("profiles:read"))]
ProfileWriter = Annotated[Principal, Depends(require_scope("profiles:write"))]
ProfileRef = Annotated[str, Path(min_length=1, max_length=1100, description="a profile id or type:value")]
PageDep = Annotated[PageParams, Depends(page_params)]
ShortText = Annotated[str | None, Query(min_length=1, max_length=200)]


async def _context(request: Request) -> ProfileContext:
    context: ProfileContext = request.app.state.profile_context
    return context


ContextDep = Annotated[ProfileContext, Depends(_context)]


async def _resolve(session: SessionDep, context: ProfileContext, ref: str) -> str:
    try:
        key = parse_ref(ref, default_region=context.default_region)
    except InvalidReference as exc:
        raise ApiError(status=400, code="invalid_reference", message=str(exc)) from exc
    if key is None:
        profile_id = await store.resolve_profile_id(session=session, profile_id=ref)
    else:
        profile_id = await store.resolve_identifier(session=session, key=key)
    if profile_id is None:
        raise ApiError(status=404, code="profile_not_found", message="no profile matches this reference")
    return profile_id


async def _load(session: AsyncSession, context: ProfileContext, ref: str) -> store.StoredProfile:
    try:
        key = parse_ref(ref, default_region=context.default_region)
    except InvalidReference as exc:
        raise ApiError(status=400, code="invalid_reference", message=str(exc)) from exc
    found = await store.read_profile(session=session, key=key, profile_id=ref)
    if found is None:
        raise ApiError(status=404, code="profile_not_found", message="no profile matches this reference")
    profile, held = found
    profile.computed = handlers.serve_held(profile, held)
    return profile


def _cursor_field(cursor: str | None, name: str) -> Any:
    if cursor is None:
        return None
    position = decode_cursor(cursor)
    if name not in position:
        raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid")
    return position[name]


profiles_router = APIRouter(prefix="/v1/profiles", tags=["profiles"])


@profiles_router.get("")
async def search_profiles(
    session: SessionDep,
    _: ProfileReader,
    page: PageDep,
    trait: Annotated[str, Query(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.$-]+$")],
    value: Annotated[str, Query(max_length=1000)],
) -> dict[str, Any]:
    """Find live profiles by the exact value of a trait."""
    after = _cursor_field(page.cursor, "id")
    found = await store.search_profiles(
        session=session, trait=trait, value=value, after=after, limit=page.limit
    )
    for profile in found:
        profile.computed = await handlers.served_computed(session=session, profile=profile)
    items = [store.profile_document(p) for p in found]
    next_cursor = encode_cursor({"id": found[-1].id}) if len(found) == page.limit else None
    return {"items": items, "next": next_cursor}


@profiles_router.get("/{ref}")
async def get_profile(
    ref: ProfileRef, session: ReadSessionDep, _: ProfileReader, context: ContextDep
) -> dict[str, Any]:
    """Return a profile by id (merged-away ids included) or by `type:value`, with its accounts."""
    profile = await _load(session, context, ref)
    served = await accounts.served_accounts_of(session=session, profile_id=profile.id)
    return {**store.profile_document(profile), "accounts": served}


@profiles_router.get("/{ref}/traits")
async def get_traits(
    ref: ProfileRef, session: ReadSessionDep, _: ProfileReader, context: ContextDep
) -> dict[str, Any]:
    """Return a profile's traits with their provenance, and the typed common traits."""
    profile = await _load(session, context, ref)
    return {
        "traits": {name: trait.to_json() for name, trait in profile.traits.items()},
        "common_traits": common_traits(profile.traits),
    }


@profiles_router.get("/{ref}/identifiers")
async def get_identifiers(
    ref: ProfileRef, session: SessionDep, _: ProfileReader, context: ContextDep
) -> dict[str, Any]:
    """Return a profile's identifiers and the ids merged into it."""
    profile_id = await _resolve(session, context, ref)
    return {
        "profile_id": profile_id,
        "items": await store.identifiers_of_profile(session=session, profile_id=profile_id),
        "merged_profile_ids": await store.merged_away_ids(session=session, profile_id=profile_id),
    }


@profiles_router.get("/{ref}/merges")
async def get_merges(
    ref: ProfileRef, session: SessionDep, _: ProfileReader, context: ContextDep
) -> dict[str, Any]:
    """Return the merge ledger of a profile and of every id merged into it, with the reasons."""
    profile_id = await _resolve(session, context, ref)
    family = [profile_id, *await store.merged_away_ids(session=session, profile_id=profile_id)]
    return {"profile_id": profile_id, "items": await store.ledger_of(session=session, profile_ids=family)}


@profiles_router.get("/{ref}/computed")
async def get_computed(
    ref: ProfileRef, session: ReadSessionDep, _: ProfileReader, context: ContextDep
) -> dict[str, Any]:
    """Return a profile's computed traits, with the clock-derived ones evaluated now."""
    profile = await _load(session, context, ref)
    return {
        "profile_id": profile.id,
        "computed_traits": {**profile.computed, **clock_traits(profile.aggregates, now=context.clock())},
    }


@profiles_router.get("/{ref}/events")
async def get_events(
    ref: ProfileRef,
    session: SessionDep,
    _: ProfileReader,
    context: ContextDep,
    page: PageDep,
    type: Annotated[Literal["identify", "track", "page", "screen", "group", "alias"] | None, Query()] = None,
    name: ShortText = None,
    since: Annotated[datetime | None, Query()] = None,
    until: Annotated[datetime | None, Query()] = None,
) -> dict[str, Any]:
    """Return a profile's events, newest first, filtered by type, name and time."""
    after = None
    if page.cursor is not None:
        try:
            after = (
                datetime.fromisoformat(_cursor_field(page.cursor, "t")),
                int(_cursor_field(page.cursor, "s")),
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid") from exc
    for bound in (since, until):
        if bound is not None and bound.tzinfo is None:
            raise ApiError(
                status=400, code="invalid_time", message="times need a UTC offset, e.g. 2026-01-01T00:00:00Z"
            )
    profile_id = await _resolve(session, context, ref)
    rows = await store.list_events(
        session=session,
        profile_id=profile_id,
        event_type=type,
        name=name,
        since=since,
        until=until,
        after=after,
        limit=page.limit,
    )
    next_cursor = (
        encode_cursor({"t": rows[-1]["timestamp"].isoformat(), "s": rows[-1]["seq"]})
        if len(rows) == page.limit
        else None
    )
    return {"items": [{**r, "timestamp": r["timestamp"].isoformat()} for r in rows], "next": next_cursor}


@profiles_router.get("/{ref}/orders")
async def get_orders(
    ref: ProfileRef, session: SessionDep, _: ProfileReader, context: ContextDep, page: PageDep
) -> dict[str, Any]:
    """Return a person's orders, newest first: state, money (and its value in the reporting currency) and lines."""
    after = None
    if page.cursor is not None:
        try:
            after = (
                datetime.fromisoformat(_cursor_field(page.cursor, "t")),
                str(_cursor_field(page.cursor, "o")),
            )
        except (TypeError, ValueError) as exc:
            raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid") from exc
    profile_id = await _resolve(session, context, ref)
    found = await store.list_orders(session=session, profile_id=profile_id, after=after, limit=page.limit)
    next_cursor = (
        encode_cursor({"t": found[-1].order.ordered_at.isoformat(), "o": found[-1].order.order_id})
        if len(found) == page.limit
        else None
    )
    return {"profile_id": profile_id, "items": [order_document(o) for o in found], "next": next_cursor}


class SplitRequest(BaseModel):
    """Which merge to undo; without it, the merge that absorbed the profile the ref names."""

    model_config = ConfigDict(extra="forbid")
    merge_id: str | None = Field(default=None, min_length=1, max_length=100)


@profiles_router.post("/{ref}/split")
async def split_profile(
    ref: ProfileRef, body: SplitRequest, session: SessionDep, _: ProfileWriter, context: ContextDep
) -> dict[str, Any]:
    """Undo a merge: both profiles are re-derived from their own events."""
    merge_id = body.merge_id
    if merge_id is None:
        entries = await store.ledger_of(session=session, profile_ids=[ref])
        merges = [e for e in entries if e["absorbed_id"] == ref]
        split = {e["merge_id"] for e in merges if e["kind"] == "split"}
        open_merges = [e for e in merges if e["kind"] == "merge" and e["merge_id"] not in split]
        if not open_merges:
            raise ApiError(
                status=404, code="merge_not_found", message="name a merged-away profile id or give merge_id"
            )
        merge_id = open_merges[-1]["merge_id"]
    else:
        await _resolve(session, context, ref)
    try:
        return await handlers.split_merge(session=session, context=context, merge_id=merge_id)
    except handlers.ProfileNotFound as exc:
        raise ApiError(status=404, code="merge_not_found", message="no such merge") from exc
    except handlers.SplitRefused as exc:
        raise ApiError(status=409, code="split_refused", message=str(exc)) from exc


identity_router = APIRouter(prefix="/v1/identity", tags=["identity"])


@identity_router.get("/quarantine")
async def list_quarantine(session: SessionDep, _: ProfileReader, page: PageDep) -> dict[str, Any]:
    """List identifiers quarantined for tying too many profiles together."""
    position = _cursor_field(page.cursor, "k")
    if position is not None and not (isinstance(position, list) and len(position) == 2):
        raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid")
    items = await store.list_quarantined(
        session=session, after=tuple(position) if position else None, limit=page.limit
    )
    if page.cursor is None:
        QUARANTINED_IDENTIFIERS.set(len(items))
    next_cursor = (
        encode_cursor({"k": [items[-1]["type"], items[-1]["value"]]}) if len(items) == page.limit else None
    )
    return {"items": items, "next": next_cursor}


class RulesBody(BaseModel):
    """The identity rules; fields left out keep their defaults."""

    model_config = ConfigDict(extra="forbid")
    blocked_values: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=lambda: list(IdentityRules().blocked_values), max_length=1000
    )
    blocked_patterns: list[Annotated[str, Field(max_length=500)]] = Field(
        default_factory=lambda: list(IdentityRules().blocked_patterns), max_length=100
    )
    limits: dict[str, Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=lambda: {"user_id": 1}, max_length=100
    )
    default_limit: int = Field(default=5, ge=1, le=1000)
    priority: list[str] = Field(default_factory=lambda: list(IdentityRules().priority), max_length=100)
    supernode_threshold: int = Field(default=10, ge=2, le=100_000)

    @field_validator("blocked_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                compile_linear(pattern, ignore_case=True)
            except ValueError as exc:
                raise ValueError(f"{pattern!r}: {exc}") from exc
        return patterns

    @field_validator("priority")
    @classmethod
    def _types(cls, priority: list[str]) -> list[str]:
        for kind in priority:
            if not TYPE_PATTERN.match(kind):
                raise ValueError(f"not an identifier type: {kind!r}")
        return priority


@identity_router.get("/rules")
async def get_rules(session: SessionDep, _: ProfileReader) -> dict[str, Any]:
    """Return the identity rules in force."""
    return (await store.load_configuration(session=session)).rules.to_json()


@identity_router.put("/rules")
async def put_rules(body: RulesBody, session: SessionDep, _: ProfileWriter) -> dict[str, Any]:
    """Replace the identity rules; they apply to events resolved from now on."""
    rules = IdentityRules.from_json(body.model_dump())
    await store.save_rules(session=session, rules=rules)
    return rules.to_json()


computed_router = APIRouter(prefix="/v1/computed-traits", tags=["computed traits"])


class FilterBody(BaseModel):
    """A condition on an event property."""

    model_config = ConfigDict(extra="forbid")
    property: str = Field(min_length=1, max_length=200)
    op: Literal["eq", "neq", "gt", "gte", "lt", "lte", "in", "exists", "contains"]
    value: Any = None

    @field_validator("value")
    @classmethod
    def _small(cls, value: Any) -> Any:
        if len(repr(value)) > 2000:
            raise ValueError("the filter value is too large (2000 characters at most)")
        return value


class DefinitionBody(BaseModel):
    """A computed trait: aggregation of an event property, with filters and an optional window."""

    model_config = ConfigDict(extra="forbid")
    key: str = Field(pattern=KEY_PATTERN.pattern, description="lower-case key the trait is published under")
    aggregation: Literal["count", "sum", "avg", "min", "max", "first", "last", "most_frequent", "unique"]
    event_name: str | None = Field(default=None, min_length=1, max_length=200)
    event_type: Literal["identify", "track", "page", "screen", "group", "alias"] | None = None
    property: str | None = Field(default=None, min_length=1, max_length=200)
    filters: list[FilterBody] = Field(default_factory=list, max_length=20)
    window_days: int | None = Field(default=None, ge=1, le=3650)
    owner: str | None = Field(
        default=None,
        pattern=OWNER_PATTERN.pattern,
        description="who relies on the trait (`segment:<key>`, `campaign:<id>`); none for an operator's own",
    )

    @field_validator("key")
    @classmethod
    def _not_builtin(cls, key: str) -> str:
        if key in handlers.BUILTIN_COMPUTED:
            raise ValueError(f"{key!r} is a built-in computed trait")
        return key


@computed_router.post("", status_code=202)
async def define_computed_trait(body: DefinitionBody, session: SessionDep, _: ProfileWriter) -> Any:
    """Define a computed trait; a job backfills it from the event store (202 with the job).

    With an `owner`, asking for a definition that exists, the same, adds the owner (200).
    """
    if body.aggregation not in ("count",) and body.property is None:
        raise ApiError(status=422, code="invalid_request", message=f"{body.aggregation} needs a property")
    definition = Definition(
        key=body.key,
        aggregation=body.aggregation,
        event_name=body.event_name,
        event_type=body.event_type,
        property=body.property,
        filters=tuple(PropertyFilter(property=f.property, op=f.op, value=f.value) for f in body.filters),
        window_days=body.window_days,
    )
    try:
        defined = await computed_traits.define_computed_trait(
            session=session, definition=definition, owner=body.owner
        )
    except computed_traits.DefinitionTaken as exc:
        raise ApiError(
            status=409,
            code="computed_trait_deleting" if exc.deleting else "computed_trait_exists",
            message=str(exc),
            details={"owners": exc.owners},
        ) from exc
    if defined.created:
        return defined.body
    return JSONResponse(jsonable_encoder(defined.body), status_code=200)


@computed_router.get("")
async def list_computed_traits(session: SessionDep, _: ProfileReader) -> dict[str, Any]:
    """List the user-defined computed traits (with their status) and the built-in ones."""
    return {
        "items": await computed_traits.with_owners(
            session=session, definitions=await store.list_definitions(session=session)
        ),
        "builtin": sorted(handlers.BUILTIN_COMPUTED),
        "next": None,
    }


async def _definition(session: AsyncSession, key: str) -> dict[str, Any]:
    found = await store.get_definition(session=session, key=key)
    if found is None:
        raise _not_found(key)
    return found


@computed_router.get("/{key}")
async def get_computed_trait(key: str, session: SessionDep, _: ProfileReader) -> dict[str, Any]:
    """Return a computed trait: its definition, `status` (`building` or `ready`), its owners and its
    backfill job."""
    (found,) = await computed_traits.with_owners(
        session=session, definitions=[await _definition(session, key)]
    )
    job = await get_job(session=session, job_id=found["job_id"]) if found.get("job_id") else None
    return {**found, "job": job}


def _not_found(key: str) -> ApiError:
    return ApiError(status=404, code="not_found", message=f"no computed trait has the key {key!r}")


@computed_router.delete("/{key}", status_code=202)
async def delete_computed_trait(key: str, session: SessionDep, _: ProfileWriter) -> dict[str, Any]:
    """Delete a computed trait no owner relies on (409 naming the owners otherwise); a job removes
    its values (202 with the job), and the key can be defined again once it has finished."""
    try:
        job = await computed_traits.delete_computed_trait(session=session, key=key)
    except computed_traits.DefinitionNotFound as exc:
        raise _not_found(key) from exc
    except computed_traits.DefinitionOwned as exc:
        raise ApiError(
            status=409, code="computed_trait_owned", message=str(exc), details={"owners": exc.owners}
        ) from exc
    return {"job": job}


@computed_router.delete("/{key}/owners/{owner}")
async def release_computed_trait(
    key: str,
    owner: Annotated[str, Path(pattern=OWNER_PATTERN.pattern)],
    session: SessionDep,
    _: ProfileWriter,
) -> dict[str, Any]:
    """Release one owner's claim on a computed trait (releasing one twice changes nothing);
    answer the owners left."""
    try:
        owners = await computed_traits.release_owner(session=session, key=key, owner=owner)
    except computed_traits.DefinitionNotFound as exc:
        raise _not_found(key) from exc
    return {"key": key, "owners": owners}


@computed_router.get("/{key}/values")
async def computed_trait_values(
    key: str,
    session: SessionDep,
    _: ProfileReader,
    after: Annotated[str, Query(max_length=200)] = "",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Page through the value of a computed trait of every profile that holds one, in profile id order."""
    await _definition(session, key)
    definition = await store.load_definition(session=session, key=key)
    assert definition is not None
    rows = await store.trait_states(session=session, key=key, after=after, limit=limit)
    return {
        "items": [{"profile_id": pid, "value": derive_defined(state, definition)} for pid, state in rows],
        "next": rows[-1][0] if len(rows) == limit else None,
    }


accounts_router = APIRouter(prefix="/v1/accounts", tags=["accounts"])
GroupId = Annotated[str, Path(min_length=1, max_length=1000, description="the groupId of `group` calls")]


@accounts_router.get("/{group_id}")
async def get_account(group_id: GroupId, session: ReadSessionDep, _: ProfileReader) -> dict[str, Any]:
    """Return an account (a company from `group` calls): its traits and members (the first 1000 by id;
    `member_count` counts them all)."""
    found = await accounts.account_document(session=session, group_id=group_id)
    if found is None:
        raise ApiError(status=404, code="account_not_found", message="no group call named this account")
    return found


@accounts_router.get("/{group_id}/members")
async def list_account_members(
    group_id: GroupId, session: ReadSessionDep, _: ProfileReader, page: PageDep
) -> dict[str, Any]:
    """Page through the profile ids of an account's members, in id order."""
    if await store.get_account(session=session, group_id=group_id) is None:
        raise ApiError(status=404, code="account_not_found", message="no group call named this account")
    after = _cursor_field(page.cursor, "id") or ""
    if not isinstance(after, str):
        raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid")
    members = await store.members_of(session=session, group_id=group_id, after=after, limit=page.limit)
    next_cursor = encode_cursor({"id": members[-1]}) if len(members) == page.limit else None
    return {"items": members, "next": next_cursor}


duplicates_router = APIRouter(prefix="/v1/duplicates", tags=["duplicates"])


def _queue_position(cursor: str | None) -> tuple[float, str, str] | None:
    if cursor is None:
        return None
    position = decode_cursor(cursor)
    score, first, second = position.get("s"), position.get("a"), position.get("b")
    if not (
        isinstance(score, int | float)
        and not isinstance(score, bool)
        and isinstance(first, str)
        and isinstance(second, str)
    ):
        raise ApiError(status=400, code="invalid_cursor", message="the cursor is not valid")
    return float(score), first, second


@duplicates_router.get("")
async def list_duplicates(
    session: SessionDep,
    _: ProfileReader,
    page: PageDep,
    min_score: Annotated[float, Query(ge=0.7, le=1.0)] = 0.8,
) -> dict[str, Any]:
    """Page through the review queue: open pairs of live profiles that look like one person or
    company, best score first; never merges.

    `scan` says when the last scan of the whole base finished (null before the first);
    `changes_waiting`, how many profile changes the queue has yet to compare.
    """
    answer = await duplicates.list_duplicates(
        session=session, min_score=min_score, after=_queue_position(page.cursor), limit=page.limit
    )
    return {**answer, "next": encode_cursor(answer["next"]) if answer["next"] else None}


class ScanRequest(BaseModel):
    """How much to scan: only what changed since the last scan (default), or everything again."""

    model_config = ConfigDict(extra="forbid")
    full: bool = False


@duplicates_router.post("/scan", status_code=202)
async def scan_duplicates(
    session: SessionDep, _: ProfileWriter, body: ScanRequest | None = None
) -> dict[str, Any]:
    """Start a scan of the whole base for duplicates (202 with its job); a scan under way is answered instead."""
    return {"job": await duplicates.start_scan(session=session, full=body.full if body else False)}


class PairRequest(BaseModel):
    """Two profiles an operator reviewed."""

    model_config = ConfigDict(extra="forbid")
    profile_ids: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=2, max_length=2)


@duplicates_router.post("/dismiss")
async def dismiss_duplicates(
    body: PairRequest, session: SessionDep, principal: ProfileWriter
) -> dict[str, Any]:
    """Record that two profiles are not the same: the pair leaves the queue and no scan proposes it again."""
    try:
        return await duplicates.dismiss_pair(
            session=session, profile_ids=body.profile_ids, decided_by=principal.token_id
        )
    except duplicates.ProfileNotLive as exc:
        raise ApiError(status=404, code="profile_not_found", message=f"no live profile {exc}") from exc
    except duplicates.SameProfile as exc:
        raise ApiError(status=409, code="same_profile", message=str(exc)) from exc


class MergeRequest(BaseModel):
    """Profiles an operator confirmed as one person."""

    model_config = ConfigDict(extra="forbid")
    profile_ids: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=2, max_length=10
    )


@duplicates_router.post("/merge")
async def merge_duplicates(
    body: MergeRequest, session: SessionDep, principal: ProfileWriter, context: ContextDep
) -> dict[str, Any]:
    """Merge profiles an operator reviewed; recorded in the ledger with the rule `operator`.

    The pairs leave the review queue as merged.
    """
    live = await duplicates.live_profiles_of(session=session, profile_ids=body.profile_ids)
    scored = await duplicates.scores_before_merge(session=session, profile_ids=live)
    try:
        merged = await handlers.merge_profiles(
            session=session,
            context=context,
            profile_ids=body.profile_ids,
            rule="operator",
            reason={"via": "api"},
        )
    except handlers.ProfileNotFound as exc:
        raise ApiError(status=404, code="profile_not_found", message=f"no profile {exc}") from exc
    except handlers.SplitRefused as exc:
        raise ApiError(status=409, code="merge_refused", message=str(exc)) from exc
    await duplicates.record_merged(session=session, scored=scored, decided_by=principal.token_id)
    return merged


# --- exchange rates ----------------------------------------------------------------------

rates_router = APIRouter(prefix="/v1/exchange-rates", tags=["exchange rates"])
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class DayRatesBody(BaseModel):
    """One day's reference rates: units of each currency for one unit of the base."""

    model_config = ConfigDict(extra="forbid")

    date: date_type
    base: CurrencyCode = "EUR"
    rates: dict[CurrencyCode, Annotated[Decimal, Field(gt=0, le=Decimal("1e12"), allow_inf_nan=False)]] = (
        Field(min_length=1, max_length=400)
    )

    @model_validator(mode="after")
    def base_at_one(self) -> DayRatesBody:
        """Refuse a rate for the base other than 1: the base is what the others are counted in."""
        if self.rates.get(self.base, 1) != 1:
            raise ValueError(f"the base {self.base} is 1 unit of itself, not {self.rates[self.base]}")
        return self


@rates_router.put("")
async def put_exchange_rates(
    body: DayRatesBody | Annotated[list[DayRatesBody], Field(min_length=1, max_length=1000)],
    session: SessionDep,
    context: ContextDep,
    _: ProfileWriter,
) -> dict[str, Any]:
    """Load one day's reference rates, or a list of days (a rate loaded again replaces the one before)."""
    days = body if isinstance(body, list) else [body]
    return await rates.load_rates(
        session=session,
        context=context,
        days=[rates.DayOfRates(day=d.date, base=d.base, rates=d.rates) for d in days],
    )


@rates_router.get("")
async def get_exchange_rate(
    currency: Annotated[str, Query(pattern=r"^[A-Z]{3}$")],
    session: ReadSessionDep,
    context: ContextDep,
    _: ProfileReader,
    on: Annotated[date_type | None, Query(alias="date")] = None,
) -> dict[str, Any]:
    """Return the rate in effect for a currency on a day (today by default), in the reporting currency."""
    day = on or datetime.now(UTC).date()
    found = await rates.rate_on(session=session, context=context, currency=currency, day=day)
    if found is None:
        raise ApiError(
            status=404,
            code="rate_not_found",
            message=f"no rates for {currency} and {context.reporting_currency} on or before {day.isoformat()}",
        )
    return found


routers = [
    profiles_router,
    identity_router,
    computed_router,
    accounts_router,
    duplicates_router,
    rates_router,
    jobs_router(read_scope="profiles:read", write_scope="profiles:write"),
    access_router(service=SERVICE, export=handlers.export_profile),
]
