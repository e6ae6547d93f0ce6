"""Prometheus objects of the profile service."""

from __future__ import annotations

from prometheus_client import Counter

PROFILES_CREATED = Counter("cdp_profiles_created_total", "Profiles created from events.")
EVENTS_RESOLVED = Counter(
    "cdp_profile_events_resolved_total", "Tracking events resolved to a profile.", ["type"]
)
