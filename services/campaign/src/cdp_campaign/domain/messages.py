"""Composing what goes out: e-mails with tracked links, an open pixel and one-click unsubscribe."""

from __future__ import annotations

import email
import email.policy
import quopri
import re
import time
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from functools import lru_cache

from cdp_campaign.domain.tokens import sign_token

_LINK = re.compile(r"""href\s*=\s*(["'])(https?://[^"'\s>]+)\1""", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class TrackingLinks:
    """Makes the signed URLs of one send."""

    key: str
    base_url: str
    send_id: str

    def open_url(self) -> str:
        """Return the URL of the open pixel."""
        return f"{self.base_url}/v1/t/open/{sign_token(key=self.key, claims={'s': self.send_id, 'k': 'o'})}"

    def click_url(self, target: str) -> str:
        """Return the redirect URL that records a click on a link."""
        token = sign_token(key=self.key, claims={"s": self.send_id, "k": "c", "u": target})
        return f"{self.base_url}/v1/t/click/{token}"

    def unsubscribe_url(self) -> str:
        """Return the one-click unsubscribe URL."""
        return f"{self.base_url}/v1/t/unsubscribe/{sign_token(key=self.key, claims={'s': self.send_id, 'k': 'u'})}"


def track_html(html: str, links: TrackingLinks) -> str:
    """Rewrite the links of an HTML body through the click redirect and add the open pixel."""
    rewritten = _LINK.sub(lambda m: f'href="{links.click_url(m.group(2))}"', html)
    pixel = f'<img src="{links.open_url()}" width="1" height="1" alt="" style="display:none">'
    if "</body>" in rewritten:
        return rewritten.replace("</body>", pixel + "</body>", 1)
    return rewritten + pixel


def text_of(html: str) -> str:
    """Return a plain-text rendering of an HTML body."""
    return re.sub(r"\n{3,}", "\n\n", _TAGS.sub("", html)).strip()


@dataclass(frozen=True)
class OutgoingMail:
    """An e-mail ready for SMTP: envelope sender, recipients and the message as bytes."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    message_id: str

    def parsed(self) -> EmailMessage:
        """Return the message parsed back (for tests and previews)."""
        message = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


def _header_value(value: str) -> str:
    # Rendered values must not be able to add headers of their own.
    flat = " ".join(value.replace("\r", " ").replace("\n", " ").split())
    if flat.isascii():
        return flat
    return Header(flat, "utf-8").encode(maxlinelen=998)


def _part(content_type: str, body: str) -> bytes:
    encoded = quopri.encodestring(body.replace("\r\n", "\n").encode("utf-8")).replace(b"\n", b"\r\n")
    return (
        f"Content-Type: {content_type}; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
        + encoded
    )


@lru_cache(maxsize=64)
def _envelope_address(sender: str) -> str:
    return parseaddr(sender)[1] or sender


@lru_cache(maxsize=4)
def _date_header(second: int) -> str:
    return formatdate(second, usegmt=True)


def build_email(
    *,
    sender: str,
    to: str,
    subject: str,
    html: str,
    text: str | None,
    links: TrackingLinks | None,
    reference: str,
) -> OutgoingMail:
    """Build the e-mail; with links, it is tracked and carries List-Unsubscribe one-click headers."""
    message_id = make_msgid(idstring=reference[-16:], domain="cdp.local")
    boundary = "=_cdp_" + reference[-24:]
    headers = [
        f"From: {_header_value(sender)}",
        f"To: {_header_value(to)}",
        f"Subject: {_header_value(subject)}",
        f"Date: {_date_header(int(time.time()))}",
        f"Message-ID: {message_id}",
        f"X-CDP-Send: {_header_value(reference)}",
        "MIME-Version: 1.0",
    ]
    body = html
    if links is not None:
        headers.append(f"List-Unsubscribe: <{links.unsubscribe_url()}>")
        headers.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        body = track_html(html, links)
    headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    data = b"\r\n".join(
        [
            "\r\n".join(headers).encode(),
            b"",
            f"--{boundary}".encode(),
            _part("text/plain", text if text is not None else text_of(html)),
            f"--{boundary}".encode(),
            _part("text/html", body),
            f"--{boundary}--".encode(),
            b"",
        ]
    )
    return OutgoingMail(sender=_envelope_address(sender), recipients=(to,), data=data, message_id=message_id)
