"""Pure domain logic of the ingest service: tracking calls, their validation and enrichment."""
