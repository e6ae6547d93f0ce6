"""Keyed hashes (HMAC-SHA256) for personal data that must be matched but never stored in clear."""

from __future__ import annotations

import hashlib
import hmac


def keyed_hash(*, key: str, value: str) -> str:
    """Return the hex HMAC-SHA256 of a value under the platform's hash key."""
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def subject_hash(*, key: str, subject_type: str, value: str) -> str:
    """Return the keyed hash of a typed identifier, the form in which a subject travels."""
    return keyed_hash(key=key, value=f"{subject_type}:{value}")
