"""Send-time rules that need no I/O: quiet hours in the recipient's time zone, frequency caps."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class SkipReason:
    """Why a recipient got nothing; recorded on the send."""

    NO_CONSENT = "no_consent"
    CONSENT_UNAVAILABLE = "consent_service_unavailable"
    SUPPRESSED = "suppressed"
    FREQUENCY_CAP = "frequency_cap"
    NO_ADDRESS = "no_contact_address"
    RENDER_FAILED = "template_failed"
    ADDRESS_NOT_ALLOWED = "webhook_address_not_allowed"
    CAMPAIGN_NOT_RUNNING = "campaign_not_running"
    HOLDOUT = "holdout"


@dataclass(frozen=True)
class QuietHours:
    """A daily window, in the recipient's local time, in which nothing is sent."""

    start: time
    end: time

    def next_allowed(self, *, now: datetime, timezone: str | None) -> datetime | None:
        """Return when sending may resume if `now` is inside the window, else None."""
        if self.start == self.end:
            return None
        zone = zone_of(timezone)
        local = now.astimezone(zone)
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            inside = self.start <= clock < self.end
        else:
            inside = clock >= self.start or clock < self.end
        if not inside:
            return None
        resume = local.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        if resume <= local:
            resume += timedelta(days=1)
        return resume.astimezone(now.tzinfo)


def zone_of(name: str | None) -> ZoneInfo:
    """Return the time zone of a name, UTC for none or an unknown one."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def over_cap(*, sent_in_window: int, cap: int) -> bool:
    """Whether one more message would break a frequency cap (0 means no cap)."""
    return cap > 0 and sent_in_window >= cap
