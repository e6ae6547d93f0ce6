"""Token buckets: a request takes a token; tokens come back at a steady rate up to a burst."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """One write key's bucket."""

    rate_per_s: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take tokens if there are enough and return 0, else return the seconds until there will be."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate_per_s


class RateLimiter:
    """Buckets per key, created full on first use and resized when the key's limits change."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def wait_time(self, *, key: str, rate_per_s: float, burst: float, now: float) -> float:
        """Take a token for one request; return 0 when allowed, else the seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate_per_s != rate_per_s or bucket.burst != burst:
            bucket = TokenBucket(rate_per_s=rate_per_s, burst=burst, tokens=burst, updated=now)
            self._buckets[key] = bucket
        return bucket.take(now)


def retry_after_header(wait_s: float) -> str:
    """Return a Retry-After value (whole seconds, at least 1) for a wait."""
    return str(max(1, math.ceil(wait_s)))
