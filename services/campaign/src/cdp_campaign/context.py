"""What every part of the campaign service shares: its context, its send-job topic and parsed definitions."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from cdp_common.topics import ServiceTopic
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cdp_campaign.domain.campaigns import CampaignSpec
from cdp_campaign.domain.journeys import JourneySpec
from cdp_campaign.domain.rules import QuietHours
from cdp_campaign.gateways import (
    Clock,
    Composer,
    ConsentGate,
    EngagementTracker,
    InlineComposer,
    MailSender,
    SmsProvider,
    WebhookSender,
)
from cdp_campaign.settings import Settings

SERVICE = "campaign"
# Send jobs spread over the service's replicas; no other service reads or writes it.
SENDS_TOPIC = ServiceTopic("cdp.campaign-sends.v1")
ORDER_COMPLETED = "Order Completed"


@dataclass
class CampaignContext:
    """What the handlers need besides a session: settings, the database and the ways out."""

    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    consent: ConsentGate
    tracker: EngagementTracker
    mailer: MailSender
    sms: SmsProvider
    webhooks: WebhookSender
    clock: Clock
    composer: Composer = field(default_factory=InlineComposer)

    @property
    def sends_topic(self) -> str:
        """The environment's send-job topic."""
        return self.settings.topic(SENDS_TOPIC)

    @property
    def hash_key(self) -> str:
        """The platform's hash key, which also signs tokens and webhooks."""
        return self.settings.hash_key.get_secret_value()

    @property
    def quiet_hours(self) -> QuietHours:
        """The quiet hours every recipient gets in their own time zone."""
        return QuietHours(start=self.settings.campaign_quiet_start, end=self.settings.campaign_quiet_end)


def new_id(prefix: str) -> str:
    """Return a new random id with a prefix."""
    return f"{prefix}_{secrets.token_hex(8)}"


_PARSED_SPECS: dict[tuple[type[Any], bytes], Any] = {}
_PARSED_SPECS_MAX = 1024


def parsed_campaign(spec: dict[str, Any]) -> CampaignSpec:
    """Return a stored campaign definition parsed, once per distinct content (it is only read)."""
    parsed: CampaignSpec = _parsed(CampaignSpec, spec)
    return parsed


def parsed_journey(spec: dict[str, Any]) -> JourneySpec:
    """Return a stored journey definition parsed, once per distinct content (it is only read)."""
    parsed: JourneySpec = _parsed(JourneySpec, spec)
    return parsed


def _parsed(model: type[Any], spec: dict[str, Any]) -> Any:
    # Keyed by the content itself, so a changed definition can never be served stale; trigger
    # matching reads every running campaign on every event, and this spares the validation.
    key = (model, orjson.dumps(spec, option=orjson.OPT_SORT_KEYS))
    found = _PARSED_SPECS.get(key)
    if found is None:
        if len(_PARSED_SPECS) >= _PARSED_SPECS_MAX:
            _PARSED_SPECS.clear()
        found = _PARSED_SPECS[key] = model.model_validate(spec)
    return found
