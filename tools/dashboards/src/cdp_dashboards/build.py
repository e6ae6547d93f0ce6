"""The platform's Grafana dashboards, built with grafana-foundation-sdk.

Three dashboards: the pipeline (events in, refusals, lag, dead letters, outbox,
end-to-end latency), one per service (HTTP rate, latency and errors per route,
handler duration, database pool), and the business view (profiles, consents,
privacy requests). Every panel queries metrics that the services export today;
the live test in tests/ops runs each query against a real Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
SERVICE_VARIABLE = "service"
# A service's consumer groups are named <env>.<service>.<purpose>.
SERVICE_GROUPS = 'group=~".+\\\\.$service\\\\..+"'


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and how its series are named."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Graph:
    """One panel: a time series or a single stat over one or more queries."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12


class DashboardLayout:
    """Add rows and panels to a dashboard with unique panel ids (the SDK places them on the grid)."""

    def __init__(self, builder: Dashboard) -> None:
        self.builder = builder
        self.next_id = 1

    def row(self, title: str) -> None:
        """Start a new row of panels."""
        self.builder.with_row(Row(title).id(self._take_id()))

    def add(self, graph: Graph) -> None:
        """Append a panel after the previous one."""
        panel: TimeseriesPanel | StatPanel
        if graph.kind == "stat":
            panel = StatPanel()
        else:
            panel = TimeseriesPanel().legend(
                VizLegendOptions()
                .show_legend(True)
                .display_mode(LegendDisplayMode.TABLE)
                .placement(LegendPlacement.BOTTOM)
                .calcs(["lastNotNull", "max"])
            )
        panel = panel.id(self._take_id()).title(graph.title).description(graph.description)
        panel = panel.datasource(DATASOURCE).unit(graph.unit).span(graph.width)
        panel = panel.height(4 if graph.kind == "stat" else 8)
        for index, query in enumerate(graph.queries):
            target = Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(DATASOURCE)
            if query.legend:
                target = target.legend_format(query.legend)
            panel = panel.with_target(target)
        self.builder.with_panel(panel)

    def _take_id(self) -> int:
        taken = self.next_id
        self.next_id += 1
        return taken


def _dashboard(uid: str, title: str, description: str) -> Dashboard:
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["cdp"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
    )


def _p95(metric: str, matchers: str, by: str) -> str:
    return f"histogram_quantile(0.95, sum by ({by}, le) (rate({metric}_bucket{{{matchers}}}[5m])))"


PIPELINE_ROWS: dict[str, tuple[Graph, ...]] = {
    "Ingest": (
        Graph(
            "Events in per second by source and type",
            "Events ingest wrote to Kafka (a 200 to the client), by source id and call type.",
            (
                Query(
                    "sum by (source, type) (rate(cdp_ingest_events_accepted_total[1m]))",
                    "{{source}} {{type}}",
                ),
            ),
            unit="ops",
        ),
        Graph(
            "Refusals by reason",
            "Events or requests ingest refused (4xx), by reason. A jump after a release means clients "
            "send something the platform no longer accepts.",
            (Query("sum by (reason) (rate(cdp_ingest_events_refused_total[5m]))", "{{reason}}"),),
            unit="ops",
        ),
        Graph(
            "Answers 503: Kafka did not take the events",
            "Requests ingest answered 503 with Retry-After because Kafka was unreachable or slow.",
            (Query("sum(rate(cdp_ingest_kafka_unavailable_total[5m]))", "503 answers"),),
            unit="reqps",
        ),
        Graph(
            "Ingest error ratio (5xx of all requests)",
            "Share of ingest's HTTP answers that were 5xx; the contract allows none for bad input.",
            (
                Query(
                    # No 5xx at all is a ratio of 0, not an empty panel.
                    '(sum(rate(cdp_http_requests_total{service="ingest", status=~"5.."}[5m])) or vector(0))'
                    ' / sum(rate(cdp_http_requests_total{service="ingest"}[5m]))',
                    "5xx ratio",
                ),
            ),
            unit="percentunit",
        ),
    ),
    "Consumers": (
        Graph(
            "Consumer lag per group and topic",
            "Messages in Kafka not yet processed, summed over partitions. Growing lag means a consumer "
            "is slower than its input or stuck.",
            (Query("sum by (group, topic) (cdp_consumer_lag_messages)", "{{group}} ← {{topic}}"),),
        ),
        Graph(
            "Messages consumed by outcome",
            "processed, duplicate (a redelivery, nothing changed), skipped (a type the group does not "
            "handle) and dead_lettered.",
            (
                Query(
                    "sum by (group, outcome) (rate(cdp_messages_consumed_total[1m]))",
                    "{{group}} {{outcome}}",
                ),
            ),
            unit="ops",
        ),
        Graph(
            "Dead letters per second",
            "Messages a consumer gave up on and sent to its DLQ topic; replay them with `cdp dlq replay`.",
            (Query("sum by (group, topic) (rate(cdp_dlq_messages_total[5m]))", "{{group}} → {{topic}}"),),
            unit="ops",
        ),
        Graph(
            "Handler duration p95",
            "Time to process one message, database transaction included.",
            (Query(_p95("cdp_handler_duration_seconds", "", "group"), "{{group}}"),),
            unit="s",
        ),
        Graph(
            "Time since a consumer's last completed poll",
            "Per group, the process whose consumer has stood still longest. An idle consumer completes "
            "an empty poll every half second; past a minute its /readyz names it.",
            (Query("max by (group) (cdp_consumer_last_poll_age_seconds)", "{{group}}"),),
            unit="s",
        ),
        Graph(
            "Kafka producers replaced",
            "Producers replaced because the broker refused their idempotent sequence, by reason.",
            (
                Query(
                    "sum by (service, reason) (increase(cdp_kafka_producer_replaced_total[15m]))",
                    "{{service}} {{reason}}",
                ),
            ),
        ),
    ),
    "Outbox": (
        Graph(
            "Outbox backlog",
            "Rows written in a service's transactions but not yet published to Kafka.",
            (Query("max by (service) (cdp_outbox_backlog_messages)", "{{service}}"),),
        ),
        Graph(
            "Oldest unpublished outbox row",
            "Age of the oldest row waiting for the relay; it should stay near zero.",
            (Query("max by (service) (cdp_outbox_oldest_age_seconds)", "{{service}}"),),
            unit="s",
        ),
        Graph(
            "Outbox published per second",
            "Rows the relay published, by service and topic.",
            (
                Query(
                    "sum by (service, topic) (rate(cdp_outbox_published_total[1m]))",
                    "{{service}} → {{topic}}",
                ),
            ),
            unit="ops",
        ),
        Graph(
            "Relay leaders",
            "Processes holding their service's relay lock: exactly one per service.",
            (Query("sum by (service) (cdp_outbox_relay_leader)", "{{service}}"),),
        ),
    ),
    "End-to-end latency": (
        Graph(
            "Ingest → profile → segment, p95",
            "Time from a message's envelope time to the end of its processing. Ingest → profile is the "
            "age of tracking events when profile has applied them; profile → segment the age of profile "
            "messages when segment has applied them; ingest → segment adds the two stages (an upper "
            "bound of the p95 of the whole path).",
            (
                Query(
                    _p95("cdp_message_age_seconds", 'group=~".+\\\\.profile\\\\.events"', "group"),
                    "ingest → profile",
                ),
                Query(
                    _p95("cdp_message_age_seconds", 'group=~".+\\\\.segment\\\\.profiles"', "group"),
                    "profile → segment",
                ),
                Query(
                    "sum("
                    + _p95("cdp_message_age_seconds", 'group=~".+\\\\.profile\\\\.events"', "group")
                    + ") + sum("
                    + _p95("cdp_message_age_seconds", 'group=~".+\\\\.segment\\\\.profiles"', "group")
                    + ")",
                    "ingest → segment",
                ),
            ),
            unit="s",
            width=24,
        ),
    ),
}

SERVICE_ROWS: dict[str, tuple[Graph, ...]] = {
    "HTTP": (
        Graph(
            "Requests per second by route",
            "Requests answered, by method and route template.",
            (
                Query(
                    'sum by (method, route) (rate(cdp_http_requests_total{service="$service"}[1m]))',
                    "{{method}} {{route}}",
                ),
            ),
            unit="reqps",
            width=8,
        ),
        Graph(
            "Latency p95 by route",
            "95th percentile of the time to answer, by route template.",
            (
                Query(
                    _p95("cdp_http_request_duration_seconds", 'service="$service"', "method, route"),
                    "{{method}} {{route}}",
                ),
            ),
            unit="s",
            width=8,
        ),
        Graph(
            "Errors by route and status",
            "4xx (the client's fault: bad input, missing or weak token) and 5xx (ours) per route.",
            (
                Query(
                    "sum by (route, status) "
                    '(rate(cdp_http_requests_total{service="$service", status=~"[45].."}[5m]))',
                    "{{route}} {{status}}",
                ),
            ),
            unit="reqps",
            width=8,
        ),
    ),
    "Consumers and database": (
        Graph(
            "Handler duration p95 by type",
            "Time to process one message of each type in this service's consumer groups.",
            (Query(_p95("cdp_handler_duration_seconds", SERVICE_GROUPS, "group, type"), "{{type}}"),),
            unit="s",
            width=8,
        ),
        Graph(
            "Consumer lag",
            "Messages not yet processed by this service's consumer groups.",
            (Query(f"sum by (group, topic) (cdp_consumer_lag_messages{{{SERVICE_GROUPS}}})", "{{topic}}"),),
            width=8,
        ),
        Graph(
            "Database pool",
            "Connections in use and idle, against the pool's maximum (size plus overflow).",
            (Query('max by (state) (cdp_db_pool_connections{service="$service"})', "{{state}}"),),
            width=8,
        ),
        Graph(
            "Up",
            "1 when Prometheus could scrape the service's /metrics.",
            (Query('min(up{job="cdp", service="$service"})', "up"),),
            kind="stat",
            width=8,
        ),
    ),
}

# Counters of rare business events have no series until the first one happens; a
# panel shows 0 then rather than "No data" (`or vector(0)`).
BUSINESS_ROWS: dict[str, tuple[Graph, ...]] = {
    "Profiles": (
        Graph(
            "Profiles created per hour",
            "New profiles created from events.",
            (Query("sum(increase(cdp_profiles_created_total[1h]))", "profiles"),),
            width=8,
        ),
        Graph(
            "Events resolved to a profile, by type",
            "Tracking events profile applied to a profile.",
            (Query("sum by (type) (rate(cdp_profile_events_resolved_total[5m]))", "{{type}}"),),
            unit="ops",
            width=8,
        ),
        Graph(
            "Merges per hour, by rule",
            "Profiles merged into another because an event tied them together.",
            (
                Query(
                    "sum by (rule) (increase(cdp_profile_merges_total[1h])) or vector(0)",
                    "{{rule}}",
                ),
            ),
            width=8,
        ),
        Graph(
            "Quarantined identifiers",
            "Identifiers quarantined for tying too many profiles together: now (as last listed) and new "
            "ones per hour. A rising count means a shared device or a bad identifier in a source.",
            (
                Query("max(cdp_profile_quarantined_identifiers)", "quarantined now"),
                Query("sum(increase(cdp_profile_identifiers_quarantined_total[1h]))", "new per hour"),
            ),
            width=12,
        ),
        Graph(
            "Erasures per day",
            "Profiles erased on privacy requests.",
            (Query("sum(increase(cdp_profile_erasures_total[1d]))", "erased"),),
            width=12,
        ),
    ),
    "Segments": (
        Graph(
            "Segment sizes",
            "Profiles in each segment over time, as the segment scheduler counts them each round.",
            (Query("sum by (segment) (cdp_segment_members)", "{{segment}}"),),
            width=24,
        ),
    ),
    "Campaigns and consent": (
        Graph(
            "Campaign sends by outcome",
            "Sends the campaign workers decided, by outcome (sent, or the reason it was skipped).",
            (
                Query(
                    "sum by (outcome) (increase(cdp_campaign_sends_total[1h])) or vector(0)",
                    "{{outcome}}",
                ),
            ),
            width=12,
        ),
        Graph(
            "Consents granted and withdrawn",
            "Ledger entries that changed the consent in force, by status, per hour.",
            (
                Query(
                    "sum by (status) (increase(cdp_consent_changes_total[1h])) or vector(0)",
                    "{{status}}",
                ),
            ),
            width=12,
        ),
        Graph(
            "Privacy requests open, near their deadline and overdue",
            "Open requests, those whose deadline falls within the warning period, and those past it.",
            (
                Query("max(cdp_privacy_requests_open)", "open"),
                Query("max(cdp_privacy_requests_due_soon)", "near deadline"),
                Query("max(cdp_privacy_requests_overdue)", "overdue"),
            ),
            width=12,
        ),
        Graph(
            "Oldest open privacy request",
            "Age of the oldest request not yet completed; GDPR allows a month.",
            (Query("max(cdp_privacy_request_oldest_open_age_seconds)", "oldest"),),
            unit="s",
            width=12,
        ),
    ),
}


def _render(uid: str, title: str, description: str, rows: dict[str, tuple[Graph, ...]]) -> Dashboard:
    layout = DashboardLayout(_dashboard(uid, title, description))
    for row_title, graphs in rows.items():
        layout.row(row_title)
        for graph in graphs:
            layout.add(graph)
    return layout.builder


def pipeline_dashboard() -> Dashboard:
    """Build the pipeline dashboard: from ingest through the consumers and outboxes."""
    return _render(
        "cdp-pipeline",
        "CDP pipeline",
        "Events in, refusals, consumer lag, dead letters, outbox backlog and end-to-end latency.",
        PIPELINE_ROWS,
    )


def service_dashboard() -> Dashboard:
    """Build the per-service dashboard, with the service chosen by a variable."""
    variable = (
        QueryVariable(SERVICE_VARIABLE)
        .label("Service")
        .datasource(DATASOURCE)
        .query('label_values(up{job="cdp"}, service)')
        .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
        .multi(False)
        .include_all(False)
    )
    builder = _render(
        "cdp-services",
        "CDP services",
        "One service: HTTP rate, latency and errors per route, handler duration, lag and database pool.",
        SERVICE_ROWS,
    )
    return builder.with_variable(variable)


def business_dashboard() -> Dashboard:
    """Build the business dashboard: profiles, merges, segments, campaigns, consents, privacy."""
    return _render(
        "cdp-business",
        "CDP business",
        "What the platform does for the business: profiles, segments, campaigns, consents and privacy.",
        BUSINESS_ROWS,
    )


def dashboards() -> dict[str, dict[str, Any]]:
    """Return every dashboard as Grafana JSON, by file name."""
    built = {
        "pipeline.json": pipeline_dashboard(),
        "services.json": service_dashboard(),
        "business.json": business_dashboard(),
    }
    return {name: json.loads(json.dumps(builder.build(), cls=JSONEncoder)) for name, builder in built.items()}
