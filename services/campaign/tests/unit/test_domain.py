"""Pure rules of campaigns: status transitions, sticky assignment, the template sandbox, webhook
addresses, quiet hours, tokens, uplift statistics, recommendations and journey steps."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta

import pytest
from cdp_campaign.domain.addresses import (
    AddressNotAllowed,
    PinnedRequest,
    check_address,
    check_url_shape,
    parse_allowlist,
    pinned_request,
    resolve_allowed,
)
from cdp_campaign.domain.assignment import HOLDOUT, assign_group
from cdp_campaign.domain.campaigns import CampaignError, CampaignSpec, Status, check_transition
from cdp_campaign.domain.journeys import Facts, JourneySpec, Position, advance
from cdp_campaign.domain.messages import TrackingLinks, build_email
from cdp_campaign.domain.recommendations import Purchase, recommend
from cdp_campaign.domain.rules import QuietHours
from cdp_campaign.domain.stats import GroupOutcome, uplift
from cdp_campaign.domain.templates import TemplateRefused, render
from cdp_campaign.domain.tokens import InvalidToken, is_privacy_proxy_open, read_token, sign_token
from pydantic import ValidationError

# --- status -------------------------------------------------------------------------------


def test_status_moves_only_along_the_allowed_transitions() -> None:
    check_transition(current=Status.DRAFT, target=Status.SCHEDULED)
    check_transition(current=Status.RUNNING, target=Status.PAUSED)
    check_transition(current=Status.PAUSED, target=Status.RUNNING)
    with pytest.raises(CampaignError) as refused:
        check_transition(current=Status.COMPLETED, target=Status.RUNNING)
    assert refused.value.code == "invalid_transition"
    with pytest.raises(CampaignError):
        check_transition(current=Status.DRAFT, target=Status.PAUSED)


def test_a_campaign_spec_refuses_incomplete_or_contradictory_input() -> None:
    base = {
        "name": "x",
        "audience": {"type": "segment", "segment_key": "s"},
        "variants": [{"key": "a", "subject": "s", "body": "b"}],
    }
    CampaignSpec.model_validate(base)
    for broken in (
        {**base, "variants": []},
        {**base, "variants": [{"key": "a", "body": "b"}]},  # e-mail without subject
        {
            **base,
            "variants": [
                {"key": "a", "subject": "s", "body": "b"},
                {"key": "a", "subject": "s", "body": "c"},
            ],
        },
        {**base, "channel": "webhook"},  # no URL
        {**base, "schedule": {"type": "at"}},
        {**base, "schedule": {"type": "at", "at": "2026-12-01T09:00:00"}},  # no time zone
        {**base, "holdout_percent": 95},
        {**base, "unknown": 1},
        {**base, "audience": {"type": "nonsense"}},
    ):
        with pytest.raises(ValidationError):
            CampaignSpec.model_validate(broken)


# --- holdout and variants -------------------------------------------------------------------


def test_assignment_is_sticky_and_splits_by_share() -> None:
    variants = [("a", 1), ("b", 1)]
    people = [f"p{i}" for i in range(20_000)]
    groups = [
        assign_group(campaign_id="c1", profile_id=p, holdout_percent=10, variants=variants) for p in people
    ]
    again = [
        assign_group(campaign_id="c1", profile_id=p, holdout_percent=10, variants=variants) for p in people
    ]
    assert groups == again
    share = {g: groups.count(g) / len(people) for g in (HOLDOUT, "a", "b")}
    assert share[HOLDOUT] == pytest.approx(0.10, abs=0.01)
    assert share["a"] == pytest.approx(0.45, abs=0.015)
    assert share["b"] == pytest.approx(0.45, abs=0.015)


def test_holdout_differs_between_campaigns() -> None:
    people = [f"p{i}" for i in range(5000)]
    one = {
        p
        for p in people
        if assign_group(campaign_id="c1", profile_id=p, holdout_percent=10, variants=[("a", 1)]) == HOLDOUT
    }
    two = {
        p
        for p in people
        if assign_group(campaign_id="c2", profile_id=p, holdout_percent=10, variants=[("a", 1)]) == HOLDOUT
    }
    assert len(one & two) < len(one) * 0.2


# --- template sandbox ----------------------------------------------------------------------------


def test_templates_personalise_with_fallbacks() -> None:
    values = {
        "profile": {"first_name": "Ada"},
        "computed": {"orders_30d": 3},
        "segments": ["vip"],
        "locale": "de",
    }
    assert (
        render("Hi {{ profile.first_name }}, {{ computed.orders_30d }} orders", values) == "Hi Ada, 3 orders"
    )
    assert render("Hi {{ profile.nickname | default('friend') }}", values) == "Hi friend"
    assert render("{% if 'vip' in segments %}VIP{% endif %} {{ locale }}", values) == "VIP de"
    assert (
        render("<p>{{ profile.first_name }}</p>", {"profile": {"first_name": "<script>"}}, html=True)
        == "<p>&lt;script&gt;</p>"
    )


@pytest.mark.parametrize(
    "attack",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ profile.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ profile.update({'x': 1}) }}",
        "{{ segments.append('admin') }}",
        "{{ self._TemplateReference__context }}",
    ],
)
def test_the_sandbox_refuses_attribute_access_attacks(attack: str) -> None:
    values = {"profile": {"first_name": "Ada"}, "segments": []}
    try:
        output = render(attack, values)
    except TemplateRefused:
        return
    # What is not refused must not have leaked anything.
    assert "class" not in output
    assert "function" not in output
    assert "uid=" not in output
    assert output == ""


@pytest.mark.parametrize(
    "heavy",
    [
        "{% for i in range(100000000) %}x{% endfor %}",
        "{{ 'x' * 100000000 }}",
        "{{ 9 ** 9999999 }}",
        "{% for i in range(10000) %}{% for j in range(10000) %}{{ i }}{% endfor %}{% endfor %}",
    ],
)
def test_the_sandbox_limits_time_and_size(heavy: str) -> None:
    with pytest.raises(TemplateRefused):
        render(heavy, {})


class Greedy:
    """A value whose text cannot be allocated, as under a worker's memory limit."""

    def __str__(self) -> str:
        raise MemoryError


def test_a_template_that_runs_out_of_memory_is_refused() -> None:
    with pytest.raises(TemplateRefused, match="more memory"):
        render("Hi {{ profile.name }}", {"profile": {"name": Greedy()}})


def test_a_broken_template_is_refused_with_a_reason() -> None:
    with pytest.raises(TemplateRefused, match="invalid"):
        render("{% for %}", {})


# --- webhook addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "192.168.0.1",
        "172.16.0.1",
        "::1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "100.64.0.1",
    ],
)
def test_loopback_private_and_metadata_addresses_are_refused(address: str) -> None:
    with pytest.raises(AddressNotAllowed):
        check_address(address, allowlist=[])


def test_public_and_allowlisted_addresses_pass() -> None:
    check_address("93.184.216.34", allowlist=[])
    check_address("127.0.0.1", allowlist=parse_allowlist(["127.0.0.0/8"]))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.5:8080/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/x",
        "http://[::1]/x",
        "http://2130706433/x",
    ],
)
def test_webhook_urls_resolving_to_internal_addresses_are_refused(url: str) -> None:
    with pytest.raises(AddressNotAllowed):
        resolve_allowed(url, allowlist=[])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://x",
        "http://user:pw@example.com/",
        "http:///nohost",
    ],
)
def test_only_http_and_https_urls_without_credentials_are_allowed(url: str) -> None:
    with pytest.raises(AddressNotAllowed):
        check_url_shape(url)


# --- quiet hours ---------------------------------------------------------------------------------------


def test_quiet_hours_follow_the_recipients_time_zone() -> None:
    quiet = QuietHours(start=time(21), end=time(8))
    noon_utc = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert quiet.next_allowed(now=noon_utc, timezone="Europe/Berlin") is None
    resume = quiet.next_allowed(now=noon_utc, timezone="Asia/Tokyo")  # 21:00 in Tokyo
    assert resume == datetime(2026, 11, 23, 23, 0, tzinfo=UTC)  # 08:00 in Tokyo
    assert quiet.next_allowed(now=noon_utc, timezone="Not/AZone") is None  # falls back to UTC


# --- tokens and messages -------------------------------------------------------------------------------------


def test_tokens_are_signed_and_tampering_is_detected() -> None:
    token = sign_token(key="k", claims={"s": "snd_1", "k": "o"})
    assert read_token(key="k", token=token) == {"s": "snd_1", "k": "o"}
    for forged in (
        token[:-2] + "xx",
        sign_token(key="other", claims={"s": "snd_1", "k": "o"}),
        "garbage",
        "a.b.c",
    ):
        with pytest.raises(InvalidToken):
            read_token(key="k", token=forged)


def test_apple_privacy_proxy_opens_are_recognised() -> None:
    assert is_privacy_proxy_open("Mozilla/5.0")
    assert not is_privacy_proxy_open("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15")
    assert not is_privacy_proxy_open(None)


def test_an_email_carries_tracked_links_a_pixel_and_one_click_unsubscribe() -> None:
    links = TrackingLinks(key="k", base_url="http://c.test", send_id="snd_1")
    mail = build_email(
        sender="Shop <a@b.test>",
        to="x@y.test",
        subject="Grüße",
        html='<a href="https://shop.test/p">p</a> ü',
        text=None,
        links=links,
        reference="snd_1",
    )
    assert mail.sender == "a@b.test"
    assert mail.recipients == ("x@y.test",)
    message = mail.parsed()
    assert message["Subject"] == "Grüße"
    assert message["List-Unsubscribe"].startswith("<http://c.test/v1/t/unsubscribe/")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert "http://c.test/v1/t/click/" in html
    assert "https://shop.test/p" not in html
    assert "http://c.test/v1/t/open/" in html
    assert "ü" in html
    assert message.get_body(preferencelist=("plain",)).get_content().strip() == "p ü"  # type: ignore[union-attr]


def test_a_rendered_subject_cannot_add_headers() -> None:
    mail = build_email(
        sender="a@b.test",
        to="x@y.test",
        subject="Hi\r\nBcc: victim@evil.test",
        html="b",
        text=None,
        links=None,
        reference="r",
    )
    message = mail.parsed()
    assert message["Bcc"] is None
    assert message["Subject"] == "Hi Bcc: victim@evil.test"


# --- statistics -------------------------------------------------------------------------------------------------


def test_uplift_recovers_a_known_effect_within_its_interval() -> None:
    rng = random.Random(7)
    treated_n, holdout_n = 20_000, 5_000
    treated_conv = sum(rng.random() < 0.06 for _ in range(treated_n))
    holdout_conv = sum(rng.random() < 0.04 for _ in range(holdout_n))
    result = uplift(
        treated=GroupOutcome(treated_n, treated_conv, treated_conv * 50.0),
        holdout=GroupOutcome(holdout_n, holdout_conv, holdout_conv * 50.0),
        cost=1000.0,
    )
    low, high = result["ci95"]
    assert low < 0.02 < high
    assert low > 0  # the effect is significant
    assert result["roi"] == pytest.approx((result["incremental_revenue"] - 1000) / 1000)


def test_uplift_without_a_holdout_says_nothing() -> None:
    result = uplift(treated=GroupOutcome(100, 5, 0), holdout=GroupOutcome(0, 0, 0), cost=0)
    assert result["absolute"] is None
    assert result["ci95"] is None


# --- recommendations --------------------------------------------------------------------------------------------


def test_recommendations_favour_the_favourite_categorys_best_sellers_not_yet_bought() -> None:
    def line(order: str, product: str, category: str, quantity: int = 1) -> Purchase:
        return Purchase(order, product, product.upper(), category, 10.0, quantity)

    history = [line("o1", "tea1", "tea"), line("o2", "tea2", "tea"), line("o3", "mug1", "mugs")]
    sales = [
        *history,
        line("o4", "tea3", "tea", 50),
        line("o5", "tea4", "tea", 20),
        line("o6", "tea1", "tea", 99),
        line("o7", "mug1", "mugs"),
        line("o7", "spoon", "cutlery"),
    ]
    picks = recommend(history=history, catalogue_sales=sales, limit=3)
    assert [p.product_id for p in picks] == ["tea3", "tea4", "spoon"]
    assert picks[2].reason.startswith("often bought together")


# --- journeys ------------------------------------------------------------------------------------------------------


def _welcome() -> JourneySpec:
    content = {"key": "m", "subject": "s", "body": "b"}
    return JourneySpec.model_validate(
        {
            "name": "welcome",
            "trigger": {"type": "segment_entered", "segment_key": "new"},
            "steps": [
                {"type": "send", "content": {**content, "key": "welcome"}},
                {"type": "wait", "hours": 24},
                {"type": "branch", "engagement": "opened", "then_step": 4, "else_step": 3},
                {"type": "send", "content": {**content, "key": "reminder"}},
                {"type": "wait", "until_event": "Order Completed", "hours": 72},
                {"type": "send", "content": {**content, "key": "thanks"}},
            ],
            "goal": {"event": "Order Completed"},
        }
    )


def test_a_journey_sends_waits_and_branches() -> None:
    spec = _welcome()
    start = datetime(2026, 11, 23, 12, tzinfo=UTC)
    facts = Facts(traits={}, engaged=lambda kind: False, event_seen=lambda event, since: False)
    outcome = advance(spec=spec, position=Position(step=0), now=start, facts=facts)
    assert outcome.sends == [0]
    assert outcome.position.state == "waiting"
    assert outcome.position.wake_at == start + timedelta(hours=24)
    early = advance(spec=spec, position=outcome.position, now=start + timedelta(hours=1), facts=facts)
    assert early.sends == []
    later = advance(spec=spec, position=early.position, now=start + timedelta(hours=24), facts=facts)
    assert later.sends == [3]  # not opened: the reminder
    assert later.position.waiting_for == "Order Completed"
    bought = Facts(traits={}, engaged=lambda kind: False, event_seen=lambda event, since: True)
    done = advance(spec=spec, position=later.position, now=start + timedelta(hours=30), facts=bought)
    assert done.sends == [5]
    assert done.position.state == "done"


def test_a_journey_only_goes_forward() -> None:
    with pytest.raises(ValidationError):
        JourneySpec.model_validate(
            {
                "name": "loop",
                "trigger": {"type": "event", "event": "x"},
                "steps": [
                    {"type": "wait", "hours": 1},
                    {"type": "branch", "engagement": "opened", "then_step": 0, "else_step": 2},
                ],
            }
        )


def test_a_pinned_request_dials_the_checked_address_and_keeps_the_name_for_tls() -> None:
    https = pinned_request("https://Hooks.Example:8443/in?x=1", "203.0.113.7")
    assert https == PinnedRequest(
        url="https://203.0.113.7:8443/in?x=1", host_header="Hooks.Example:8443", tls_name="hooks.example"
    )
    plain = pinned_request("http://bücher.example/in", "2001:db8::1")
    assert plain == PinnedRequest(url="http://[2001:db8::1]/in", host_header="bücher.example", tls_name=None)
    assert pinned_request("https://bücher.example/", "203.0.113.7").tls_name == "xn--bcher-kva.example"


def test_every_address_a_name_answers_is_checked_with_the_given_resolver() -> None:
    def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.8"] if host == "mixed.example" else []

    with pytest.raises(AddressNotAllowed, match=r"10\.0\.0\.8"):
        resolve_allowed("https://mixed.example/hook", allowlist=[], resolve=mixed)
    with pytest.raises(AddressNotAllowed, match="does not resolve"):
        resolve_allowed("https://nothing.example/hook", allowlist=[], resolve=mixed)
