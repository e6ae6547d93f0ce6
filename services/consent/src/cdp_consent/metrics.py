"""Prometheus objects of the consent service (the shared runner metrics live in cdp_common)."""
