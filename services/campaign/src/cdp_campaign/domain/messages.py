"""Composing what goes out: e-mails with tracked links, an open pixel and one-click unsubscribe."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

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


def build_email(
    *,
    sender: str,
    to: str,
    subject: str,
    html: str,
    text: str | None,
    links: TrackingLinks | None,
    reference: str,
) -> EmailMessage:
    """Build the e-mail; with links, it is tracked and carries List-Unsubscribe one-click headers."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(idstring=reference[-16:], domain="cdp.local")
    message["X-CDP-Send"] = reference
    body = html
    if links is not None:
        unsubscribe = links.unsubscribe_url()
        message["List-Unsubscribe"] = f"<{unsubscribe}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        body = track_html(html, links)
    message.set_content(text if text is not None else text_of(html))
    message.add_alternative(body, subtype="html")
    return message
