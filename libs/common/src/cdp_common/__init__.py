"""Shared building blocks of the platform's services.

The envelope and event schemas, the Kafka runner (manual commits, retries, DLQ),
the transactional outbox and its relay, settings, database sessions, logging,
metrics, auth and the HTTP conventions every service follows.
"""
