"""Where the CLI finds the platform: .run/dev.env, then the environment, then options."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

DEFAULT_ENV_FILE = Path(".run/dev.env")
SERVICE_NAMES = ("ingest", "profile", "segment", "campaign", "consent")


@dataclass(frozen=True)
class PlatformConfig:
    """The addresses and credentials one CLI call works with."""

    admin_token: str = ""
    write_key: str = ""
    ingest_url: str = "http://127.0.0.1:8001"
    profile_url: str = "http://127.0.0.1:8002"
    segment_url: str = "http://127.0.0.1:8003"
    campaign_url: str = "http://127.0.0.1:8004"
    consent_url: str = "http://127.0.0.1:8005"
    kafka_bootstrap: str = "127.0.0.1:9092"
    prometheus_url: str = ""
    env: str = "dev"

    def service_url(self, service: str) -> str:
        """Return the base URL of one service."""
        url: str = getattr(self, f"{service}_url")
        return url.rstrip("/")


def read_env_file(path: Path) -> dict[str, str]:
    """Return the KEY=value pairs of an env file (comments and blank lines ignored)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def load_config(env_file: Path | None, overrides: dict[str, str | None]) -> PlatformConfig:
    """Merge the env file, the CDP_* environment variables and explicit overrides, in that order."""
    values: dict[str, str] = {}
    path = env_file if env_file is not None else DEFAULT_ENV_FILE
    if path.exists():
        values.update(read_env_file(path))
    elif env_file is not None:
        raise FileNotFoundError(f"{env_file} does not exist")
    values.update({key: value for key, value in os.environ.items() if key.startswith("CDP_")})
    config = PlatformConfig()
    for field in fields(PlatformConfig):
        name = f"CDP_{field.name.upper()}"
        if values.get(name):
            config = replace(config, **{field.name: values[name]})
        override = overrides.get(field.name)
        if override:
            config = replace(config, **{field.name: override})
    return config
