"""A synthetic shop: a deterministic customer history sent through the real tracking API,
and the ground truth that the profile, segment and campaign tests check against.

`cdp-shop --seed 7 --people 200` simulates visitors who browse anonymously, sign up,
identify with their e-mail, change devices, buy online (`Order Completed` track
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
  "blocked_identifiers": [                  # junk values sent as identifiers; a correct identity
    {"type": "user_id", "value": "undefined"}   # graph blocks them and never merges people through them
  ],
  "totals": {"events": 8123, "tracking_calls": 8000, "transactions": 123}
}
```

Every person with a user id also has at least one e-mail; people who only shop in a
store are identified by e-mail (and sometimes phone) alone. A person's events carry
junk identifiers only beside a real one, so each event still belongs to exactly one
true person.
"""
