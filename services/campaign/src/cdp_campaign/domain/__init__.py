"""Pure domain logic of the campaign service."""
