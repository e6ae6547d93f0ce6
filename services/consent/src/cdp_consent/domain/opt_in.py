"""Double opt-in for e-mail (BGH I ZR 164/09): the single-use token and the confirmation mail,
which asks for confirmation and carries no advertising."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from email.message import EmailMessage
from enum import StrEnum


class OptInStatus(StrEnum):
    """Where an opt-in request stands."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    EXPIRED = "expired"


class ConfirmationRefused(Exception):
    """The confirmation link cannot confirm anything: unknown, used or expired."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def new_token() -> tuple[str, str]:
    """Return a new single-use token and the hash under which it is stored."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    """Return the SHA-256 of a token: the token itself is never stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def confirmation_mail(
    *,
    sender: str,
    recipient: str,
    link: str,
    purpose: str,
    wording: str | None,
    wording_version: str | None,
    expires_at: datetime,
) -> EmailMessage:
    """Compose the confirmation mail: what was asked, the link, and nothing else."""
    agreed = f'\n\nYou agreed to:\n"{wording}"' if wording else ""
    version = f" (version {wording_version})" if wording_version else ""
    body = (
        "Hello,\n\n"
        f"someone, hopefully you, asked to receive {purpose.replace('_', ' ')} at this address."
        f"{agreed}{version}\n\n"
        "Please confirm that this is your address and that you want this by opening the link below:\n\n"
        f"{link}\n\n"
        f"The link works once and expires on {expires_at:%Y-%m-%d %H:%M} UTC.\n"
        "If you did not ask for this, ignore this e-mail: without your confirmation you will not "
        "receive anything from us.\n"
    )
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = "Please confirm your e-mail address"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body)
    return message
