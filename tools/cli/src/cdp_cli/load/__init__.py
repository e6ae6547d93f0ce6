"""`cdp load`: fill a stack with a generated customer base in bulk, straight into the services' tables.

A base of N people, each with the identifiers, traits and events of a shop's customer (an
identify, page views, "Product Viewed" and "Order Completed" events spread over a number of
years, some of them recent), is written with PostgreSQL's COPY into what the services would
have built from those events:

- profile's `profiles` (traits with provenance, the built-in aggregates' state and the computed
  traits derived from it, the version the events would have given), `identifiers`, `events`
  and `orders` (each Order Completed one order, valued when it is in the reporting currency);
- segment's copy of each profile (`known_profiles`: traits, computed traits and version), so
  segments evaluate over the base as if segment had read every profile message.

Everyone is generated from the seed and their index alone (profile id, event ids, every
value), so a load is written in chunks of whole people, each chunk in one transaction, and a
rerun writes only the people that are not there yet. Nothing goes through Kafka: no profile
message is published for loaded people, and consent and campaign learn nothing of them.

The package, one module per part: `drawing` (what a person looks like), `aggregates` (what
profile makes of their events), `people` (a loaded person, for tests), `rendering` (COPY text),
`loader` (the load, the disk and the indexes), and `command` (`cdp load`).
"""

from __future__ import annotations

from cdp_cli.load.aggregates import computed_of
from cdp_cli.load.command import load_command
from cdp_cli.load.drawing import GeneratedEvent, profile_id_of
from cdp_cli.load.loader import (
    LoadProgress,
    LoadRefused,
    LoadResult,
    NotEnoughDisk,
    base_bytes,
    check_disk,
    database_directory,
    describe,
    estimate_bytes,
    load_base,
    plain_url,
    restore_indexes,
    table_sizes,
)
from cdp_cli.load.people import Person, person
from cdp_cli.load.rendering import render_piece

__all__ = [
    "GeneratedEvent",
    "LoadProgress",
    "LoadRefused",
    "LoadResult",
    "NotEnoughDisk",
    "Person",
    "base_bytes",
    "check_disk",
    "computed_of",
    "database_directory",
    "describe",
    "estimate_bytes",
    "load_base",
    "load_command",
    "person",
    "plain_url",
    "profile_id_of",
    "render_piece",
    "restore_indexes",
    "table_sizes",
]
