"""The campaign service's ways out: the consent service, ingest's tracking API, SMTP, an SMS
provider and webhooks, and the worker processes that compose messages. Each is a protocol with
the real implementation beside it; main.py builds the real ones, tests pass fakes through the
same seams."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import multiprocessing
import ssl
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiosmtplib
import httpx
import orjson

from cdp_campaign.domain.addresses import (
    AddressNotAllowed,
    IpNetwork,
    Resolver,
    pinned_request,
    resolve_allowed,
    system_resolver,
)
from cdp_campaign.domain.compose import Composed, Draft, Refused, compose_all, worker_started
from cdp_campaign.domain.messages import OutgoingMail
from cdp_campaign.metrics import COMPOSING_WORKERS_REPLACED
from cdp_campaign.settings import Settings

logger = logging.getLogger(__name__)


class Clock(Protocol):
    """Tells the time; tests pass one they move by hand."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real time, in UTC."""

    def now(self) -> datetime:
        """Return the current time."""
        return datetime.now(UTC)


# --- composing ---------------------------------------------------------------------------


class Composer(Protocol):
    """Renders drafts into sends (templates, and the e-mail built), one result per draft in order."""

    async def start(self) -> None: ...

    async def compose_many(self, drafts: Sequence[Draft]) -> list[Composed | Refused]: ...

    async def close(self) -> None: ...


class InlineComposer:
    """Composes on the event loop itself (CDP_CAMPAIGN_COMPOSE_PROCESSES=0)."""

    async def start(self) -> None:
        """Nothing to start."""

    async def compose_many(self, drafts: Sequence[Draft]) -> list[Composed | Refused]:
        """Compose every draft here and now."""
        return compose_all(drafts)

    async def close(self) -> None:
        """Nothing to release."""


class ComposerUnavailable(Exception):
    """The composing workers cannot start; the sends stay queued and the job is retried."""


class ProcessComposer:
    """Composes in worker processes, a chunk of drafts per worker.

    Templates are user-supplied code: each render is bounded by the sandbox's own budget, and
    the worker processes add a hard limit on top. A chunk that runs past `timeout_s` per draft
    (or whose worker dies) gets its pool replaced, and its drafts are composed again one at a
    time, so that only the draft at fault is refused. When the workers cannot even start,
    ComposerUnavailable is raised and nothing is refused.

    The workers are spawned, so the program's main module must be importable without side
    effects (`if __name__ == "__main__":`), as multiprocessing requires.
    """

    STARTUP_TIMEOUT_S = 60.0

    def __init__(self, *, processes: int, timeout_s: float, memory_limit_mb: int | None = None) -> None:
        self._processes = processes
        self._timeout_s = timeout_s
        self._memory_limit_bytes = memory_limit_mb * 2**20 if memory_limit_mb else None
        self._pool: ProcessPoolExecutor | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Start the workers now rather than at the first send; a failure is logged and retried then."""
        try:
            await self._executor()
        except ComposerUnavailable as exc:
            logger.warning("%s; sending will try again", exc)

    async def _executor(self) -> ProcessPoolExecutor:
        async with self._starting:
            if self._pool is None:
                # Spawned, not forked: the service has threads and open sockets a fork would copy.
                pool = ProcessPoolExecutor(
                    max_workers=self._processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=worker_started,
                    initargs=(self._memory_limit_bytes,),
                )
                loop = asyncio.get_running_loop()
                try:
                    # The workers start (and import the templates' code) before any deadline runs.
                    await asyncio.wait_for(
                        asyncio.gather(
                            *(loop.run_in_executor(pool, compose_all, []) for _ in range(self._processes))
                        ),
                        timeout=self.STARTUP_TIMEOUT_S,
                    )
                except (TimeoutError, BrokenProcessPool, RuntimeError) as exc:
                    self._replace(pool)
                    COMPOSING_WORKERS_REPLACED.labels("not_started").inc()
                    raise ComposerUnavailable(f"the composing workers did not start: {exc!r}") from exc
                self._pool = pool
            return self._pool

    def _replace(self, pool: ProcessPoolExecutor) -> None:
        """Kill a pool's workers (one may be stuck in a template) and start afresh next time."""
        if self._pool is pool:
            self._pool = None
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.kill()

    async def _run(self, drafts: Sequence[Draft]) -> list[Composed | Refused] | None:
        """Compose a chunk in a worker; None when it ran out of time or its worker died."""
        pool = await self._executor()
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(pool, compose_all, list(drafts)), timeout=self._timeout_s * len(drafts)
            )
        except (TimeoutError, BrokenProcessPool) as exc:
            COMPOSING_WORKERS_REPLACED.labels("timeout" if isinstance(exc, TimeoutError) else "died").inc()
            logger.warning(
                "composing worker replaced (%s)", type(exc).__name__, extra={"drafts": len(drafts)}
            )
            self._replace(pool)
            return None

    async def _chunk_or_one_by_one(self, drafts: Sequence[Draft]) -> list[Composed | Refused]:
        together = await self._run(drafts)
        if together is not None:
            return together
        results: list[Composed | Refused] = []
        for draft in drafts:
            alone = await self._run([draft])
            results.extend(
                alone
                if alone is not None
                else [Refused(f"composing took longer than {self._timeout_s}s or stopped its worker")]
            )
        return results

    async def compose_many(self, drafts: Sequence[Draft]) -> list[Composed | Refused]:
        """Compose drafts in one chunk per worker; results in the drafts' order.

        One task per worker and job keeps the jobs in order: the first job's messages are ready
        first, rather than every job's at once."""
        if not drafts:
            return []
        size = -(-len(drafts) // self._processes)
        chunks = [drafts[i : i + size] for i in range(0, len(drafts), size)]
        parts = await asyncio.gather(*(self._chunk_or_one_by_one(c) for c in chunks))
        return [result for part in parts for result in part]

    async def close(self) -> None:
        """Stop the workers."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


def composer_for(*, settings: Settings) -> Composer:
    """The composer a service with these settings uses: worker processes, or none (0)."""
    if not settings.campaign_compose_processes:
        return InlineComposer()
    return ProcessComposer(
        processes=settings.campaign_compose_processes,
        timeout_s=settings.campaign_compose_timeout_s,
        memory_limit_mb=settings.campaign_compose_memory_mb,
    )


# --- consent -----------------------------------------------------------------------------


class ConsentUnavailable(Exception):
    """The consent service could not answer; nobody may be contacted."""


@dataclass(frozen=True)
class ConsentVerdicts:
    """Which profiles may be contacted, and why the others may not."""

    allowed: set[str]
    refused: dict[str, str]


class ConsentGate(Protocol):
    """The consent service's check, exclusions from a gated purpose, suppression lookup and withdrawal."""

    async def check(self, *, profile_ids: Sequence[str], purpose: str, channel: str) -> ConsentVerdicts: ...

    async def excluded(self, *, profile_ids: Sequence[str], purpose: str) -> set[str]: ...

    async def is_suppressed(self, *, kind: str, value: str) -> bool: ...

    async def withdraw(self, *, profile_id: str, purpose: str, channel: str, at: datetime) -> None: ...


class HttpConsentGate:
    """Calls the consent service's API; any failure is ConsentUnavailable (fail closed)."""

    def __init__(self, *, client: httpx.AsyncClient, base_url: str, token: str) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    # Questions (check, lookup) are asked again after these pauses when the service could not
    # be reached or answered that it is unavailable; a withdrawal is not repeated here.
    RETRY_DELAYS_S = (0.05, 0.25)
    RETRY_STATUSES = frozenset({502, 503, 504})

    async def _post(self, path: str, body: dict[str, Any], *, question: bool = False) -> dict[str, Any]:
        failure = ConsentUnavailable("consent service not asked")
        for delay in (0.0, *self.RETRY_DELAYS_S) if question else (0.0,):
            if delay:
                await asyncio.sleep(delay)
            try:
                response = await self._client.post(
                    f"{self._base}{path}", content=orjson.dumps(body), headers=self._headers
                )
            except httpx.HTTPError as exc:
                failure = ConsentUnavailable(f"consent service unreachable: {type(exc).__name__}")
                continue
            if response.status_code in self.RETRY_STATUSES:
                failure = ConsentUnavailable(f"consent service answered {response.status_code}")
                continue
            if response.status_code >= 300:
                raise ConsentUnavailable(f"consent service answered {response.status_code}")
            try:
                document: dict[str, Any] = orjson.loads(response.content)
            except ValueError as exc:
                raise ConsentUnavailable("consent service answered something that is not JSON") from exc
            return document
        raise failure

    async def check(self, *, profile_ids: Sequence[str], purpose: str, channel: str) -> ConsentVerdicts:
        """Ask which profiles may be contacted for a purpose on a channel."""
        document = await self._post(
            "/v1/consents/check",
            {"purpose": purpose, "channel": channel, "profile_ids": list(profile_ids)},
            question=True,
        )
        allowed = set(document.get("allowed") or []) & set(profile_ids)
        refused = {str(k): str(v) for k, v in (document.get("refused") or {}).items()}
        return ConsentVerdicts(allowed=allowed, refused=refused)

    async def excluded(self, *, profile_ids: Sequence[str], purpose: str) -> set[str]:
        """Ask which profiles are excluded from a gated purpose (such as personalisation)."""
        if not profile_ids:
            return set()
        document = await self._post(
            "/v1/consents/exclusions", {"purpose": purpose, "profile_ids": list(profile_ids)}, question=True
        )
        return set(document.get("excluded") or []) & set(profile_ids)

    async def is_suppressed(self, *, kind: str, value: str) -> bool:
        """Ask whether an address is on the suppression list."""
        document = await self._post("/v1/suppressions/lookup", {"type": kind, "value": value}, question=True)
        return bool(document.get("suppressed", True))

    async def withdraw(self, *, profile_id: str, purpose: str, channel: str, at: datetime) -> None:
        """Record a withdrawal of consent (an unsubscribe)."""
        await self._post(
            "/v1/consents",
            {
                "profile_id": profile_id,
                "purpose": purpose,
                "channel": channel,
                "status": "withdrawn",
                "source": "campaign.unsubscribe",
                "at": at.isoformat(),
            },
        )


# --- engagement back through ingest ---------------------------------------------------------


class EngagementTracker(Protocol):
    """Sends engagement events back into the platform, so they land in the profile."""

    async def track(
        self, *, profile_id: str, event: str, properties: dict[str, Any], message_id: str, at: datetime
    ) -> None: ...


class IngestTracker:
    """Posts Segment track calls to ingest with the default source's write key."""

    def __init__(
        self, *, client: httpx.AsyncClient, base_url: str, write_key: str, attempts: int = 3
    ) -> None:
        self._client = client
        self._url = base_url.rstrip("/") + "/v1/track"
        self._write_key = write_key
        self._attempts = attempts

    async def track(
        self, *, profile_id: str, event: str, properties: dict[str, Any], message_id: str, at: datetime
    ) -> None:
        """Send one track call naming the profile through context.externalIds."""
        body = {
            "event": event,
            "messageId": message_id,
            "timestamp": at.isoformat(),
            "properties": properties,
            "context": {
                "externalIds": [
                    {"id": profile_id, "type": "profile_id", "collection": "users", "encoding": "none"}
                ]
            },
        }
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._client.post(self._url, json=body, auth=(self._write_key, ""))
                if response.status_code < 500:
                    if response.status_code >= 300:
                        logger.warning(
                            "ingest refused an engagement event", extra={"status": response.status_code}
                        )
                    return
            except httpx.HTTPError:
                if attempt == self._attempts:
                    raise
            await asyncio.sleep(0.1 * 2**attempt)


# --- e-mail ----------------------------------------------------------------------------------


class HandOverUnknown(Exception):
    """The connection broke after the message was given: whether it went out is unknown."""


class Rejected(Exception):
    """The server refused the message for good (a bounce)."""


class TemporaryFailure(Exception):
    """The server could not take the message now; nothing was handed over."""


class MailSender(Protocol):
    """Hands e-mails over to an SMTP server."""

    async def send(self, message: OutgoingMail) -> None: ...


class SmtpMailer:
    """A small pool of persistent SMTP connections to CDP_SMTP_URL."""

    def __init__(self, *, url: str, connections: int, timeout_s: float) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (465 if parts.scheme == "smtps" else 25)
        self._tls = parts.scheme == "smtps"
        self._starttls = parts.scheme == "smtp+starttls"
        self._username = parts.username
        self._password = parts.password
        self._timeout = timeout_s
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(connections)

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._tls,
            start_tls=self._starttls or None,
            timeout=self._timeout,
            username=self._username,
            password=self._password,
        )
        await client.connect()
        return client

    async def _take_connection(self) -> aiosmtplib.SMTP:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
        try:
            return await self._connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TemporaryFailure(f"cannot connect to the SMTP server: {type(exc).__name__}") from exc

    async def send(self, message: OutgoingMail) -> None:
        """Hand one message over; raise Rejected, TemporaryFailure or HandOverUnknown when it did not go."""
        async with self._slots:
            client = await self._take_connection()
            healthy = False
            try:
                await client.sendmail(message.sender, list(message.recipients), message.data)
                healthy = True
            except aiosmtplib.SMTPRecipientsRefused as exc:
                healthy = True
                if all(400 <= r.code < 500 for r in exc.recipients):
                    raise TemporaryFailure(str(exc)) from exc
                raise Rejected(str(exc)) from exc
            except aiosmtplib.SMTPResponseException as exc:
                healthy = True
                if 400 <= exc.code < 500:
                    raise TemporaryFailure(str(exc)) from exc
                raise Rejected(str(exc)) from exc
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
                raise HandOverUnknown(
                    f"the SMTP connection broke during the hand-over: {type(exc).__name__}"
                ) from exc
            finally:
                if healthy and client.is_connected:
                    self._idle.append(client)
                else:
                    client.close()

    async def close(self) -> None:
        """Close the idle connections."""
        while self._idle:
            client = self._idle.pop()
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()


# --- SMS -------------------------------------------------------------------------------------


class SmsProvider(Protocol):
    """Sends a text message to a phone number (E.164)."""

    async def send_sms(self, *, to: str, body: str, reference: str) -> None: ...


class HttpSmsProvider:
    """An SMS provider reached over HTTP: POST {to, body, reference} with a bearer token."""

    def __init__(self, *, client: httpx.AsyncClient, url: str, token: str) -> None:
        self._client = client
        self._url = url
        self._token = token

    async def send_sms(self, *, to: str, body: str, reference: str) -> None:
        """Hand a text over to the provider."""
        if not self._url:
            raise Rejected("no SMS provider is configured (CDP_CAMPAIGN_SMS_URL)")
        try:
            response = await self._client.post(
                self._url,
                json={"to": to, "body": body, "reference": reference},
                headers={"Authorization": f"Bearer {self._token}"},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TemporaryFailure(f"SMS provider unreachable: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise HandOverUnknown(f"SMS hand-over interrupted: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TemporaryFailure(f"SMS provider answered {response.status_code}")
        if response.status_code >= 400:
            raise Rejected(f"SMS provider refused the message: {response.status_code}")


# --- webhooks ------------------------------------------------------------------------------


def webhook_signature(*, key: str, timestamp: str, body: bytes) -> str:
    """Return the signature header value of a webhook body: HMAC-SHA256 over `timestamp.body`."""
    digest = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class WebhookSender(Protocol):
    """Posts a signed JSON body to a user-configured URL."""

    async def post(self, *, url: str, payload: dict[str, Any], reference: str) -> None: ...


class SafeWebhookSender:
    """Posts webhooks only to public addresses (or allowlisted networks), without redirects.

    The host name is resolved once and every address it has is checked; the call then connects
    to a checked address, for http and https alike (https keeps the name for SNI and verifies the
    certificate for it), so a second DNS answer (DNS rebinding) cannot send it anywhere else.
    """

    def __init__(
        self,
        *,
        key: str,
        allowlist: Sequence[IpNetwork],
        timeout_s: float,
        resolve: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._key = key
        self._allowlist = list(allowlist)
        self._timeout = timeout_s
        self._resolve = resolve
        self._verify = verify

    async def post(self, *, url: str, payload: dict[str, Any], reference: str) -> None:
        """Check the addresses, then post once to a checked one; refuse redirects."""
        addresses = await asyncio.to_thread(
            resolve_allowed, url, allowlist=self._allowlist, resolve=self._resolve
        )
        pinned = pinned_request(url, addresses[0])
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-CDP-Signature": webhook_signature(key=self._key, timestamp=timestamp, body=body),
            "X-CDP-Delivery": reference,
            "Host": pinned.host_header,
        }
        extensions = {"sni_hostname": pinned.tls_name} if pinned.tls_name else {}
        async with httpx.AsyncClient(
            timeout=self._timeout, follow_redirects=False, trust_env=False, verify=self._verify
        ) as client:
            try:
                response = await client.post(pinned.url, content=body, headers=headers, extensions=extensions)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if _caused_by(exc, ssl.SSLCertVerificationError):
                    raise Rejected(
                        f"the webhook's TLS certificate is not valid for {pinned.tls_name}"
                    ) from exc
                raise TemporaryFailure(f"webhook unreachable: {type(exc).__name__}") from exc
            except httpx.HTTPError as exc:
                raise HandOverUnknown(f"webhook interrupted: {type(exc).__name__}") from exc
        if 300 <= response.status_code < 400:
            raise Rejected(
                f"webhook answered a redirect ({response.status_code}); redirects are not followed"
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise TemporaryFailure(f"webhook answered {response.status_code}")
        if response.status_code >= 400:
            raise Rejected(f"webhook answered {response.status_code}")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether an exception or one in its chain of causes is of a kind."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


__all__ = ["AddressNotAllowed"]
