"""Prometheus objects of the ingest service."""

from __future__ import annotations

from prometheus_client import Counter

EVENTS_ACCEPTED = Counter("cdp_ingest_events_accepted_total", "Events written to Kafka.", ["source", "type"])
EVENTS_REFUSED = Counter("cdp_ingest_events_refused_total", "Events refused, by reason.", ["reason"])
KAFKA_UNAVAILABLE = Counter(
    "cdp_ingest_kafka_unavailable_total", "Requests answered 503 because Kafka did not take the events."
)
