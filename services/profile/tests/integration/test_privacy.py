"""Privacy requests on the real PostgreSQL: erasure with tombstones, access receipts, unknown subjects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from cdp_common.db import transaction
from cdp_common.events import PrivacyReceipt, PrivacyRequestOpened, ProfileErased, make_envelope
from cdp_common.hashing import subject_hash
from cdp_common.identifiers import normalise_identifier
from cdp_profile import handlers

from ..conftest import ProfileDb, tracking, uid

pytestmark = pytest.mark.integration


def request(db: ProfileDb, kind: str, subject_type: str, value: str) -> Any:
    return make_envelope(
        payload=PrivacyRequestOpened(
            request_id=uid("req"),
            request_type=kind,
            subject_type=subject_type,
            subject_hash=subject_hash(
                key=db.context.hash_key,
                subject_type=subject_type,
                value=normalise_identifier(subject_type, value),
            ),
            deadline=datetime.now(UTC) + timedelta(days=30),
        ),
        source="consent",
        subject="req",
    )


async def handle(db: ProfileDb, envelope: Any) -> list[str]:
    async with transaction(db.sessions) as session:
        return await handlers.handle_privacy_request(session=session, envelope=envelope, context=db.context)


async def text_columns_containing(db: ProfileDb, needles: list[str]) -> list[str]:
    """Scan every text, jsonb and bytea column of the schema for any of the values."""
    found: list[str] = []
    async with db.engine.connect() as conn:
        columns = await conn.execute(
            sa.text(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND data_type IN ('text', 'jsonb', 'bytea', 'character varying')"
            )
        )
        for table, column, data_type in columns.all():
            expression = (
                f"convert_from(\"{column}\", 'UTF8')" if data_type == "bytea" else f'"{column}"::text'
            )
            for needle in needles:
                hit = await conn.execute(
                    # Table and column names come from information_schema, not from input.
                    sa.text(f'SELECT 1 FROM "{table}" WHERE lower({expression}) LIKE :n LIMIT 1'),  # noqa: S608
                    {"n": f"%{needle.lower()}%"},
                )
                if hit.first() is not None:
                    found.append(f"{table}.{column}: {needle}")
    return found


async def test_erasure_deletes_everything_keeps_tombstones_and_answers_on_both_topics(db: ProfileDb) -> None:
    anon, user, email = uid("a"), uid(), f"{uid('erase')}@example.com"
    personal = {
        "first_name": "Gudrun",
        "last_name": "Ensslin-Probe",
        "phone": "+49 30 5550199",
        "address": {"street": "Unter den Linden 77", "city": "Berlin", "postal_code": "10117"},
    }
    browsing, known = await db.resolve(
        tracking(anonymous_id=anon, type="page", name="Home"),
        tracking(user_id=user, type="identify", traits={"email": email, **personal}),
    )
    [survivor] = await db.resolve(tracking(user_id=user, anonymous_id=anon, event="Order Completed"))
    assert survivor == known
    erasure = request(db, "erasure", "email", email.upper())
    erased = await handle(db, erasure)
    assert set(erased) == {known, browsing}
    published = await db.published()
    [gone] = [e for e in published if isinstance(e.data, ProfileErased)]
    assert gone.subject == known
    assert gone.data.request_id == erasure.data.request_id
    assert gone.data.merged_profile_ids == [browsing]
    [receipt] = [e for e in published if isinstance(e.data, PrivacyReceipt)]
    assert receipt.subject == erasure.data.request_id
    assert receipt.data.service == "profile"
    assert set(receipt.data.profile_ids) == {known, browsing}
    leftovers = await text_columns_containing(
        db, [email, "Gudrun", "Ensslin-Probe", "+49305550199", "5550199", "Unter den Linden", anon, user]
    )
    assert leftovers == []
    for table in ("profiles", "identifiers", "events", "merges", "computed_values"):
        assert await db.scalar(f"SELECT count(*) FROM {table}") == 0  # noqa: S608
    # Re-sent events of the person, by any of their identifiers, never create them again.
    dropped = await db.resolve(
        tracking(anonymous_id=anon),
        tracking(context_traits={"email": email}),
        tracking(user_id=user, anonymous_id=uid()),
    )
    assert dropped == [None, None, None]
    assert await db.scalar("SELECT count(*) FROM profiles") == 0


async def test_erasure_by_a_merged_away_profile_id_erases_the_survivor(db: ProfileDb) -> None:
    anon, user = uid("a"), uid()
    browsing, known = await db.resolve(tracking(anonymous_id=anon), tracking(user_id=user))
    await db.resolve(tracking(user_id=user, anonymous_id=anon))
    assert browsing is not None
    erased = await handle(db, request(db, "erasure", "profile_id", browsing))
    assert set(erased) == {browsing, known}
    assert await db.scalar("SELECT count(*) FROM profiles") == 0


async def test_access_request_only_names_the_profiles_and_export_returns_everything(db: ProfileDb) -> None:
    user, anon = uid(), uid("a")
    await db.resolve(tracking(anonymous_id=anon, type="page", name="Home"), tracking(user_id=user))
    [known] = await db.resolve(tracking(user_id=user, anonymous_id=anon, context_traits={"city": "Köln"}))
    assert known is not None
    access = request(db, "access", "user_id", user)
    named = await handle(db, access)
    assert named[0] == known
    published = await db.published()
    assert not [e for e in published if isinstance(e.data, ProfileErased)]
    [receipt] = [e for e in published if isinstance(e.data, PrivacyReceipt)]
    assert receipt.data.profile_ids == named
    async with transaction(db.sessions) as session:
        export = await handlers.export_profile(session=session, profile_id=named[-1])
    assert export is not None
    assert export["profile"]["id"] == known
    assert {i["type"] for i in export["identifiers"]} == {"user_id", "anonymous_id"}
    assert export["traits"]["city"]["value"] == "Köln"
    assert len(export["events"]) == 3
    assert [m["kind"] for m in export["merges"]] == ["merge"]
    assert "orders" in export["computed_traits"]


async def test_an_unknown_subject_gets_a_receipt_saying_nothing_was_found(db: ProfileDb) -> None:
    envelope = request(db, "erasure", "email", "nobody@example.com")
    assert await handle(db, envelope) == []
    [receipt] = [e for e in await db.published() if isinstance(e.data, PrivacyReceipt)]
    assert receipt.data.profile_ids == []
    assert receipt.data.details == {"found": 0}
