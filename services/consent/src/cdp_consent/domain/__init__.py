"""Pure domain logic of the consent service."""
