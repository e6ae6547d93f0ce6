"""Prometheus objects of the campaign service (the shared runner metrics live in cdp_common)."""
