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
