"""`cdp jobs`: the long work of every service (backfills, segment builds, model runs), and its progress."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cdp_cli.api import PlatformClient, PlatformError
from cdp_cli.config import SERVICE_NAMES, PlatformConfig

jobs_app = typer.Typer(help="Long work of the services: backfills, builds, model runs.")
console = Console()
errors = Console(stderr=True, soft_wrap=True)
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


def _client(ctx: typer.Context) -> PlatformClient:
    config: PlatformConfig = ctx.obj
    if not config.admin_token:
        errors.print("[red]no admin token: set CDP_ADMIN_TOKEN or run `make up` for .run/dev.env[/red]")
        raise typer.Exit(2)
    return PlatformClient(config)


def services_with_jobs(client: PlatformClient) -> dict[str, list[dict[str, Any]]]:
    """Return the newest jobs of every service that runs jobs (services without a jobs API are left out)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for service in SERVICE_NAMES:
        try:
            found[service] = client.call("GET", service, "/v1/jobs", params={"limit": 50})["items"]
        except PlatformError as exc:
            if " 404 " not in f" {exc} ".replace(":", " "):
                errors.print(f"[yellow]{exc}[/yellow]")
    return found


def find_job(client: PlatformClient, job_id: str) -> tuple[str, dict[str, Any]]:
    """Return the service that owns a job and the job."""
    for service in SERVICE_NAMES:
        try:
            return service, client.call("GET", service, f"/v1/jobs/{job_id}")
        except PlatformError:
            continue
    raise PlatformError(f"no service knows the job {job_id!r}")


def describe(job: dict[str, Any]) -> str:
    """Return a job's progress in one line: done of total, rate and estimated end."""
    total = job.get("total")
    progress = f"{job['done']:,}" + (f" of {total:,}" if total is not None else "")
    rate = f", {job['rate_per_s']:,.0f}/s" if job.get("rate_per_s") else ""
    eta = f", ends about {job['eta'][11:19]} UTC" if job.get("eta") else ""
    return f"{progress}{rate}{eta}"


@jobs_app.command("list")
def list_jobs(ctx: typer.Context) -> None:
    """List the newest jobs of every service: kind, state, progress."""
    client = _client(ctx)
    table = Table("service", "kind", "state", "progress")
    table.add_column("id", no_wrap=True)
    for service, jobs in services_with_jobs(client).items():
        for job in jobs:
            table.add_row(
                service,
                job["kind"],
                job["state"],
                describe(job) + (" (retried)" if job.get("attempts") else ""),
                job["id"],
            )
    console.print(table)


@jobs_app.callback(invoke_without_command=True)
def jobs_default(ctx: typer.Context) -> None:
    """`cdp jobs` alone lists the jobs."""
    if ctx.invoked_subcommand is None:
        list_jobs(ctx)


@jobs_app.command("show")
def show_job(ctx: typer.Context, job_id: str) -> None:
    """Show one job as its service answers it."""
    client = _client(ctx)
    try:
        service, job = find_job(client, job_id)
    except PlatformError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print_json(data={"service": service, **job})


def watch(client: PlatformClient, service: str, job: dict[str, Any], *, interval: float) -> dict[str, Any]:
    """Show a progress bar of a job until it has finished; return its last state."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"{service} {job['kind']}", total=job.get("total"), rate="")
        while True:
            rate = f"{job['rate_per_s']:,.0f}/s" if job.get("rate_per_s") else ""
            progress.update(task, completed=job["done"], total=job.get("total"), rate=rate)
            if job["state"] in FINISHED:
                return job
            time.sleep(interval)
            job = client.call("GET", service, f"/v1/jobs/{job['id']}")


@jobs_app.command("watch")
def watch_job(
    ctx: typer.Context,
    job_id: str,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between two looks.")] = 1.0,
) -> None:
    """Show a job's progress bar until it has finished; exit 1 unless it succeeded."""
    client = _client(ctx)
    try:
        service, job = find_job(client, job_id)
        job = watch(client, service, job, interval=interval)
    except PlatformError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{job['state']}: {describe(job)}" + (f" ({job['error']})" if job.get("error") else ""))
    if job["state"] != "succeeded":
        raise typer.Exit(1)


@jobs_app.command("cancel")
def cancel_job(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job: a queued one at once, a running one before its next step."""
    client = _client(ctx)
    try:
        service, _ = find_job(client, job_id)
        job = client.call("POST", service, f"/v1/jobs/{job_id}/cancel")
    except PlatformError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(
        f"{job['id']}: {job['state']}"
        + (" (stops before its next step)" if job["state"] == "running" else "")
    )
