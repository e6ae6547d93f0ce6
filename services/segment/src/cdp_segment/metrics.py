"""Prometheus objects of the segment service (the shared runner metrics live in cdp_common)."""
