"""Prometheus objects shared by every service, under the same names everywhere."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMER_LAG = Gauge(
    "cdp_consumer_lag_messages",
    "Messages in a partition past the group's committed offset, as the broker reports both;"
    " exported by the member the partition is assigned to.",
    ["group", "topic", "partition"],
)
CONSUMER_LAST_POLL_AGE = Gauge(
    "cdp_consumer_last_poll_age_seconds",
    "Seconds since the consumer last completed a poll (an empty one included) or finished a message.",
    ["group"],
)
KAFKA_PRODUCER_REPLACED = Counter(
    "cdp_kafka_producer_replaced_total",
    "Producers replaced because their idempotent sequence could not go on, by the error that broke it.",
    ["service", "reason"],
)
HANDLER_DURATION = Histogram(
    "cdp_handler_duration_seconds",
    "Time to process one message, database transaction included.",
    ["group", "type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
MESSAGES_CONSUMED = Counter(
    "cdp_messages_consumed_total",
    "Messages a consumer finished with, by outcome (processed, duplicate, skipped, dead_lettered).",
    ["group", "type", "outcome"],
)
HANDLER_RETRIES = Counter(
    "cdp_handler_retries_total",
    "Retries of a failed handler before success or dead-lettering.",
    ["group"],
)
DLQ_MESSAGES = Counter(
    "cdp_dlq_messages_total",
    "Messages sent to a dead-letter topic.",
    ["group", "topic"],
)
OUTBOX_BACKLOG = Gauge(
    "cdp_outbox_backlog_messages",
    "Outbox rows written but not yet published.",
    ["service"],
)
OUTBOX_OLDEST_AGE = Gauge(
    "cdp_outbox_oldest_age_seconds",
    "Age of the oldest unpublished outbox row (0 when empty), reported by the relay leader.",
    ["service"],
)
OUTBOX_PUBLISHED = Counter(
    "cdp_outbox_published_total",
    "Outbox rows published to Kafka.",
    ["service", "topic"],
)
OUTBOX_LEADER = Gauge(
    "cdp_outbox_relay_leader",
    "1 when this process holds the service's relay lock.",
    ["service"],
)
HTTP_REQUESTS = Counter(
    "cdp_http_requests_total",
    "HTTP requests answered, by route template and status code.",
    ["service", "method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "cdp_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
DB_POOL_CONNECTIONS = Gauge(
    "cdp_db_pool_connections",
    "Connections of the service's database pool: in_use, idle, and max (size plus overflow).",
    ["service", "state"],
)
MESSAGE_AGE = Histogram(
    "cdp_message_age_seconds",
    "Time from a message's envelope time to the end of its processing: how far behind real time a consumer is.",
    ["group", "type"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
)
