"""The `cdp` command: sources, tokens, pipeline status, DLQ replay, segment recompute, imports, bulk loads."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cdp_cli import load, rates, replay, transactions
from cdp_cli.api import PlatformClient, PlatformError
from cdp_cli.config import SERVICE_NAMES, PlatformConfig, load_config
from cdp_cli.jobs import jobs_app, watch

app = typer.Typer(help="Operate the customer data platform.", no_args_is_help=True)
sources_app = typer.Typer(help="Sources and their write keys.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter topics.", no_args_is_help=True)
segments_app = typer.Typer(help="Segments.", no_args_is_help=True)
import_app = typer.Typer(help="Bulk imports.", no_args_is_help=True)
app.add_typer(sources_app, name="sources")
app.add_typer(tokens_app, name="tokens")
app.add_typer(dlq_app, name="dlq")
app.add_typer(segments_app, name="segments")
app.add_typer(import_app, name="import")
app.add_typer(jobs_app, name="jobs")
app.command("load")(load.load_command)

console = Console()
errors = Console(stderr=True, soft_wrap=True)


@app.callback()
def configure(
    ctx: typer.Context,
    env_file: Annotated[
        Path | None, typer.Option(help="Env file with CDP_* settings (default: .run/dev.env if present).")
    ] = None,
    ingest_url: Annotated[str | None, typer.Option(envvar="CDP_INGEST_URL")] = None,
    admin_token: Annotated[str | None, typer.Option(envvar="CDP_ADMIN_TOKEN", show_default=False)] = None,
    write_key: Annotated[str | None, typer.Option(envvar="CDP_WRITE_KEY", show_default=False)] = None,
    kafka_bootstrap: Annotated[str | None, typer.Option(envvar="CDP_KAFKA_BOOTSTRAP")] = None,
    env: Annotated[
        str | None, typer.Option(envvar="CDP_ENV", help="Topic prefix of the environment.")
    ] = None,
) -> None:
    """Load where the platform is: the env file, then CDP_* variables, then these options."""
    overrides = {
        "ingest_url": ingest_url,
        "admin_token": admin_token,
        "write_key": write_key,
        "kafka_bootstrap": kafka_bootstrap,
        "env": env,
    }
    try:
        ctx.obj = load_config(env_file, overrides)
    except FileNotFoundError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def _client(ctx: typer.Context) -> PlatformClient:
    config: PlatformConfig = ctx.obj
    if not config.admin_token:
        errors.print("[red]no admin token: set CDP_ADMIN_TOKEN or run `make up` for .run/dev.env[/red]")
        raise typer.Exit(2)
    return PlatformClient(config)


def _fail(exc: Exception) -> typer.Exit:
    errors.print(f"[red]{exc}[/red]")
    return typer.Exit(1)


@sources_app.command("create")
def create_source(ctx: typer.Context, name: str) -> None:
    """Create a source; prints its write key once."""
    client = _client(ctx)
    try:
        source = client.call("POST", "ingest", "/v1/sources", json={"name": name})
    except PlatformError as exc:
        raise _fail(exc) from exc
    console.print(f"source {source['id']} ({source['name']})")
    console.print(f"write key: {source['write_key']}")


@sources_app.command("list")
def list_sources(ctx: typer.Context) -> None:
    """List the sources."""
    client = _client(ctx)
    table = Table("id", "name", "enabled", "created")
    try:
        for source in client.pages("ingest", "/v1/sources"):
            table.add_row(
                source["id"],
                source["name"],
                str(source.get("enabled", "")),
                str(source.get("created_at", "")),
            )
    except PlatformError as exc:
        raise _fail(exc) from exc
    console.print(table)


@tokens_app.command("create")
def create_token(
    ctx: typer.Context,
    name: str,
    scope: Annotated[list[str], typer.Option("--scope", "-s", help="A scope; repeat for more.")],
    expires_in_days: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Create an API token; prints it once."""
    client = _client(ctx)
    body: dict[str, Any] = {"name": name, "scopes": scope}
    if expires_in_days:
        body["expires_in_days"] = expires_in_days
    try:
        token = client.call("POST", "ingest", "/v1/tokens", json=body)
    except PlatformError as exc:
        raise _fail(exc) from exc
    console.print(f"token {token['id']} ({token['name']}): {', '.join(token['scopes'])}")
    console.print(f"token: {token['token']}")


@tokens_app.command("list")
def list_tokens(ctx: typer.Context) -> None:
    """List the tokens (never their secrets)."""
    client = _client(ctx)
    table = Table("id", "name", "scopes", "expires", "revoked")
    try:
        for token in client.pages("ingest", "/v1/tokens"):
            table.add_row(
                token["id"],
                token["name"],
                ", ".join(token["scopes"]),
                str(token.get("expires_at") or ""),
                str(token.get("revoked_at") or ""),
            )
    except PlatformError as exc:
        raise _fail(exc) from exc
    console.print(table)


@tokens_app.command("revoke")
def revoke_token(ctx: typer.Context, token_id: str) -> None:
    """Revoke a token on every service."""
    client = _client(ctx)
    try:
        client.call("DELETE", "ingest", f"/v1/tokens/{token_id}")
    except PlatformError as exc:
        raise _fail(exc) from exc
    console.print(f"token {token_id} revoked")


def _service_health(http: httpx.Client, url: str) -> tuple[str, dict[str, float], dict[str, float]]:
    """Return readiness, lag per group and dead letters per group of one service."""
    lag: dict[str, float] = defaultdict(float)
    dead: dict[str, float] = defaultdict(float)
    try:
        ready = http.get(f"{url}/readyz")
        state = "ready" if ready.status_code == 200 else f"not ready: {ready.json().get('problems')}"
        metrics = http.get(f"{url}/metrics").text
    except (httpx.HTTPError, ValueError) as exc:
        return f"unreachable ({type(exc).__name__})", lag, dead
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "cdp_consumer_lag_messages":
                lag[sample.labels["group"]] += sample.value
            elif sample.name == "cdp_dlq_messages_total":
                dead[sample.labels["group"]] += sample.value
    return state, lag, dead


@app.command()
def status(ctx: typer.Context) -> None:
    """Show each service's readiness, consumer lag and dead letters; exit 1 when one is not ready."""
    config: PlatformConfig = ctx.obj
    table = Table("service", "state", "consumer group", "lag", "dead letters")
    healthy = True
    with httpx.Client(timeout=5) as http:
        for service in SERVICE_NAMES:
            state, lag, dead = _service_health(http, config.service_url(service))
            healthy = healthy and state == "ready"
            style = "green" if state == "ready" else "red"
            groups = sorted(set(lag) | set(dead)) or [""]
            for index, group in enumerate(groups):
                table.add_row(
                    service if index == 0 else "",
                    f"[{style}]{state}[/{style}]" if index == 0 else "",
                    group,
                    f"{lag.get(group, 0):.0f}" if group else "",
                    f"{dead.get(group, 0):.0f}" if group else "",
                )
    console.print(table)
    if not healthy:
        raise typer.Exit(1)


@dlq_app.command("replay")
def replay_dlq(
    ctx: typer.Context,
    topic: Annotated[str, typer.Option(help="The topic whose dead letters to replay: events, profiles, ...")],
    dry_run: Annotated[bool, typer.Option(help="Only count what would be replayed.")] = False,
) -> None:
    """Re-publish a topic's dead letters to it, skipping messages of erased profiles."""
    config: PlatformConfig = ctx.obj
    try:
        platform_topic = replay.topic_by_name(topic)
    except ValueError as exc:
        raise _fail(exc) from exc
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"replaying {config.env}.{platform_topic.dlq}", total=None)
        report = asyncio.run(
            replay.replay_dead_letters(
                bootstrap=config.kafka_bootstrap,
                env=config.env,
                topic=platform_topic,
                dry_run=dry_run,
                on_total=lambda total: progress.update(task, total=total),
                on_progress=lambda _: progress.advance(task),
            )
        )
    table = Table("outcome", "messages")
    for outcome, count in sorted(report.outcomes.items()):
        table.add_row(outcome, str(count))
    console.print(table)


@segments_app.command("recompute")
def recompute_segment(ctx: typer.Context, key: str) -> None:
    """Recompute one segment over every profile as a job; shows its progress, then who entered and left."""
    client = _client(ctx)
    try:
        answer = client.call("POST", "segment", f"/v1/segments/{key}/recompute")
        job = watch(client, "segment", answer["job"], interval=0.5)
    except PlatformError as exc:
        raise _fail(exc) from exc
    console.print_json(data={"job": job["id"], "state": job["state"], "result": job.get("result")})
    if job["state"] != "succeeded":
        raise typer.Exit(1)


@import_app.command("transactions")
def import_transactions(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    batch_size: Annotated[int, typer.Option(min=1, max=2500)] = 500,
) -> None:
    """Send a CSV of transactions (one row per order line) to ingest's /v1/transactions."""
    config: PlatformConfig = ctx.obj
    if not config.write_key:
        errors.print("[red]no write key: set CDP_WRITE_KEY or pass --write-key[/red]")
        raise typer.Exit(2)
    try:
        orders = list(transactions.read_transactions(file))
    except transactions.CsvError as exc:
        raise _fail(exc) from exc
    client = PlatformClient(config)
    accepted = 0
    rejected: list[str] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"importing {file.name}", total=len(orders))
        for start in range(0, len(orders), batch_size):
            chunk = orders[start : start + batch_size]
            try:
                answer = client.send_transactions([transactions.to_ndjson_line(order) for _, order in chunk])
            except PlatformError as exc:
                raise _fail(exc) from exc
            accepted += answer.get("accepted", 0)
            for item in answer.get("rejected", []):
                line, order = chunk[item["index"]]
                rejected.append(f"line {line} (order {order['order_id']}): {item['error']['message']}")
            progress.advance(task, len(chunk))
    console.print(f"{accepted} transactions accepted, {len(rejected)} rejected")
    for message in rejected:
        errors.print(message)
    if rejected:
        raise typer.Exit(1)


@import_app.command("exchange-rates")
def import_exchange_rates(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    days_per_call: Annotated[int, typer.Option(min=1, max=1000)] = 500,
) -> None:
    """Load the ECB's reference-rate CSV (euro-based, a row per day) into profile's exchange rates."""
    try:
        days = list(rates.read_ecb_rates(file))
    except rates.RatesFileError as exc:
        raise _fail(exc) from exc
    client = _client(ctx)
    stored = 0
    try:
        for start in range(0, len(days), days_per_call):
            answer = client.call(
                "PUT", "profile", "/v1/exchange-rates", json=days[start : start + days_per_call]
            )
            stored += answer["rates"]
    except PlatformError as exc:
        raise _fail(exc) from exc
    finally:
        client.close()
    console.print(f"{len(days)} days of exchange rates loaded ({stored} rates)")
