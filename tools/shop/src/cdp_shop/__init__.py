"""A synthetic shop: a deterministic customer history sent through the real tracking API,
and the ground truth that the profile, segment and campaign tests check against.

`cdp-shop --seed 7 --people 200` simulates visitors who browse anonymously, sign up,
identify with their e-mail, change devices and e-mail addresses, share a household
laptop, sign in at a store kiosk, buy online (the web tag's `Order Completed`) and in
stores (`POST /v1/transactions`), have web orders sent again by the ERP, cancel, get
whole refunds and goodwill credits, bring lines back to a store (the POS and the web shop
both sending the return), pay in euros, pounds, francs and dollars, use a phone app their
account is aliased to (server side, before or after its first visit), buy for a company
(`group` calls), ask for quotes spelling their company's name their own way, refuse
profiling in the sign-up's consent choice, and open and click e-mails. Everything is drawn
from `random.Random(seed)` and timed relative to `--end` (default: today, midnight UTC), so
the same seed and end give the same calls and the same truth, byte for byte. Message ids
are derived from the seed, so sending the same world twice is deduplicated by the platform.
With an admin token the command loads the world's exchange rates (`PUT /v1/exchange-rates`)
before sending.

Ground-truth file (JSON, `format` = "cdp-shop-truth/2"):

```
{
  "format": "cdp-shop-truth/2",
  "seed": 7, "people_count": 200,
  "start": "<ISO time>", "end": "<ISO time>",       # the simulated window
  "currencies": ["EUR", "GBP", "CHF", "USD"], "reporting_currency": "EUR",
  "exchange_rates": [                       # euro reference rates of every weekday (none for USD)
    {"date": "2026-08-14", "base": "EUR", "rates": {"GBP": 0.8477, "CHF": 0.9419}}
  ],
  "people": [
    {
      "key": "p0001",                       # the generator's own id of the true person
      "user_id": "shop7-u0001" | null,      # null: never signed up (anonymous only, or shop-only)
      "anonymous_ids": ["..."],             # one per device, in order of first use
      "emails": ["ada.lovelace1@example.com"],   # normalised (lower-case); may be empty
      "phones": ["+4930..."],               # E.164; may be empty
      "orders": [                           # every order they placed, and what became of it
        {"order_id": "...", "channel": "online" | "store", "store_id": "..." | null,
         "currency": "EUR", "total": 59.9, "time": "<ISO>",
         "items": [{"sku": "...", "name": "...", "category": "...", "price": 29.95, "quantity": 2}],
         "state": "completed" | "partially_refunded" | "refunded" | "cancelled",
         "refunded": 29.95, "net": 29.95,   # in the order's currency
         "value": 29.95 | null,             # net in the reporting currency; null: no rate
         "refund_time": "<ISO>" | null, "cancel_time": "<ISO>" | null,
         "sent_by": ["web", "pos"]}         # the web tag, transactions (POS, ERP); first sender first
      ],
      "order_count": 3,                     # orders not cancelled
      "revenue": {"EUR": 119.8},            # per currency: net of those orders
      "net_revenue": 131.2,                 # their values added up
      "first_seen": "<ISO>", "last_seen": "<ISO>",   # earliest and latest event time of the person
      "favourite_category": "Tea" | null,   # most items kept (by quantity), ties by name
      "emails_opened": 2, "emails_clicked": 1,
      "account": "shop7-acme" | null,       # the company account they buy for
      "lead_of": "acme" | null,             # the company they asked a quote for (nothing else known)
      "refuses_profiling": false,           # their consent choice leaves out profiling
      "message_ids": ["..."],               # messageId of every event of this person (transactions:
                                            # "txn:purchase:<order_id>" and "txn:refund:<order_id>")
      "event_count": 41
    }
  ],
  "profiles": [                             # what a correct platform ends with (see below)
    {
      "people": ["p0001", "p0002"],         # whose events it holds (two: a shared device)
      "identifiers": [{"type": "anonymous_id", "value": "..."}, {"type": "user_id", "value": "..."}],
      "message_ids": ["..."], "event_count": 12,
      "first_seen": "<ISO>", "last_seen": "<ISO>",
      "page_views": 5, "event_counts": {"Order Completed": 2, ...},   # track events by name
      "orders": 2, "refunded_orders": 1,    # orders counting here, not cancelled; (partly) refunded
      "revenue": {"EUR": 59.9},             # per currency: net of those orders
      "average_order_value": {"EUR": 29.95},   # per currency: revenue / orders
      "net_revenue": 70.31,                 # values of those orders added up (no rate: left out)
      "last_order_date": "2026-10-02" | null,   # the latest of those orders (UTC date)
      "favourite_category": "Tea" | null,   # most items kept by quantity, ties by name
      "preferred_payment_method": "card" | null,   # most frequent over those orders, ties by name
      "order_details": [                    # every order counting here (cancelled ones too)
        {"order_id": "...", "state": "partially_refunded", "currency": "GBP", "net": 59.9, "value": 70.31}
      ],
      "accounts": ["shop7-acme"],           # the accounts its group calls linked it to
      "company": "acme" | null,             # the company its company trait spells
      "profiling_refused": false            # one of its events refused profiling
    }
  ],
  "accounts": [                             # every account group calls named
    {"group_id": "shop7-acme", "traits": {"name": "...", "industry": "...", "employees": 120,
     "plan": "team"},                       # per trait, the latest call's value
     "people": ["p0006"]}
  ],
  "duplicate_company_pairs": [              # two profiles holding spellings of one company
    {"company": "ibm", "identifiers": [{"type": "anonymous_id", "value": "..."}, {...}]}
  ],                                        # (each by one of its identifiers)
  "profiling_refused_people": ["p0042"],
  "alias_merges": ["<messageId>"],          # an alias that merged profiles, once per profile merged
  "refused_aliases": [                      # aliases the identity rules refused, with the reason
    {"message_id": "...", "previous": {"type": "anonymous_id", "value": "..."}, "reason": "limit:user_id"}
  ],
  "blocked_identifiers": [                  # junk values sent as identifiers; a correct identity
    {"type": "user_id", "value": "undefined"}   # graph blocks them and never merges people through them
  ],
  "quarantined_identifiers": [              # identifiers that tied more profiles than the threshold
    {"type": "anonymous_id", "value": "shop7-kiosk-berlin-1"}
  ],
  "unresolved_message_ids": [],             # events no profile takes (no usable identifier)
  "totals": {"events": 8123, "tracking_calls": 8000, "transactions": 123, "profiles": 230,
             "orders": 160}
}
```

Every person with a user id also has at least one e-mail; people who only shop in a
store are identified by e-mail (and sometimes phone) alone. A person's events carry
junk identifiers only beside a real one.

`people` is the truth about the real people; `profiles` is what the published identity
and order rules can make of what they sent, in the order it is sent (`cdp_shop.identity`
and `cdp_shop.orders` hold that reading of the rules): a visitor whose devices only ever
carried a junk user id is one profile per device; a household laptop stays with whoever
the platform saw on it first, so a second person's anonymous browsing on it counts for the
first, while their own user id never joins it (two known customers are never merged, and
an alias of the laptop to the second is refused); an app aliased to its user joins them
whether the alias comes before or after its visits; an e-mail change keeps both addresses,
up to the limit of five; the store kiosk every customer signs in at is quarantined once it
has tied more than ten profiles; an order counts once, on the profile holding its first
event, whoever sent it. The shared laptop and the kiosk are the only order-dependent
conflicts: through several Kafka partitions the platform may see them in another order
(ARCHITECTURE.md allows it), so only a run that resolves the calls in the order sent (as
the profile scenario test does) must match `profiles` exactly.
"""
