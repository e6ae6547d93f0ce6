"""The profile service: identity resolution, unified profiles, traits with provenance."""
