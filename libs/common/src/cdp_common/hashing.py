"""Keyed hashes (HMAC-SHA256) for personal data that must be matched but never stored in clear."""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache


@lru_cache(maxsize=8)
def _keyed(key: str) -> hmac.HMAC:
    """Return an HMAC already keyed, to copy for each value (keying costs as much as hashing)."""
    return hmac.new(key.encode(), digestmod=hashlib.sha256)


def keyed_hash(*, key: str, value: str) -> str:
    """Return the hex HMAC-SHA256 of a value under the platform's hash key."""
    mac = _keyed(key).copy()
    mac.update(value.encode())
    return mac.hexdigest()


def subject_hash(*, key: str, subject_type: str, value: str) -> str:
    """Return the keyed hash of a typed identifier, the form in which a subject travels."""
    return keyed_hash(key=key, value=f"{subject_type}:{value}")
