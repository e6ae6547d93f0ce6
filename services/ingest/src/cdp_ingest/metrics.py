"""Prometheus objects of the ingest service.

Labels carry only the call type, the refusal reason, the endpoint and the source id:
never a user id, an e-mail or an event's values.
"""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Histogram

EVENTS_ACCEPTED = Counter(
    "cdp_ingest_events_accepted_total",
    "Events written to Kafka, by call type and source.",
    ["source", "type"],
)
EVENTS_REFUSED = Counter(
    "cdp_ingest_events_refused_total",
    "Events or requests refused, by call type, reason and source.",
    ["source", "type", "reason"],
)
KAFKA_UNAVAILABLE = Counter(
    "cdp_ingest_kafka_unavailable_total", "Requests answered 503 because Kafka did not take the events."
)
RATE_LIMITED = Counter(
    "cdp_ingest_rate_limited_total",
    "Requests answered 429 because a write key exceeded its rate.",
    ["source"],
)
PLAN_VIOLATIONS = Counter(
    "cdp_ingest_tracking_plan_violations_total",
    "Tracking-plan violations, by source, kind and whether the event was refused.",
    ["source", "kind", "refused"],
)
REQUEST_DURATION = Histogram(
    "cdp_ingest_request_duration_seconds",
    "Time to answer a tracking request, Kafka acknowledgement included, by endpoint and status.",
    ["endpoint", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PRODUCE_DURATION = Histogram(
    "cdp_ingest_produce_duration_seconds",
    "Time from handing a request's events to the producer until Kafka acknowledged all of them.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PAYLOAD_SIZE = Histogram(
    "cdp_ingest_payload_size_bytes",
    "Size of tracking request bodies after decompression, by endpoint.",
    ["endpoint"],
    buckets=(256, 1024, 4096, 16384, 32768, 131072, 524288),
)


# The tracking path looks its labelled series up once per label set, not once per request.


@cache
def request_duration(endpoint: str, status: str) -> Histogram:
    """Return the request-duration series of an endpoint and status."""
    return REQUEST_DURATION.labels(endpoint, status)


@cache
def payload_size(endpoint: str) -> Histogram:
    """Return the payload-size series of an endpoint."""
    return PAYLOAD_SIZE.labels(endpoint)


@cache
def events_accepted(source: str, call_type: str) -> Counter:
    """Return the accepted-events series of a source and call type."""
    return EVENTS_ACCEPTED.labels(source, call_type)
