"""A synthetic shop: a deterministic customer history sent through the real tracking API,
and the ground truth that the profile, segment and campaign tests check against.

`cdp-shop --seed 7 --people 200` simulates visitors who browse anonymously, sign up,
identify with their e-mail, change devices and e-mail addresses, share a household
laptop, sign in at a store kiosk, buy online (`Order Completed` track
calls) and in stores (`POST /v1/transactions`), get refunds, and open and click
e-mails. Everything is drawn from `random.Random(seed)` and timed relative to
`--end` (default: today, midnight UTC), so the same seed and end give the same
calls and the same truth, byte for byte. Message ids are derived from the seed,
so sending the same world twice is deduplicated by the platform.

Ground-truth file (JSON, `format` = "cdp-shop-truth/1"):

```
{
  "format": "cdp-shop-truth/1",
  "seed": 7, "people_count": 200,
  "start": "<ISO time>", "end": "<ISO time>",       # the simulated window
  "currencies": ["EUR", "GBP", "CHF"],
  "people": [
    {
      "key": "p0001",                       # the generator's own id of the true person
      "user_id": "shop7-u0001" | null,      # null: never signed up (anonymous only, or shop-only)
      "anonymous_ids": ["..."],             # one per device, in order of first use
      "emails": ["ada.lovelace1@example.com"],   # normalised (lower-case); may be empty
      "phones": ["+4930..."],               # E.164; may be empty
      "orders": [                           # every purchase, refunded or not
        {"order_id": "...", "channel": "online" | "store", "store_id": "..." | null,
         "currency": "EUR", "total": 59.9, "time": "<ISO>", "refunded": false,
         "refund_time": "<ISO>" | null,
         "items": [{"sku": "...", "name": "...", "category": "...", "price": 29.95, "quantity": 2}]}
      ],
      "order_count": 3,                     # orders not refunded
      "revenue": {"EUR": 119.8},            # per currency: order totals minus refunded totals
      "first_seen": "<ISO>", "last_seen": "<ISO>",   # earliest and latest event time of the person
      "favourite_category": "Tea" | null,   # most items bought (by quantity, refunds excluded), ties by name
      "emails_opened": 2, "emails_clicked": 1,
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
      "orders": 2, "refunded_orders": 1,    # Order Completed events; distinct refunded order ids
      "revenue": {"EUR": 59.9},             # per currency: orders minus refunds of this profile
      "last_order_date": "2026-10-02" | null,   # the latest order, refunded or not (UTC date)
      "favourite_category": "Tea" | null,   # most items by quantity over orders not refunded, ties by name
      "preferred_payment_method": "card" | null   # most frequent over every order, ties by name
    }
  ],
  "blocked_identifiers": [                  # junk values sent as identifiers; a correct identity
    {"type": "user_id", "value": "undefined"}   # graph blocks them and never merges people through them
  ],
  "quarantined_identifiers": [              # identifiers that tied more profiles than the threshold
    {"type": "anonymous_id", "value": "shop7-kiosk-berlin-1"}
  ],
  "unresolved_message_ids": [],             # events no profile takes (no usable identifier)
  "totals": {"events": 8123, "tracking_calls": 8000, "transactions": 123, "profiles": 230}
}
```

Every person with a user id also has at least one e-mail; people who only shop in a
store are identified by e-mail (and sometimes phone) alone. A person's events carry
junk identifiers only beside a real one.

`people` is the truth about the real people; `profiles` is what the published identity
rules can make of what they sent, in the order it is sent (`cdp_shop.identity` holds that
reading of the rules): a visitor whose devices only ever carried a junk user id is one
profile per device; a household laptop stays with whoever the platform saw on it first,
so a second person's anonymous browsing on it counts for the first, while their own user
id never joins it (two known customers are never merged); an e-mail change keeps both
addresses, up to the limit of five; the store kiosk every customer signs in at is
quarantined once it has tied more than ten profiles. The shared laptop and the kiosk are
the only order-dependent conflicts: through several Kafka partitions the platform may see
them in another order (ARCHITECTURE.md allows it), so only a run that resolves the calls
in the order sent (as the profile scenario test does) must match `profiles` exactly.
"""
