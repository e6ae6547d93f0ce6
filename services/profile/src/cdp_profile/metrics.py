"""Prometheus objects of the profile service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PROFILES_CREATED = Counter("cdp_profiles_created_total", "Profiles created from events.")
EVENTS_RESOLVED = Counter(
    "cdp_profile_events_resolved_total", "Tracking events resolved to a profile.", ["type"]
)
EVENTS_DROPPED = Counter(
    "cdp_profile_events_dropped_total",
    "Tracking events not attached to any profile, by reason (erased person, no usable identifier).",
    ["reason"],
)
IDENTIFIERS_BLOCKED = Counter(
    "cdp_profile_identifiers_blocked_total", "Identifier values ignored because a blocked-value rule matched."
)
IDENTIFIERS_QUARANTINED = Counter(
    "cdp_profile_identifiers_quarantined_total",
    "Identifiers quarantined for tying too many profiles together.",
)
IDENTIFIERS_DROPPED = Counter(
    "cdp_profile_identifiers_dropped_total", "Event identifiers dropped because merging would pass a limit."
)
PROFILES_MERGED = Counter("cdp_profile_merges_total", "Profiles merged into another, by rule.", ["rule"])
PROFILES_SPLIT = Counter("cdp_profile_splits_total", "Merges undone.")
ORDERS_RECORDED = Counter(
    "cdp_profile_orders_recorded_total",
    "Orders recorded or amended in a way consumers see, by the state they reached.",
    ["state"],
)
PROFILES_ERASED = Counter("cdp_profile_erasures_total", "Profiles erased on a privacy request.")
WINDOWED_TRAITS_EXPIRED = Counter(
    "cdp_profile_windowed_trait_changes_total", "Profiles whose windowed traits changed as events aged out."
)
QUARANTINED_IDENTIFIERS = Gauge(
    "cdp_profile_quarantined_identifiers", "Identifiers currently quarantined, as last listed."
)
ALIASES_REFUSED = Counter(
    "cdp_profile_aliases_refused_total",
    "Aliases whose two profiles the identity rules kept apart, by reason (limit, quarantine, split).",
    ["reason"],
)
ACCOUNT_MEMBERS_UPDATED = Counter(
    "cdp_profile_account_members_updated_total",
    "Members told of their account's changed traits by the job that follows such a change.",
)
