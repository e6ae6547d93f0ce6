"""Duplicate suspects in pure logic: which profiles are compared (their blocks) and how they score."""

from __future__ import annotations

import random
from typing import Any

from cdp_profile.domain.duplicates import (
    MAX_BLOCK,
    block_keys,
    candidate_of,
    find_suspects,
    suspects_in_blocks,
)


def person(profile_id: str, **common: Any) -> Any:
    return candidate_of(profile_id, common)


def shared_blocks(left: Any, right: Any) -> set[str]:
    return set(block_keys(left)) & set(block_keys(right))


def test_ibm_and_i_b_m_share_a_block_and_are_suspects() -> None:
    ibm = person("a", company="IBM")
    dotted = person("b", company="I.B.M")
    corp = person("c", company="I.B.M. Corp.")
    other = person("d", company="Oracle")

    assert shared_blocks(ibm, dotted) == {"c:ibm"}
    suspects = find_suspects([ibm, dotted, corp, other])
    assert {s.profile_ids for s in suspects} == {("a", "b"), ("a", "c"), ("b", "c")}
    assert all(s.score == 1.0 and s.reasons == {"company": 1.0} for s in suspects)


def test_last_name_and_postal_code_meet_where_the_first_name_is_spelt_otherwise() -> None:
    left = person(
        "a",
        first_name="Katharina",
        last_name="Schmidt",
        address={"street": "Lindenstr. 4", "postal_code": "10115", "city": "Berlin"},
    )
    right = person(
        "b",
        first_name="Catharina",
        last_name="Schmidt",
        address={"street": "Lindenstrasse 4", "postal_code": "10 115", "city": "Berlin"},
    )
    elsewhere = person(
        "c",
        first_name="Catharina",
        last_name="Schmidt",
        address={"street": "Hauptstr. 1", "postal_code": "80331", "city": "München"},
    )

    assert shared_blocks(left, right) == {"z:schmidt|10115"}
    assert not shared_blocks(left, elsewhere)
    assert [s.profile_ids for s in find_suspects([left, right, elsewhere])] == [("a", "b")]


def test_a_surname_that_sounds_alike_meets_on_the_same_birthday() -> None:
    meier = person("a", first_name="Jana", last_name="Meier", birthday="1990-02-03")
    mayer = person("b", first_name="Jana", last_name="Mayer", birthday="1990-02-03")
    maier_later = person("c", first_name="Jana", last_name="Maier", birthday="1991-07-21")
    catharina = person("d", first_name="Catharina", last_name="Kuhn", birthday="1985-05-05")
    katharina = person("e", first_name="Katharina", last_name="Kuehn", birthday="1985-05-05")

    assert shared_blocks(meier, mayer) == {"s:M600|1990-02-03"}
    assert not shared_blocks(meier, maier_later), "another birthday: never compared"
    assert "m:KN|1985-05-05" in shared_blocks(catharina, katharina)
    suspects = {s.profile_ids: s for s in find_suspects([meier, mayer, maier_later, catharina, katharina])}
    assert set(suspects) == {("a", "b"), ("d", "e")}
    assert suspects[("a", "b")].reasons["birthday"] == 1.0


def test_a_different_birthday_tells_namesakes_apart() -> None:
    one = person(
        "a", first_name="Lukas", last_name="Berger", email="lukas.berger@web.de", birthday="1980-01-01"
    )
    typo = person(
        "b", first_name="Lukas", last_name="Berger", email="lukas.berger@web.de", birthday="1980-01-01"
    )
    namesake = person(
        "c", first_name="Lukas", last_name="Berger", email="l.berger@gmx.de", birthday="2001-11-30"
    )

    suspects = {s.profile_ids: s.score for s in find_suspects([one, typo, namesake], threshold=0.5)}

    assert suspects == {("a", "b"): 1.0}


def test_comparing_only_changed_profiles_finds_what_comparing_everyone_finds_for_them() -> None:
    rng = random.Random(3)
    # One name for all and e-mails a digit or two apart: every block they share is past
    # MAX_BLOCK, so each is compared with its neighbours only.
    people = [
        person(
            f"p{i:03d}",
            first_name="Jonas",
            last_name="Berger",
            email=f"jonas.berger{i}@{rng.choice(['web.de', 'gmx.de'])}",
        )
        for i in range(600)
    ]
    blocks: dict[str, list[Any]] = {}
    for candidate in people:
        for key in block_keys(candidate):
            blocks.setdefault(key, []).append(candidate)
    assert max(len(members) for members in blocks.values()) > MAX_BLOCK
    changed = {f"p{i:03d}" for i in rng.sample(range(600), 40)}

    everyone = suspects_in_blocks(list(blocks.values()), threshold=0.7)
    incremental = suspects_in_blocks(list(blocks.values()), threshold=0.7, changed=changed)

    expected = {s.profile_ids: s for s in everyone if set(s.profile_ids) & changed}
    assert expected, "the changed people have look-alikes"
    assert {s.profile_ids: s for s in incremental} == expected
