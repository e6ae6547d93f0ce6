"""Sending mail through SMTP at `CDP_SMTP_URL` (smtp://, or smtps:// for implicit TLS)."""

from __future__ import annotations

from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib


class MailNotSent(Exception):
    """The SMTP server could not be reached or refused the message."""


async def send_mail(*, smtp_url: str, message: EmailMessage, timeout_s: float) -> None:
    """Send one message, or raise MailNotSent."""
    parts = urlsplit(smtp_url)
    implicit_tls = parts.scheme == "smtps"
    try:
        await aiosmtplib.send(
            message,
            hostname=parts.hostname or "127.0.0.1",
            port=parts.port or (465 if implicit_tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=implicit_tls,
            timeout=timeout_s,
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise MailNotSent(type(exc).__name__) from exc
