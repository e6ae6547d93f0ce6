"""Composing in worker processes: the same messages as on the event loop, a bad template refused
alone, a hard limit on time, a limit on memory, a killed worker replaced without losing the job, workers that
cannot start failing the job (so its sends stay queued) instead of refusing anything, and
workers that end when the service is killed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cdp_campaign.domain.compose import Composed, Draft, Refused, Tracking
from cdp_campaign.gateways import ComposerUnavailable, InlineComposer, ProcessComposer
from cdp_common.testing import wait_until
from prometheus_client import REGISTRY

pytestmark = pytest.mark.integration

BODY = (
    "<html><body><p>Hi {{ profile.first_name | default('there') }}</p>"
    '<a href="https://shop.example/sale">Sale</a></body></html>'
)


def replaced(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("cdp_campaign_composing_workers_replaced_total", {"reason": reason}) or 0.0
    )


def drafts(n: int) -> list[Draft]:
    values: dict[str, Any] = {
        "profile": {"first_name": "Ada"},
        "computed": {},
        "segments": [],
        "locale": "en",
    }
    made = []
    for i in range(n):
        channel = ("email", "sms", "webhook")[i % 3]
        made.append(
            Draft(
                channel=channel,
                subject="Hello {{ profile.first_name }}" if channel != "sms" else None,
                body=BODY if channel != "sms" else "Hi {{ profile.first_name }}, 10% off",
                text=None,
                values={**values, "profile": {"first_name": f"Ada{i}"}},
                reference=f"snd_{i:04d}",
                sender="Shop <news@shop.example>",
                to=f"ada{i}@example.com",
                tracking=Tracking(key="k", base_url="https://cdp.example") if channel == "email" else None,
            )
        )
    return made


def webhook(body: str) -> Draft:
    """A draft of a webhook body alone, with no values."""
    return Draft(channel="webhook", subject=None, body=body, text=None, values={}, reference="odd")


def _comparable(result: Composed | Refused) -> Any:
    if isinstance(result, Refused):
        return result
    if result.mail is None:
        return (result.subject, result.body, result.text)
    message = result.mail.parsed()
    headers = {k: v for k, v in message.items() if k not in ("Date", "Message-ID")}
    return (result.subject, result.body, headers, [part.get_content() for part in message.iter_parts()])


@pytest.fixture
async def workers() -> AsyncIterator[ProcessComposer]:
    composer = ProcessComposer(processes=2, timeout_s=5)
    await composer.start()
    yield composer
    await composer.close()


async def test_workers_compose_what_the_event_loop_would(workers: ProcessComposer) -> None:
    batch = drafts(30)
    in_workers = await workers.compose_many(batch)
    on_the_loop = await InlineComposer().compose_many(batch)
    assert [_comparable(r) for r in in_workers] == [_comparable(r) for r in on_the_loop]
    first = in_workers[0]
    assert isinstance(first, Composed)
    assert first.mail is not None
    assert first.mail.recipients == ("ada0@example.com",)
    assert first.mail.parsed()["Subject"] == "Hello Ada0"
    assert "https://cdp.example/v1/t/click/" in first.mail.data.decode()
    assert in_workers[1] == Composed(None, "Hi Ada1, 10% off", None)


async def test_a_bad_template_is_refused_alone(workers: ProcessComposer) -> None:
    batch = drafts(4)
    batch[2] = webhook("{{ ''.__class__.__mro__ }}")
    results = await workers.compose_many(batch)
    assert isinstance(results[2], Refused)
    assert "unsafe" in results[2].reason
    assert all(isinstance(r, Composed) for i, r in enumerate(results) if i != 2)


async def test_a_killed_worker_is_replaced_and_nothing_is_lost() -> None:
    others = {p.pid for p in multiprocessing.active_children()}
    composer = ProcessComposer(processes=2, timeout_s=5)
    try:
        await composer.start()
        assert all(isinstance(r, Composed) for r in await composer.compose_many(drafts(4)))
        ours = [p.pid for p in multiprocessing.active_children() if p.pid not in others and p.pid is not None]
        assert ours, "the workers run as child processes"
        for pid in ours:
            os.kill(pid, signal.SIGKILL)
        before = replaced("died")
        results = await composer.compose_many(drafts(6))
        assert replaced("died") > before
    finally:
        await composer.close()
    assert all(isinstance(r, Composed) for r in results), results


# Loops over a list made before them call nothing and write nothing, so the sandbox's own clock
# never looks: only the workers' hard limit stops this template, which would loop 10^12 times.
ENDLESS = (
    "{% set r = range(10000) | list %}"
    "{% for a in r %}{% for b in r %}{% for c in r %}{% endfor %}{% endfor %}{% endfor %}"
)


async def test_a_draft_past_the_hard_limit_is_refused_alone() -> None:
    composer = ProcessComposer(processes=1, timeout_s=2)
    batch = drafts(3)
    batch[1] = webhook(ENDLESS)
    before = replaced("timeout")
    try:
        await composer.start()
        results = await composer.compose_many(batch)
    finally:
        await composer.close()
    assert replaced("timeout") - before == 2, "the chunk, then the endless draft alone"
    assert isinstance(results[1], Refused)
    assert "longer than 2s" in results[1].reason
    assert isinstance(results[0], Composed), results
    assert isinstance(results[2], Composed), results
    assert "<p>Hi Ada2</p>" in results[2].body, "the drafts after it are composed as usual"


async def test_a_draft_past_the_memory_limit_is_refused_and_the_worker_carries_on() -> None:
    # `center` builds its 4 GB result before the sandbox could look at its size.
    composer = ProcessComposer(processes=1, timeout_s=30, memory_limit_mb=512)
    batch = drafts(3)
    batch[1] = webhook('{{ "x" | center(4000000000) }}')
    before = (replaced("timeout"), replaced("died"))
    try:
        await composer.start()
        results = await composer.compose_many(batch)
        again = await composer.compose_many(drafts(2))
    finally:
        await composer.close()
    assert isinstance(results[1], Refused)
    assert "more memory" in results[1].reason
    assert isinstance(results[0], Composed), results
    assert isinstance(results[2], Composed), results
    assert all(isinstance(r, Composed) for r in again), again
    assert (replaced("timeout"), replaced("died")) == before, "the worker was not replaced"


class NeverStarting(ProcessComposer):
    STARTUP_TIMEOUT_S = 0.000001


async def test_workers_that_cannot_start_refuse_nothing_and_fail_the_job() -> None:
    composer = NeverStarting(processes=1, timeout_s=5)
    try:
        await composer.start()  # logged, not raised: the service still starts
        with pytest.raises(ComposerUnavailable, match="did not start"):
            await composer.compose_many(drafts(3))
    finally:
        await composer.close()


SERVICE_WITH_WORKERS = """
import asyncio, multiprocessing, sys
from cdp_campaign.gateways import ProcessComposer

async def main():
    composer = ProcessComposer(processes=2, timeout_s=5)
    await composer.start()
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    await asyncio.Event().wait()  # until the test kills it

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_workers_end_when_the_service_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(SERVICE_WITH_WORKERS)
    service = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        workers = [int(pid) for pid in service.stdout.readline().split()]
        assert len(workers) >= 2, workers  # the workers and multiprocessing's resource tracker
    finally:
        service.kill()
        service.wait(timeout=10)

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"

    wait_until(lambda: not any(alive(pid) for pid in workers), timeout=20, what="the workers to end")
