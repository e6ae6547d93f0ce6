"""Normalising identifier values, so that every service matches and hashes them alike."""

from __future__ import annotations

import phonenumbers


class InvalidIdentifier(ValueError):
    """The value cannot be an identifier of its type (a phone number that is no number, say)."""


def normalise_identifier(kind: str, value: str, *, default_region: str = "DE") -> str:
    """Return the canonical form of an identifier value: e-mail lower-cased, phone in E.164."""
    value = value.strip()
    if not value:
        raise InvalidIdentifier(f"empty {kind}")
    if kind == "email":
        return value.lower()
    if kind == "phone":
        try:
            number = phonenumbers.parse(value, default_region)
        except phonenumbers.NumberParseException as exc:
            raise InvalidIdentifier(f"not a phone number: {exc}") from exc
        if not phonenumbers.is_possible_number(number) or len(str(number.national_number)) < 6:
            raise InvalidIdentifier("not a possible phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return value
