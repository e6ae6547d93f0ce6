"""Prometheus objects of the campaign service (the shared runner metrics live in cdp_common)."""

from prometheus_client import Counter

SENDS = Counter("cdp_campaign_sends_total", "Sends decided by the workers, by outcome", ["outcome"])
TRACKING = Counter(
    "cdp_campaign_tracking_total", "Tracking hits (open, click, unsubscribe), by kind", ["kind"]
)
COMPOSING_WORKERS_REPLACED = Counter(
    "cdp_campaign_composing_workers_replaced_total",
    "Composing worker pools replaced: a chunk past the hard time limit, a worker that died,"
    " or workers that did not start",
    ["reason"],
)
