"""Keyed hashes: the standard HMAC-SHA256, whatever keys were used before."""

from __future__ import annotations

import hashlib
import hmac

from cdp_common.hashing import keyed_hash, subject_hash


def test_keyed_hashes_are_hmac_sha256_under_each_key_in_turn() -> None:
    for key, value in [("key-one", "a@b.example"), ("key-two", "a@b.example"), ("key-one", "other")]:
        expected = hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()
        assert keyed_hash(key=key, value=value) == expected
    assert keyed_hash(key="key-one", value="x") != keyed_hash(key="key-two", value="x")


def test_a_subject_hash_names_the_identifier_type() -> None:
    assert subject_hash(key="k", subject_type="email", value="a@b.example") == keyed_hash(
        key="k", value="email:a@b.example"
    )
    assert subject_hash(key="k", subject_type="email", value="1") != subject_hash(
        key="k", subject_type="phone", value="1"
    )
