"""The consent service: consent ledger, opt-ins, suppression and privacy requests."""
