"""The ingest service: the Segment-compatible tracking API, sources, write keys and API tokens."""
