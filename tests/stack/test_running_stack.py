"""The local stack started by `make up` (scripts/stack.sh up) works end to end.

These tests read .run/dev.env. Without it (the stack is not up) they are skipped
on a developer's machine and fail in CI.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
from cdp_common.testing import wait_until

from .conftest import RUN, SERVICE_PORTS, SERVICES, read_env_file, skip_unless_ci

DEV_ENV = RUN / "dev.env"
MAIL_DIR = RUN / "mail"

# The keys ARCHITECTURE.md promises, exactly.
DEV_ENV_KEYS = [
    "CDP_ADMIN_TOKEN",
    "CDP_WRITE_KEY",
    "CDP_INGEST_URL",
    "CDP_PROFILE_URL",
    "CDP_SEGMENT_URL",
    "CDP_CAMPAIGN_URL",
    "CDP_CONSENT_URL",
    "CDP_KAFKA_BOOTSTRAP",
    "CDP_DATABASE_URL",
    "CDP_PROMETHEUS_URL",
    "CDP_SMTP_URL",
]


@pytest.fixture(scope="module")
def dev_env() -> dict[str, str]:
    if not DEV_ENV.exists():
        skip_unless_ci(".run/dev.env is absent: the local stack is not running (start it with make up)")
    return dict(read_env_file(DEV_ENV))


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_dev_env_has_exactly_the_documented_keys() -> None:
    if not DEV_ENV.exists():
        skip_unless_ci(".run/dev.env is absent: the local stack is not running (start it with make up)")
    pairs = read_env_file(DEV_ENV)
    keys = [key for key, _ in pairs]
    assert sorted(keys) == sorted(DEV_ENV_KEYS), f"keys of .run/dev.env: {keys}"
    assert len(keys) == len(set(keys)), "a key is repeated"
    values = dict(pairs)
    assert all(values.values()), "a key has no value"
    assert values["CDP_ADMIN_TOKEN"].startswith("cdp_admin_")
    assert values["CDP_WRITE_KEY"].startswith("wk_")
    for service in SERVICES:
        assert values[f"CDP_{service.upper()}_URL"] == f"http://127.0.0.1:{SERVICE_PORTS[service]}"
    assert values["CDP_SMTP_URL"].startswith("smtp://127.0.0.1:")
    assert values["CDP_DATABASE_URL"].startswith("postgresql://")


@pytest.mark.parametrize("service", SERVICES)
def test_service_is_ready(dev_env: dict[str, str], service: str) -> None:
    url = dev_env[f"CDP_{service.upper()}_URL"] + "/readyz"
    status, body = http_get(url)
    assert status == 200, f"GET {url} answered {status}: {body[:300]!r}"


def test_prometheus_scrapes_every_service(dev_env: dict[str, str]) -> None:
    url = dev_env["CDP_PROMETHEUS_URL"] + "/api/v1/targets?state=active"
    health: dict[str, str] = {}

    def all_up() -> bool:
        status, body = http_get(url)
        if status == 200:
            targets = json.loads(body)["data"]["activeTargets"]
            health.update({t["labels"]["service"]: t["health"] for t in targets if "service" in t["labels"]})
        return all(health.get(service) == "up" for service in SERVICES)

    try:
        wait_until(all_up, timeout=60, interval=1, what="Prometheus to report every service as up")
    except AssertionError as exc:
        pytest.fail(f"{exc}; last seen: {health}")


def test_mail_catcher_writes_each_message_to_an_eml_file(dev_env: dict[str, str]) -> None:
    smtp = urllib.parse.urlsplit(dev_env["CDP_SMTP_URL"])
    assert smtp.scheme == "smtp"
    subject = f"Stack check {uuid.uuid4().hex}"
    message = EmailMessage()
    message["From"] = "platform@example.com"
    message["To"] = "someone@example.com"
    message["Subject"] = subject
    message.set_content("Hello from the stack tests.\n")
    with smtplib.SMTP(smtp.hostname or "127.0.0.1", smtp.port or 25, timeout=10) as client:
        client.send_message(message)

    def caught_message() -> tuple[Path, EmailMessage] | None:
        for path in sorted(MAIL_DIR.glob("*.eml"), reverse=True):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue  # someone cleaned the folder meanwhile; the message we sent is newer
            caught = email.message_from_bytes(raw, policy=email.policy.default)
            if caught["Subject"] == subject:
                assert isinstance(caught, EmailMessage)
                return path, caught
        return None

    path, caught = wait_until(
        caught_message, timeout=10, interval=0.2, what=f"an .eml file with subject {subject!r}"
    )
    assert caught["To"] == "someone@example.com"
    body = caught.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Hello from the stack tests." in body.get_content()
    assert Path(path).name.endswith(".eml")
