"""The operator CLI `cdp` against the session's running services, Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from cdp_cli.main import app
from cdp_cli.rates import read_ecb_rates
from cdp_common.events import DeadLetter, ProfileErased, make_envelope
from cdp_common.testing import PlatformUnderTest, Stack, free_port, wait_for
from typer.testing import CliRunner

from .dashboards import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SAMPLES = ROOT / "libs/common/samples"
# Three days of the ECB's euro reference rates as it publishes them (eurofxref-hist.csv).
ECB_SAMPLE = ROOT / "tests/ops/fixtures/ecb-reference-rates-sample.csv"


def cli_env(stack: Stack, platform: PlatformUnderTest, **overrides: str) -> dict[str, str]:
    env = {f"CDP_{name.upper()}_URL": stack.url(name) for name in stack.services}
    env.update(
        CDP_ADMIN_TOKEN=stack.admin_token,
        CDP_WRITE_KEY=stack.write_key,
        CDP_KAFKA_BOOTSTRAP=platform.kafka_bootstrap,
        CDP_ENV=platform.env,
    )
    env.update(overrides)
    return env


def cdp(stack: Stack, platform: PlatformUnderTest, *args: str, **overrides: str) -> Any:
    result = CliRunner().invoke(
        app, ["--env-file", "/dev/null", *args], env=cli_env(stack, platform, **overrides)
    )
    return result


def wait(probe: Any, what: str, timeout: float = 30) -> Any:
    return asyncio.run(wait_for(probe, timeout=timeout, what=what))


def profile_status(stack: Stack, ref: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else stack.admin()
    return httpx.get(f"{stack.url('profile')}/v1/profiles/{ref}", headers=headers, timeout=10).status_code


def test_sources_are_created_and_listed(stack: Stack, platform: PlatformUnderTest) -> None:
    name = f"ops shop {secrets.token_hex(3)}"
    created = cdp(stack, platform, "sources", "create", name)
    assert created.exit_code == 0, created.output
    assert "write key: wk_" in created.output
    listed = cdp(stack, platform, "sources", "list")
    assert listed.exit_code == 0, listed.output
    assert name in listed.output


def test_a_token_works_everywhere_until_revoked(stack: Stack, platform: PlatformUnderTest) -> None:
    created = cdp(stack, platform, "tokens", "create", "ops-reader", "--scope", "profiles:read")
    assert created.exit_code == 0, created.output
    token = created.output.split("token: ")[1].split()[0]
    token_id = created.output.split()[1]

    async def accepted() -> bool:
        return profile_status(stack, f"user_id:nobody-{token_id}", token) == 404

    wait(accepted, "profile to accept the new token")
    assert token_id in cdp(stack, platform, "tokens", "list").output
    revoked = cdp(stack, platform, "tokens", "revoke", token_id)
    assert revoked.exit_code == 0, revoked.output

    async def refused() -> bool:
        return profile_status(stack, f"user_id:nobody-{token_id}", token) == 401

    wait(refused, "profile to refuse the revoked token")


def test_a_bad_token_gives_a_clear_error(stack: Stack, platform: PlatformUnderTest) -> None:
    result = cdp(stack, platform, "sources", "list", CDP_ADMIN_TOKEN="cdp_wrong")
    assert result.exit_code == 1
    assert "401" in result.output


def test_status_shows_every_service_ready_with_its_consumer_groups(
    stack: Stack, platform: PlatformUnderTest
) -> None:
    result = cdp(stack, platform, "status")
    assert result.exit_code == 0, result.output
    assert result.output.count("ready") >= 5
    assert f"{platform.env}.profile.events" in result.output
    down = cdp(stack, platform, "status", CDP_CAMPAIGN_URL=f"http://127.0.0.1:{free_port()}")
    assert down.exit_code == 1
    assert "unreachable" in down.output


def test_transactions_are_imported_from_csv_with_bad_rows_named(
    stack: Stack, platform: PlatformUnderTest, tmp_path: Path
) -> None:
    run = secrets.token_hex(4)
    csv_file = tmp_path / "orders.csv"
    csv_file.write_text(
        "order_id,user_id,email,total,currency,channel,store_id,time,sku,name,price,quantity\n"
        f"A-{run},buyer-{run},Buyer-{run}@Example.com,30.00,EUR,online,,2026-11-01T10:00:00+00:00,sku-1,Mug,10.00,1\n"
        f"A-{run},buyer-{run},Buyer-{run}@Example.com,30.00,EUR,online,,2026-11-01T10:00:00+00:00,sku-2,Tea,10.00,2\n"
        f"B-{run},buyer-{run},,12.50,EUR,store,berlin-1,2026-11-02T11:00:00+00:00,sku-3,Cup,12.50,1\n"
        f"C-{run},buyer-{run},,5.00,euro,online,,2026-11-03T12:00:00+00:00,sku-4,Spoon,5.00,1\n"
    )
    result = cdp(stack, platform, "import", "transactions", str(csv_file))
    assert "2 transactions accepted, 1 rejected" in result.output, result.output
    assert f"line 5 (order C-{run})" in result.output
    assert result.exit_code == 1

    async def imported() -> bool:
        return profile_status(stack, f"user_id:buyer-{run}") == 200

    wait(imported, "the buyer's profile")


def test_an_import_of_a_file_without_the_needed_columns_is_refused(
    stack: Stack, platform: PlatformUnderTest, tmp_path: Path
) -> None:
    csv_file = tmp_path / "wrong.csv"
    csv_file.write_text("id,amount\n1,2\n")
    result = cdp(stack, platform, "import", "transactions", str(csv_file))
    assert result.exit_code == 1
    assert "missing columns" in result.output


def tracking_envelope(user_id: str) -> bytes:
    document = json.loads((SAMPLES / "cdp.event.received.v1.json").read_text())
    document["id"] = str(uuid.uuid4())
    document["subject"] = user_id
    document["data"]["userId"] = user_id
    document["data"]["messageId"] = f"ops-{uuid.uuid4()}"
    document["data"]["anonymousId"] = str(uuid.uuid4())
    return json.dumps(document).encode()


def profile_message(profile_id: str) -> bytes:
    document = json.loads((SAMPLES / "cdp.profile.updated.v1.json").read_text())
    document["id"] = str(uuid.uuid4())
    document["subject"] = profile_id
    return json.dumps(document).encode()


def dead_letter(*, topic: str, key: str, value: bytes) -> bytes:
    letter = DeadLetter(
        group_id="ops.test",
        topic=topic,
        partition=0,
        offset=0,
        key=key,
        value=value.decode(),
        error="boom",
        attempts=4,
    )
    return make_envelope(payload=letter, source="profile", subject=key).to_bytes()


async def publish(bootstrap: str, messages: list[tuple[str, str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send_and_wait(topic, value, key=key.encode())
    finally:
        await producer.stop()


def test_dlq_replay_republishes_dead_letters_and_skips_erased_profiles(
    stack: Stack, platform: PlatformUnderTest
) -> None:
    env = platform.env
    events, profiles = f"{env}.cdp.events.v1", f"{env}.cdp.profiles.v1"
    user = f"replayed-{secrets.token_hex(4)}"
    erased_id = str(uuid.uuid4())
    erasure = make_envelope(
        payload=ProfileErased(profile_id=erased_id, version=2, request_id=str(uuid.uuid4())),
        source="profile",
        subject=erased_id,
    ).to_bytes()
    asyncio.run(
        publish(
            platform.kafka_bootstrap,
            [
                (profiles, erased_id, erasure),
                (
                    f"{env}.cdp.events.dlq.v1",
                    user,
                    dead_letter(topic=events, key=user, value=tracking_envelope(user)),
                ),
                (
                    f"{env}.cdp.profiles.dlq.v1",
                    erased_id,
                    dead_letter(topic=profiles, key=erased_id, value=profile_message(erased_id)),
                ),
            ],
        )
    )
    assert profile_status(stack, f"user_id:{user}") == 404
    dry = cdp(stack, platform, "dlq", "replay", "--topic", "events", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would_replay" in dry.output

    replayed = cdp(stack, platform, "dlq", "replay", "--topic", "events")
    assert replayed.exit_code == 0, replayed.output
    assert "replayed" in replayed.output

    async def arrived() -> bool:
        return profile_status(stack, f"user_id:{user}") == 200

    wait(arrived, "the replayed event's profile", timeout=60)

    skipped = cdp(stack, platform, "dlq", "replay", "--topic", "cdp.profiles.v1")
    assert skipped.exit_code == 0, skipped.output
    assert "skipped_erased" in skipped.output
    assert "replayed" not in skipped.output


def test_dlq_replay_names_the_topics_it_knows(stack: Stack, platform: PlatformUnderTest) -> None:
    result = cdp(stack, platform, "dlq", "replay", "--topic", "nonsense")
    assert result.exit_code == 1
    assert "unknown topic" in result.output


def test_jobs_are_listed_watched_to_their_end_and_refused_a_cancel_once_finished(
    stack: Stack, platform: PlatformUnderTest
) -> None:
    key = "cli_views_" + secrets.token_hex(3)
    started = httpx.post(
        f"{stack.url('profile')}/v1/computed-traits",
        json={"key": key, "aggregation": "count", "event_name": "Product Viewed"},
        headers=stack.admin(),
        timeout=10,
    )
    assert started.status_code == 202, started.text
    job_id = started.json()["job"]["id"]
    watched = cdp(stack, platform, "jobs", "watch", job_id, "--interval", "0.2")
    assert watched.exit_code == 0, watched.output
    assert "computed_trait_backfill" in watched.output
    assert "succeeded" in watched.output
    listed = cdp(stack, platform, "jobs")
    assert listed.exit_code == 0, listed.output
    assert job_id in listed.output.replace("\n", "") or job_id[:20] in listed.output
    shown = cdp(stack, platform, "jobs", "show", job_id)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["service"] == "profile"
    cancelled = cdp(stack, platform, "jobs", "cancel", job_id)
    assert cancelled.exit_code == 1
    assert "already finished" in cancelled.output
    unknown = cdp(stack, platform, "jobs", "watch", "job_" + "0" * 32)
    assert unknown.exit_code == 1
    assert "no service knows the job" in unknown.output


def test_the_ecb_reference_rate_file_is_read_day_by_day_without_missing_rates() -> None:
    days = list(read_ecb_rates(ECB_SAMPLE))
    assert [day["date"] for day in days] == ["2024-01-05", "2024-01-04", "2024-01-03"]
    assert days[0] == {
        "date": "2024-01-05",
        "base": "EUR",
        "rates": {"USD": "1.0921", "JPY": "158.08", "GBP": "0.8597", "CHF": "0.9298"},
    }
    assert days[1]["rates"]["ISK"] == "150.10"


def test_the_ecb_reference_rates_are_imported_and_read_back_for_any_day(
    stack: Stack, platform: PlatformUnderTest
) -> None:
    result = cdp(stack, platform, "import", "exchange-rates", str(ECB_SAMPLE))
    assert result.exit_code == 0, result.output
    assert "3 days of exchange rates loaded (17 rates)" in result.output

    def rate(currency: str, day: str) -> httpx.Response:
        return httpx.get(
            f"{stack.url('profile')}/v1/exchange-rates",
            params={"currency": currency, "date": day},
            headers=stack.admin(),
            timeout=10,
        )

    # Saturday 6 January 2024 has no rates: Friday's stand, as the ECB published them.
    dollar = rate("USD", "2024-01-06").json()
    assert (dollar["rates_date"], dollar["base"], dollar["rate"]) == ("2024-01-05", "EUR", 1.0921)
    assert dollar["reporting_currency"] == "EUR"
    assert dollar["value_of_one"] == pytest.approx(1 / 1.0921)
    # The krona was N/A on the 5th: the 4th's rate stands.
    krona = rate("ISK", "2024-01-05").json()
    assert (krona["rates_date"], krona["rate"]) == ("2024-01-04", 150.10)
    missing = rate("USD", "2024-01-02")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "rate_not_found"


def test_a_file_that_is_not_a_reference_rate_csv_is_refused(
    stack: Stack, platform: PlatformUnderTest, tmp_path: Path
) -> None:
    wrong = tmp_path / "rates.csv"
    wrong.write_text("Day,USD\n2024-01-05,1.09\n")
    result = cdp(stack, platform, "import", "exchange-rates", str(wrong))
    assert result.exit_code == 1
    assert "the first column must be Date" in result.output
