"""Pure domain logic of the profile service: identifiers and trait precedence."""
