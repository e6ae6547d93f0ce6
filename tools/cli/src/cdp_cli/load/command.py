"""`cdp load`: the command, its plan and its progress."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Console

from cdp_cli.config import DEFAULT_ENV_FILE, read_env_file
from cdp_cli.load.loader import (
    BYTES_PER_EVENT,
    BYTES_PER_PROFILE,
    LoadRefused,
    NotEnoughDisk,
    _size,
    base_bytes,
    check_disk,
    describe,
    estimate_bytes,
    load_base,
    plain_url,
)

console = Console()
errors = Console(stderr=True, soft_wrap=True)


def _stack_value(name: str, env_file: Path) -> str:
    """Return a CDP_* value from the environment, else from the stack's env files (.run/dev.env, .run/secrets.env)."""
    if os.environ.get(name):
        return os.environ[name]
    for path in (env_file, env_file.parent / "secrets.env"):
        if path.exists():
            value = read_env_file(path).get(name)
            if value:
                return value
    return ""


def load_command(
    profiles: Annotated[int, typer.Option("--profiles", min=0, help="How many people the base should hold.")],
    events_per_profile: Annotated[int, typer.Option(min=1, max=1000, help="Events per person.")] = 10,
    years: Annotated[float, typer.Option(min=0.01, max=20, help="How far back the events go.")] = 2.0,
    seed: Annotated[int, typer.Option(min=0, help="Another seed loads other people.")] = 0,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="CDP_DATABASE_URL", help="The services' database (default: .run/dev.env)."),
    ] = None,
    hash_key: Annotated[
        str | None,
        typer.Option(
            envvar="CDP_HASH_KEY",
            show_default=False,
            help="The services' CDP_HASH_KEY (default: .run/secrets.env).",
        ),
    ] = None,
    plan: Annotated[
        bool, typer.Option("--plan", help="Only say what the load needs and whether it fits.")
    ] = False,
    rebuild_indexes: Annotated[
        bool | None,
        typer.Option(
            "--rebuild-indexes/--keep-indexes",
            show_default=False,
            help="Drop secondary indexes for the load and build them after (default: for loads of 1,000,000 "
            "events and more that at least double the event store).",
        ),
    ] = None,
    env_file: Annotated[Path, typer.Option(help="The stack's env file.")] = DEFAULT_ENV_FILE,
) -> None:
    """Fill the stack with generated people in bulk (profile's and segment's tables); a rerun adds only what is missing."""
    url = database_url or _stack_value("CDP_DATABASE_URL", env_file)
    key = hash_key or _stack_value("CDP_HASH_KEY", env_file)
    if not url:
        errors.print("[red]no database: set CDP_DATABASE_URL or run `make up` for .run/dev.env[/red]")
        raise typer.Exit(2)
    if not key:
        errors.print(
            "[red]no hash key: set CDP_HASH_KEY to the services' key (make up keeps it in .run/secrets.env)[/red]"
        )
        raise typer.Exit(2)
    if plan:
        asyncio.run(_print_plan(url, profiles, events_per_profile))
        return
    try:
        result = asyncio.run(
            load_base(
                database_url=url,
                profiles=profiles,
                hash_key=key,
                events_per_profile=events_per_profile,
                years=years,
                seed=seed,
                progress=lambda report: console.print(describe(report)),
                rebuild_indexes=rebuild_indexes,
            )
        )
    except NotEnoughDisk as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    except LoadRefused as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    for warning in result.warnings:
        errors.print(f"[yellow]{warning}[/yellow]")
    added = result.bytes_after - result.bytes_before
    console.print(
        f"loaded {result.profiles:,} people and {result.events:,} events in {result.seconds:.1f} s "
        f"({result.profiles / result.seconds if result.seconds else 0:,.0f} people/s); {result.skipped:,} were there "
        f"already; the base's tables grew by {_size(added)} to {_size(result.bytes_after)}"
        + ("; secondary indexes dropped and built again" if result.indexes_rebuilt else "")
    )


async def _print_plan(database_url: str, profiles: int, events_per_profile: int) -> None:
    needed = estimate_bytes(profiles=profiles, events_per_profile=events_per_profile)
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        held = await base_bytes(connection)
        try:
            note = await check_disk(
                connection=connection,
                database_url=database_url,
                profiles=profiles,
                events_per_profile=events_per_profile,
                data_dir=None,
            )
            verdict = note or "fits on the database's disk"
        except NotEnoughDisk as exc:
            verdict = str(exc)
    finally:
        await connection.close()
    console.print(
        f"{profiles:,} people with {events_per_profile} events each take about {_size(needed)} "
        f"({BYTES_PER_PROFILE:,} bytes a person and {BYTES_PER_EVENT:,} an event, tables and indexes); "
        f"the base's tables hold {_size(held)} now; {verdict}"
    )
