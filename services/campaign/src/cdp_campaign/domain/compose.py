"""Composing sends: templates rendered with a person's values and, for e-mail, the message built.

Pure functions of picklable values, so that composing can run in worker processes: templates
are user-supplied code, and rendering them there keeps the service's event loop (which also
answers the open pixel and click redirects) free, and puts the work on another core.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from cdp_campaign.domain.messages import OutgoingMail, TrackingLinks, build_email
from cdp_campaign.domain.templates import TemplateRefused, render, sample_values

if TYPE_CHECKING:
    from cdp_campaign.domain.campaigns import LocalisedContent


@dataclass(frozen=True)
class Tracking:
    """How to sign the tracked links of e-mails: the key and the service's public URL."""

    key: str
    base_url: str


@dataclass(frozen=True)
class Draft:
    """What to compose for one send: the template sources, the values and, for e-mail, the envelope."""

    channel: str
    subject: str | None
    body: str
    text: str | None
    values: Mapping[str, Any]
    reference: str
    sender: str = ""
    to: str = ""
    subject_prefix: str = ""
    tracking: Tracking | None = None


@dataclass(frozen=True)
class Composed:
    """A send's rendered content and, for e-mail, the message ready for SMTP."""

    subject: str | None
    body: str
    text: str | None
    mail: OutgoingMail | None = None


@dataclass(frozen=True)
class Refused:
    """A draft whose template could not be rendered, and why: which field, at which line if known,
    and whether it only lacked a value of the person it was rendered for."""

    reason: str
    field: str | None = None
    line: int | None = None
    missing_value: bool = False


def compose(draft: Draft) -> Composed | Refused:
    """Render a draft's templates and, for e-mail, build the message."""
    field = "subject"
    try:
        subject = render(draft.subject, draft.values) if draft.subject is not None else None
        field = "body"
        body = render(draft.body, draft.values, html=draft.channel == "email")
        field = "text"
        text = render(draft.text, draft.values) if draft.text is not None else None
    except TemplateRefused as exc:
        return Refused(str(exc), field=field, line=exc.line, missing_value=exc.missing_value)
    except Exception as exc:
        # The sandbox's own checks come first; whatever still escapes them is this draft's
        # failure alone, recorded for its recipient, never the whole job's.
        return Refused(f"the template failed: {type(exc).__name__}", field=field)
    if draft.channel != "email":
        return Composed(subject, body, text)
    links = (
        None
        if draft.tracking is None
        else TrackingLinks(key=draft.tracking.key, base_url=draft.tracking.base_url, send_id=draft.reference)
    )
    mail = build_email(
        sender=draft.sender,
        to=draft.to,
        subject=draft.subject_prefix + (subject or ""),
        html=body,
        text=text,
        links=links,
        reference=draft.reference,
    )
    return Composed(subject, body, text, mail)


def trial_draft(*, channel: str, content: LocalisedContent, campaign_name: str) -> Draft:
    """Return a draft of a variant's content for a representative person, to try before saving."""
    return Draft(
        channel=channel,
        subject=content.subject,
        body=content.body,
        text=content.text,
        values=sample_values(campaign_name=campaign_name),
        reference="trial",
        sender="CDP <campaigns@example.com>",
        to="ada@example.com",
    )


def compose_all(drafts: Sequence[Draft]) -> list[Composed | Refused]:
    """Compose drafts in order (the unit of work a worker process is given)."""
    return [compose(draft) for draft in drafts]


def worker_started(memory_limit_bytes: int | None = None) -> None:
    """In a worker process: yield the processor to the service's event loop (composing is work in
    bulk, the loop answers people and SMTP servers), bound the memory a template can take (a
    filter such as `center` builds its whole result before any check can look at it), and exit
    as soon as the process that started the worker is gone, however it ended (a worker waiting
    for work holds its own queue's pipe open, so it would not notice)."""
    os.nice(10)
    if memory_limit_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()
