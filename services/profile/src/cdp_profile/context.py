"""What profile's handlers, jobs and consumers share besides the session: the topics, the
hash key, the phone region and the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from cdp_common.hashing import subject_hash

from cdp_profile import store
from cdp_profile.domain.identity import IdentifierKey

SERVICE = "profile"

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """Return the current UTC time."""
    return datetime.now(UTC)


# The job that brings the events stored before a computed trait was defined into it.
BACKFILL_JOB = "computed_trait_backfill"


@dataclass(frozen=True)
class ProfileContext:
    """What the handlers need besides the session: topics, the hash key, the phone region, a clock."""

    profiles_topic: str
    privacy_topic: str
    hash_key: str
    default_region: str = "DE"
    reporting_currency: str = "EUR"
    clock: Clock = field(default=system_clock)
    # What the last batch read of the rules and definitions, to prepare the next one with.
    configurations: store.LatestConfiguration = field(
        default_factory=store.LatestConfiguration, compare=False, repr=False
    )

    def hash_of(self, key: IdentifierKey) -> str:
        """Return the keyed hash of an identifier, as a privacy request names it."""
        return _keyed_hash_of(self.hash_key, key.type, key.value)


@lru_cache(maxsize=65_536)
def _keyed_hash_of(hash_key: str, kind: str, value: str) -> str:
    """Return an identifier's keyed hash; a person's identifiers come back event after event."""
    return subject_hash(key=hash_key, subject_type=kind, value=value)
