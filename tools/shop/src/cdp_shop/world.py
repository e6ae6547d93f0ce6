"""The simulation: whole customer histories drawn from a seed, and the ground truth of what a correct
platform makes of them.

Pure and deterministic: `simulate(seed=, people=, end=)` returns the calls to send (in time
order) and the ground truth; it does no I/O. The behaviours it draws from are `cdp_shop.shop.Shop`
(re-exported here with `Call`, `Person` and `World`, which tests build small worlds with).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cdp_shop.calls import Call, Person
from cdp_shop.catalogue import COMPANIES, FIRST_NAMES, JUNK_CARD_IDS, JUNK_USER_IDS, LAST_NAMES, Company
from cdp_shop.shop import WINDOW, Shop, World

__all__ = ["Call", "Person", "Shop", "World", "simulate"]

# People whose index modulo LEADS_EVERY is one of these ask for a quote for the company of their
# hundred, each spelling its name their own way: even a small world has two of one company.
LEADS_EVERY = 100
LEAD_INDEXES = (9, 10)


def _draw_currency(shop: Shop) -> str:
    """Return an online order's currency: mostly euros, some pounds and francs, a few dollars."""
    draw = shop.rng.random()
    return "EUR" if draw < 0.8 else "GBP" if draw < 0.87 else "CHF" if draw < 0.94 else "USD"


def _online_order(shop: Shop, person: Person, when: datetime, *, anonymous_id: str, email: str) -> datetime:
    """Draw an online order and what becomes of it: the ERP sending it again, a cancellation, a whole
    refund, a goodwill credit, or a line brought back to a store; return when it was ordered."""
    rng = shop.rng
    fate = rng.random()
    whole_refund = timedelta(days=rng.uniform(1, 14)) if 0.04 <= fate < 0.14 else None
    when = shop.online_purchase(
        person, when, anonymous_id=anonymous_id, currency=_draw_currency(shop), refund_after=whole_refund
    )
    order = person.orders[-1]
    later = when + timedelta(days=rng.uniform(1, 10))
    if fate < 0.04:
        shop.cancel_order(
            person, when + timedelta(minutes=rng.uniform(2, 90)), order=order, anonymous_id=anonymous_id
        )
        return when
    if rng.random() < 0.3:
        shop.erp_export(person, when + timedelta(hours=rng.uniform(1, 48)), order=order, email=email)
    if 0.14 <= fate < 0.2:
        amount = round(order["total"] * rng.choice((0.1, 0.2, 0.25)), 2)
        shop.goodwill_refund(person, later, order=order, anonymous_id=anonymous_id, amount=amount)
    elif 0.2 <= fate < 0.26:
        line = {**rng.choice(order["items"]), "quantity": 1}
        web = anonymous_id if rng.random() < 0.5 else None
        shop.store_return(person, later, order=order, email=email, line=line, web_anonymous_id=web)
    return when


def _store_order(shop: Shop, person: Person, when: datetime, *, email: str, **customer: Any) -> None:
    """Draw a store purchase and a whole refund or a returned line of it."""
    rng = shop.rng
    fate = rng.random()
    refund = timedelta(days=rng.uniform(1, 10)) if fate < 0.1 else None
    shop.store_purchase(person, when, email=email, refund_after=refund, **customer)
    if 0.1 <= fate < 0.15:
        order = person.orders[-1]
        line = {**rng.choice(order["items"]), "quantity": 1}
        shop.store_return(
            person, when + timedelta(days=rng.uniform(1, 10)), order=order, email=email, line=line
        )


def _lead(shop: Shop, person: Person, index: int) -> None:
    """Draw an anonymous visitor who asks for a quote for their company and is never heard of again."""
    rng = shop.rng
    company = COMPANIES[(index // LEADS_EVERY) % len(COMPANIES)]
    person.lead_of = company.slug
    device = shop.new_device(person)
    when = shop.start + timedelta(seconds=rng.uniform(0, WINDOW.total_seconds() * 0.9))
    when = shop.browse(person, when, {"anonymousId": device})
    shop.request_quote(person, when, anonymous_id=device, company=rng.choice(company.spellings))


def _account_traits(shop: Shop, company: Company, when: datetime, *, full: bool) -> dict[str, Any]:
    """Return what a B2B buyer's group call says of their company at a time: the plan it has then,
    its head count as they know it, and (on joining) its name and industry."""
    halfway = shop.start + WINDOW / 2
    traits: dict[str, Any] = {
        "plan": company.plan if when < halfway else company.upgrade,
        "employees": company.employees + 10 * shop.rng.randint(-3, 3),
    }
    if full:
        traits.update(name=company.name, industry=company.industry)
    return traits


def _app(shop: Shop, person: Person, when: datetime) -> datetime:
    """Draw a phone app used anonymously that the shop's back end aliases to the person, before or
    after the app's first visit; return when its visits ended."""
    rng = shop.rng
    app = shop.new_device(person)
    alias_first = rng.random() < 0.4
    if alias_first:
        shop.alias(person, when, previous_id=app)
        when += timedelta(minutes=rng.uniform(1, 60))
    when = shop.browse(person, when, {"anonymousId": app})
    if not alias_first:
        when += timedelta(hours=rng.uniform(1, 48))
        shop.alias(person, when, previous_id=app)
    when += timedelta(hours=rng.uniform(1, 72))
    return shop.browse(person, shop.before_end(when), {"anonymousId": app})


def _shop_only(shop: Shop, person: Person, when: datetime, *, email: str, phone: str) -> None:
    """Draw a customer known only from store purchases by e-mail (and sometimes phone)."""
    rng = shop.rng
    person.emails.append(email)
    if rng.random() < 0.5:
        person.phones.append(phone)
    for _ in range(rng.randint(1, 3)):
        when = min(when + timedelta(days=rng.uniform(1, 20)), shop.end - timedelta(minutes=5))
        card = rng.choice(JUNK_CARD_IDS) if rng.random() < 0.08 else None
        _store_order(
            shop,
            person,
            when,
            email=email,
            phone=person.phones[0] if person.phones else None,
            loyalty_card=card,
        )


def _simulate_person(shop: Shop, index: int) -> None:
    """Draw one person's whole history from the shop's random generator."""
    rng = shop.rng
    person = shop.new_person()
    if index % LEADS_EVERY in LEAD_INDEXES:
        _lead(shop, person, index)
        return
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    email = f"{first}.{last}{index}@example.com"
    phone = f"+4930{rng.randint(1000000, 9999999)}"
    shop_only = rng.random() < 0.12
    signs_up = not shop_only and rng.random() < 0.7
    when = shop.start + timedelta(seconds=rng.uniform(0, WINDOW.total_seconds() * 0.6))
    if shop_only:
        _shop_only(shop, person, when, email=email, phone=phone)
        return
    devices = 1 + (rng.random() < 0.35) + (rng.random() < 0.1)
    # A few people (always the first ones, so even a small world has some) send junk user ids.
    junk = index <= 3 or rng.random() < 0.05
    # Some use a device someone else used before them (a household's laptop): the device
    # stays with whoever the platform saw first, and their own user id never joins it.
    borrows = index == 5 or rng.random() < 0.03
    borrowed = (
        [p.anonymous_ids[0] for p in reversed(shop.people[:-1]) if p.anonymous_ids and not p.lead_of][:1]
        if borrows
        else []
    )
    buys_for = rng.choice(COMPANIES) if index == 6 or rng.random() < 0.03 else None
    current_email = email
    for device in range(devices):
        if device == 0 and borrowed:
            anonymous_id = borrowed[0]
            person.anonymous_ids.append(anonymous_id)
        else:
            anonymous_id = shop.new_device(person)
        sessions = rng.randint(1, 3)
        for session in range(sessions):
            when = min(when + timedelta(hours=rng.uniform(2, 24 * 9)), shop.end - timedelta(hours=2))
            identity: dict[str, Any] = {"anonymousId": anonymous_id}
            if person.user_id is not None:
                identity["userId"] = person.user_id
            elif junk:
                # A broken snippet that sends a junk userId next to the real anonymousId.
                identity["userId"] = rng.choice(JUNK_USER_IDS)
            when = shop.browse(person, when, identity)
            when += timedelta(minutes=rng.uniform(3, 20))
            if signs_up and person.user_id is None and (device > 0 or session == sessions - 1):
                when = shop.sign_up(
                    person,
                    when,
                    anonymous_id=anonymous_id,
                    user_id=f"shop{shop.seed}-u{index:04d}",
                    email=email.upper() if rng.random() < 0.2 else email,
                    phone=phone[:5] + " " + phone[5:] if rng.random() < 0.4 else None,
                    first_name=first.title(),
                    last_name=last.title(),
                    refuses_profiling=rng.random() < 0.06,
                )
                # The back end may alias the device the person signed up on (the borrower of a
                # household laptop always does: refused, the laptop's first user is a customer);
                # a broken one aliases a junk id, which the rules block.
                if (borrowed and device == 0) or rng.random() < 0.04:
                    shop.alias(person, when + timedelta(seconds=30), previous_id=anonymous_id)
                if junk and rng.random() < 0.3:
                    shop.alias(person, when + timedelta(seconds=40), previous_id=rng.choice(JUNK_USER_IDS))
                if buys_for is not None:
                    when += timedelta(minutes=rng.uniform(1, 5))
                    traits = _account_traits(shop, buys_for, when, full=True)
                    shop.join_account(
                        person, when, anonymous_id=anonymous_id, company=buys_for, traits=traits
                    )
            elif person.user_id is not None and session == 0 and device > 0:
                shop.log_in(person, when, anonymous_id=anonymous_id)
                if buys_for is not None and rng.random() < 0.5:
                    traits = _account_traits(shop, buys_for, when, full=False)
                    shop.join_account(
                        person, when, anonymous_id=anonymous_id, company=buys_for, traits=traits
                    )
            if person.user_id is not None and rng.random() < 0.35:
                when += timedelta(minutes=rng.uniform(1, 10))
                when = _online_order(shop, person, when, anonymous_id=anonymous_id, email=current_email)
            if person.user_id is not None and current_email == email and rng.random() < 0.06:
                when += timedelta(minutes=rng.uniform(1, 30))
                current_email = f"{first}.{last}.{index}@mail.example.org"
                shop.change_email(person, when, anonymous_id=anonymous_id, email=current_email)
    if person.user_id is None:
        return
    if rng.random() < 0.04:
        when = _app(
            shop, person, min(when + timedelta(hours=rng.uniform(1, 48)), shop.end - timedelta(days=5))
        )
    if rng.random() < 0.03:
        when = min(when + timedelta(days=rng.uniform(1, 5)), shop.end - timedelta(minutes=30))
        shop.kiosk_sign_in(person, when)
    if rng.random() < 0.3:
        when = min(when + timedelta(days=rng.uniform(1, 10)), shop.end - timedelta(minutes=5))
        shown = current_email.title() if rng.random() < 0.3 else current_email
        _store_order(shop, person, when, email=shown)
    for _ in range(rng.randint(0, 2)):
        when = min(when + timedelta(hours=rng.uniform(1, 72)), shop.end - timedelta(hours=1))
        shop.email_engagement(person, when, email=current_email, click=rng.random() < 0.4)


def simulate(*, seed: int, people: int, end: datetime) -> World:
    """Simulate `people` people over the 90 days before `end`."""
    shop = Shop(seed=seed, end=end)
    for index in range(1, people + 1):
        _simulate_person(shop, index)
    return shop.world()
