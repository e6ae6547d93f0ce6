"""Pure domain logic of the segment service."""
