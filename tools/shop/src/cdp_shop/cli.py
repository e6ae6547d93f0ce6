"""The `cdp-shop` command: simulate, send, and write the ground truth."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx

from cdp_shop.send import SendFailed, load_rates, send_world
from cdp_shop.world import simulate


def _dev_env() -> dict[str, str]:
    """Read `.run/dev.env` of the nearest enclosing checkout, if there is one."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        path = folder / ".run" / "dev.env"
        if path.exists():
            pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
            return {key.strip(): value.strip() for key, value in pairs}
    return {}


def _parser(defaults: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdp-shop", description=__doc__)
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--people", type=int, default=200, help="number of true people (default 200)")
    parser.add_argument(
        "--end", help="end of the simulated 90 days, ISO date or time in UTC (default: today, midnight UTC)"
    )
    parser.add_argument("--truth", default="shop-truth.json", help="where to write the ground truth")
    parser.add_argument("--ingest-url", default=defaults.get("CDP_INGEST_URL", "http://127.0.0.1:8001"))
    parser.add_argument("--write-key", default=defaults.get("CDP_WRITE_KEY"))
    parser.add_argument("--profile-url", default=defaults.get("CDP_PROFILE_URL", "http://127.0.0.1:8002"))
    parser.add_argument(
        "--admin-token",
        default=defaults.get("CDP_ADMIN_TOKEN"),
        help="token with profiles:write, to load the world's exchange rates first (skipped without one)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only write the truth; send nothing")
    parser.add_argument("--show-profiles", type=int, default=0, help="print the profile URLs of N people")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command."""
    defaults = {**_dev_env(), **{k: v for k, v in os.environ.items() if k.startswith("CDP_")}}
    args = _parser(defaults).parse_args(argv)
    if args.end:
        end = datetime.fromisoformat(args.end)
        end = end if end.tzinfo else end.replace(tzinfo=UTC)
    else:
        end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    world = simulate(seed=args.seed, people=args.people, end=end)
    Path(args.truth).write_text(json.dumps(world.truth, indent=1, sort_keys=True) + "\n")
    out = sys.stdout
    totals = world.truth["totals"]
    out.write(
        f"simulated {args.people} people: {totals['events']} events, {totals['profiles']} expected profiles;"
        f" truth in {args.truth}\n"
    )
    if args.dry_run:
        return 0
    if not args.write_key:
        sys.stderr.write("no write key: pass --write-key or run `make up` to get .run/dev.env\n")
        return 2
    if args.admin_token:
        try:
            days = asyncio.run(
                load_rates(
                    days=world.truth["exchange_rates"],
                    profile_url=args.profile_url,
                    admin_token=args.admin_token,
                )
            )
            out.write(f"loaded the exchange rates of {days} days\n")
        except (SendFailed, httpx.HTTPError) as exc:
            # Orders are kept without a value until rates come; the calls are worth sending anyway.
            sys.stderr.write(
                f"exchange rates not loaded ({exc}); orders not in euros have no value until they are\n"
            )
    sent = asyncio.run(send_world(calls=world.calls, ingest_url=args.ingest_url, write_key=args.write_key))
    out.write(f"sent in {sent.requests} requests: {sent.accepted} accepted, {sent.rejected} rejected\n")
    shown = [p for p in world.truth["people"] if p["user_id"]][: args.show_profiles]
    if shown:
        out.write("profiles (GET with Authorization: Bearer $CDP_ADMIN_TOKEN):\n")
    for person in shown:
        out.write(f"  {person['key']}: {args.profile_url}/v1/profiles/user_id:{person['user_id']}\n")
    return 0 if sent.rejected == 0 else 1
