"""Prometheus objects of the segment service (the shared runner metrics live in cdp_common)."""

from __future__ import annotations

from prometheus_client import Gauge

SEGMENT_MEMBERS = Gauge(
    "cdp_segment_members",
    "Profiles in a segment, counted by the scheduler each round.",
    ["segment"],
)
