"""Prometheus objects of the consent service (the shared runner metrics live in cdp_common)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONSENT_CHANGES = Counter(
    "cdp_consent_changes_total",
    "Ledger entries that changed the consent in force, by status and source.",
    ["status", "source"],
)
MERGE_CONFLICTS = Counter(
    "cdp_consent_merge_conflicts_total",
    "Purposes and channels on which two merged profiles had decided differently.",
)
CONSENT_CHECKS = Counter(
    "cdp_consent_checks_total",
    "Profile ids asked about through the check API, by verdict.",
    ["verdict"],
)
OPT_IN_MAILS = Counter(
    "cdp_consent_opt_in_mails_total",
    "Double opt-in confirmation mails, by outcome (sent, failed).",
    ["outcome"],
)
PRIVACY_REQUESTS_OVERDUE = Gauge(
    "cdp_privacy_requests_overdue",
    "Privacy requests past their deadline and not completed.",
)
PRIVACY_REQUESTS_OPEN = Gauge(
    "cdp_privacy_requests_open",
    "Privacy requests not yet completed or failed.",
)
PRIVACY_REQUESTS_DUE_SOON = Gauge(
    "cdp_privacy_requests_due_soon",
    "Open privacy requests whose deadline falls within the warning period and has not passed.",
)
PRIVACY_REQUEST_OLDEST_AGE = Gauge(
    "cdp_privacy_request_oldest_open_age_seconds",
    "Age of the oldest open privacy request (0 when none is open).",
)
PRIVACY_REQUESTS_OPENED = Counter(
    "cdp_privacy_requests_opened_total",
    "Privacy requests opened, by type.",
    ["type"],
)
PRIVACY_REQUESTS_COMPLETED = Counter(
    "cdp_privacy_requests_completed_total",
    "Privacy requests closed, by outcome (completed, failed).",
    ["status"],
)
