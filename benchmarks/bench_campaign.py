"""The campaign send pipeline: personalised e-mails per second (rendered, consent-checked through
the consent service's API, recorded before and after the hand-over, handed to SMTP) to the local
mail catcher, beside raw aiosmtplib sends of the same messages over as many connections, in the
same run.

The pipeline composes (renders and builds) its messages in the service's default number of worker
processes (CDP_CAMPAIGN_COMPOSE_PROCESSES, 1), as the service does; the raw sender has them built
beforehand. Raw sends and the pipeline alternate for ROUNDS rounds (the order swapped every round) and the
median round is reported, because the machine is shared. Both run on uvloop, the event loop the
campaign service runs on (uvicorn picks it), in a thread of their own."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from datetime import UTC, datetime
from datetime import time as clock_time
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import sqlalchemy as sa
import uvloop
from cdp_campaign import store
from cdp_campaign.context import CampaignContext
from cdp_campaign.domain.campaigns import CampaignSpec
from cdp_campaign.domain.messages import TrackingLinks, build_email
from cdp_campaign.domain.templates import render
from cdp_campaign.gateways import (
    HttpConsentGate,
    HttpSmsProvider,
    IngestTracker,
    SafeWebhookSender,
    SmtpMailer,
    SystemClock,
    composer_for,
)
from cdp_campaign.jobs import deliver_jobs
from cdp_campaign.settings import Settings
from cdp_common.db import create_engine, create_session_factory, transaction
from cdp_common.migrations import migrate
from cdp_common.service import settle_heap

NAME = "campaign"
MESSAGES = 2000
ROUNDS = 9
CONNECTIONS = 8
JOB_SIZE = 200
PARALLEL_JOBS = 4  # CDP_CAMPAIGN_PARALLEL_JOBS; the service's default is 1
GOAL_MESSAGES_PER_S = 1000
GOAL_VS_RAW = 0.5
MIGRATIONS = Path(__file__).resolve().parents[1] / "services" / "campaign" / "migrations"
# Where the stack's mail catcher keeps what it receives (`<UTC stamp>-<n>.eml`).
MAIL_DIR = Path(__file__).resolve().parents[1] / ".run" / "mail"
BENCH_DOMAIN = b"@bench.example\r\n"

SUBJECT = "{{ profile.first_name | default('Hello') }}, your picks for this week"
BODY = """<html><body>
<p>Hi {{ profile.first_name | default('there') }},</p>
<p>{% if 'vip' in segments %}As a VIP you get 20% off.{% else %}Here is 10% off.{% endif %}
You have ordered {{ computed.orders_90d | default(0) }} times in the last 90 days.</p>
<ul>{% for item in profile.wishlist | default([]) %}<li>{{ item }}</li>{% endfor %}</ul>
<a href="https://shop.example/sale?c={{ profile.city | default('') | urlencode }}">Shop the sale</a>
<a href="https://shop.example/account">Your account</a>
</body></html>"""


async def _grant_consent(*, env: dict[str, str], profile_ids: list[str]) -> None:
    headers = {"Authorization": f"Bearer {env['CDP_ADMIN_TOKEN']}"}
    base = env["CDP_CONSENT_URL"]
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        response = await client.post(
            f"{base}/v1/consents/check",
            json={"purpose": "email_marketing", "channel": "email", "profile_ids": profile_ids},
        )
        response.raise_for_status()
        allowed = set(response.json()["allowed"])
        missing = [p for p in profile_ids if p not in allowed]
        limit = asyncio.Semaphore(16)

        async def grant(profile_id: str) -> None:
            async with limit:
                body = {
                    "profile_id": profile_id,
                    "purpose": "email_marketing",
                    "channel": "email",
                    "status": "granted",
                    "source": "bench",
                }
                (await client.post(f"{base}/v1/consents", json=body)).raise_for_status()

        await asyncio.gather(*(grant(p) for p in missing))


async def _insert_sends(*, session: Any, campaign_id: str, profile_ids: list[str], run_key: str) -> list[str]:
    now = datetime.now(UTC)
    return await store.insert_sends(
        session=session,
        rows=[
            {
                "id": store.send_id_for(
                    source="campaign", source_id=campaign_id, step=None, run_key=run_key, profile_id=p
                ),
                "source": "campaign",
                "source_id": campaign_id,
                "profile_id": p,
                "profile_hash": p,
                "variant": "a",
                "channel": "email",
                "status": "queued",
                "created_at": now,
            }
            for p in profile_ids
        ],
    )


def _remove_caught_bench_mail(*, since: str) -> None:
    """Delete what the catcher kept of this run's e-mails (to @bench.example), so runs do not pile up."""
    for path in MAIL_DIR.glob("*.eml"):
        if path.name < since:
            continue
        try:
            with path.open("rb") as caught:
                head = caught.read(512)
        except FileNotFoundError:
            continue
        if BENCH_DOMAIN in head:
            path.unlink(missing_ok=True)


class RawSender:
    """A competent raw sender: CONNECTIONS connections opened once and kept, aiosmtplib's sendmail."""

    def __init__(self, smtp_url: str) -> None:
        host, port = smtp_url.split("://", 1)[1].split(":")
        self.clients = [aiosmtplib.SMTP(hostname=host, port=int(port)) for _ in range(CONNECTIONS)]

    async def open(self) -> None:
        """Connect every connection and greet the server."""
        for client in self.clients:
            await client.connect()
            await client.ehlo()

    async def send_all(self, messages: list[Any]) -> None:
        """Send every message, each connection taking the next one when it is free."""
        pending = iter(messages)

        async def connection(client: aiosmtplib.SMTP) -> None:
            for mail in pending:
                await client.sendmail(mail.sender, list(mail.recipients), mail.data)

        await asyncio.gather(*(connection(c) for c in self.clients))

    async def close(self) -> None:
        """Say goodbye on every connection."""
        for client in self.clients:
            await client.quit()


async def _timed(work: Any) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    await work
    return time.perf_counter() - started, time.process_time() - cpu


def _median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    ratio = statistics.median_low(r["pipeline_vs_raw"] for r in rounds)
    return next(r for r in rounds if r["pipeline_vs_raw"] == ratio)


async def run(env: dict[str, str]) -> dict[str, Any]:
    """Measure on uvloop in a thread of its own, as the service runs."""
    return await asyncio.to_thread(uvloop.run, _measure(env))


async def _measure(env: dict[str, str]) -> dict[str, Any]:
    """Prepare a campaign of MESSAGES recipients; alternate raw SMTP sends and the pipeline over them."""
    schema = "bench_campaign_" + secrets.token_hex(4)
    started_stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    settings = Settings(
        database_url=env["CDP_DATABASE_URL"],
        kafka_bootstrap=env["CDP_KAFKA_BOOTSTRAP"],
        smtp_url=env["CDP_SMTP_URL"],
        consent_url=env["CDP_CONSENT_URL"],
        admin_token=env["CDP_ADMIN_TOKEN"],
        campaign_frequency_cap=0,
        campaign_quiet_start=clock_time(0),
        campaign_quiet_end=clock_time(0),
        campaign_smtp_connections=CONNECTIONS,
        campaign_parallel_jobs=PARALLEL_JOBS,
    )
    engine = create_engine(database_url=settings.database_url, schema=schema, pool_size=PARALLEL_JOBS * 2)
    await migrate(engine=engine, schema=schema, script_location=MIGRATIONS)
    factory = create_session_factory(engine)
    client = httpx.AsyncClient(timeout=30, trust_env=False)
    raw = RawSender(settings.smtp_url)
    mailer = SmtpMailer(url=settings.smtp_url, connections=CONNECTIONS, timeout_s=30)
    ctx = CampaignContext(
        settings=settings,
        session_factory=factory,
        consent=HttpConsentGate(client=client, base_url=settings.consent_url, token=env["CDP_ADMIN_TOKEN"]),
        tracker=IngestTracker(client=client, base_url=env["CDP_INGEST_URL"], write_key=""),
        mailer=mailer,
        sms=HttpSmsProvider(client=client, url="", token=""),
        webhooks=SafeWebhookSender(key="bench", allowlist=[], timeout_s=1),
        clock=SystemClock(),
        composer=composer_for(settings=settings),
    )
    try:
        profile_ids = [f"bench-campaign-{i}" for i in range(MESSAGES)]
        await _grant_consent(env=env, profile_ids=profile_ids)
        campaign_id = "cmp_bench_" + secrets.token_hex(4)
        spec = CampaignSpec.model_validate(
            {
                "name": "Bench",
                "audience": {"type": "segment", "segment_key": "bench"},
                "variants": [{"key": "a", "subject": SUBJECT, "body": BODY}],
                "holdout_percent": 0,
            }
        )
        now = datetime.now(UTC)
        contacts: list[dict[str, Any]] = [
            {
                "profile_id": p,
                "version": 1,
                "email": f"{p}@bench.example",
                "traits": {"first_name": f"Name{i}", "city": "Berlin", "wishlist": ["tea", "mug"]},
                "computed": {"orders_90d": i % 7},
            }
            for i, p in enumerate(profile_ids)
        ]
        async with transaction(factory) as session:
            await store.insert_definition(
                session=session,
                table=store.campaigns,
                id=campaign_id,
                name="Bench",
                status="running",
                spec=spec.model_dump(mode="json"),
            )
            for start in range(0, MESSAGES, 1000):
                await session.execute(sa.insert(store.contacts), contacts[start : start + 1000])
                await session.execute(
                    sa.insert(store.memberships),
                    [
                        {"segment_key": "vip", "profile_id": p, "entered_at": now}
                        for p in profile_ids[start : start + 1000 : 3]
                    ],
                )

        # The same messages, rendered and built beforehand, for the raw baseline.
        messages = []
        for contact in contacts:
            values = {
                "profile": contact["traits"],
                "computed": contact["computed"],
                "segments": [],
                "locale": "en",
            }
            links = TrackingLinks(key="bench", base_url=settings.public_url, send_id=contact["profile_id"])
            messages.append(
                build_email(
                    sender=settings.campaign_mail_from,
                    to=contact["email"],
                    subject=render(SUBJECT, values),
                    html=render(BODY, values, html=True),
                    text=None,
                    links=links,
                    reference=contact["profile_id"],
                )
            )
        await raw.open()
        # As the service at start-up: composing workers started, start-up objects out of the collector's way.
        await ctx.composer.start()
        settle_heap()
        totals: dict[str, int] = {}

        async def pipeline(send_ids: list[str]) -> None:
            # As the service's send consumer does with a poll of jobs.
            jobs = [send_ids[i : i + JOB_SIZE] for i in range(0, len(send_ids), JOB_SIZE)]
            for outcome, n in (await deliver_jobs(ctx=ctx, jobs=jobs)).items():
                totals[outcome] = totals.get(outcome, 0) + n

        rounds = []
        for number in range(ROUNDS):
            async with transaction(factory) as session:
                send_ids = await _insert_sends(
                    session=session,
                    campaign_id=campaign_id,
                    profile_ids=profile_ids,
                    run_key=f"bench{number}",
                )
            if number % 2 == 0:
                raw_s, raw_cpu_s = await _timed(raw.send_all(messages))
                pipeline_s, pipeline_cpu_s = await _timed(pipeline(send_ids))
            else:
                pipeline_s, pipeline_cpu_s = await _timed(pipeline(send_ids))
                raw_s, raw_cpu_s = await _timed(raw.send_all(messages))
            rounds.append(
                {
                    "pipeline_messages_per_s": round(MESSAGES / pipeline_s, 1),
                    "raw_smtp_messages_per_s": round(MESSAGES / raw_s, 1),
                    "pipeline_vs_raw": round(raw_s / pipeline_s, 3),
                    "pipeline_cpu_us_per_message": round(pipeline_cpu_s / MESSAGES * 1e6),
                    "raw_smtp_cpu_us_per_message": round(raw_cpu_s / MESSAGES * 1e6),
                }
            )
        await raw.close()
        if totals.get("sent") != MESSAGES * ROUNDS:
            raise RuntimeError(f"the pipeline did not send everything: {totals}")
        median = _median_round(rounds)
        pipeline_total_s = sum(MESSAGES / r["pipeline_messages_per_s"] for r in rounds)
        raw_total_s = sum(MESSAGES / r["raw_smtp_messages_per_s"] for r in rounds)
        return {
            "messages": MESSAGES,
            "rounds": ROUNDS,
            "smtp_connections": CONNECTIONS,
            "parallel_jobs": PARALLEL_JOBS,
            **median,
            # Over all rounds together: total raw time over total pipeline time.
            "pipeline_vs_raw_all_rounds": round(raw_total_s / pipeline_total_s, 3),
            "all_rounds": rounds,
            "outcomes": totals,
            "goals": {
                "pipeline_messages_per_s": GOAL_MESSAGES_PER_S,
                "pipeline_vs_raw": GOAL_VS_RAW,
                "met": median["pipeline_messages_per_s"] >= GOAL_MESSAGES_PER_S
                and median["pipeline_vs_raw"] >= GOAL_VS_RAW,
            },
        }
    finally:
        await mailer.close()
        await ctx.composer.close()
        await client.aclose()
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()
        await asyncio.to_thread(_remove_caught_bench_mail, since=started_stamp)
