"""The HTTP metrics of every service: counted by route template, never by raw path."""

from __future__ import annotations

import httpx
from cdp_common.service import HttpMetricsMiddleware
from fastapi import FastAPI, HTTPException
from prometheus_client import REGISTRY


def sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def app_with_routes() -> FastAPI:
    app = FastAPI()
    app.add_middleware(HttpMetricsMiddleware, service="opstest")

    @app.get("/v1/things/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, str]:
        if thing_id == "missing":
            raise HTTPException(status_code=404)
        return {"id": thing_id}

    @app.get("/v1/crash")
    async def crash() -> None:
        raise RuntimeError("boom")

    return app


async def test_requests_are_counted_by_route_template_and_status() -> None:
    labels = {"service": "opstest", "method": "GET", "route": "/v1/things/{thing_id}"}
    before_ok = sample("cdp_http_requests_total", {**labels, "status": "200"})
    before_missing = sample("cdp_http_requests_total", {**labels, "status": "404"})
    before_count = sample("cdp_http_request_duration_seconds_count", labels)
    transport = httpx.ASGITransport(app=app_with_routes())
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        for thing in ("a", "b", "c"):
            assert (await client.get(f"/v1/things/{thing}")).status_code == 200
        assert (await client.get("/v1/things/missing")).status_code == 404
        assert (await client.get("/no/such/path/ada@example.com")).status_code == 404
    assert sample("cdp_http_requests_total", {**labels, "status": "200"}) == before_ok + 3
    assert sample("cdp_http_requests_total", {**labels, "status": "404"}) == before_missing + 1
    assert sample("cdp_http_request_duration_seconds_count", labels) == before_count + 4
    routes = {
        sample_.labels["route"]
        for metric in REGISTRY.collect()
        if metric.name == "cdp_http_requests"
        for sample_ in metric.samples
        if sample_.labels.get("service") == "opstest"
    }
    assert routes == {"/v1/things/{thing_id}", "unmatched"}, "a raw path became a label value"


async def test_an_unhandled_error_counts_as_500() -> None:
    labels = {"service": "opstest", "method": "GET", "route": "/v1/crash", "status": "500"}
    before = sample("cdp_http_requests_total", labels)
    transport = httpx.ASGITransport(app=app_with_routes(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        assert (await client.get("/v1/crash")).status_code == 500
    assert sample("cdp_http_requests_total", labels) == before + 1
