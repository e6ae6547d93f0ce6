"""Grafana dashboards of the platform, generated from typed builders."""
