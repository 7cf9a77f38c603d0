"""GET /openapi.json describes the API: a valid OpenAPI 3.1 document (openapi-spec-validator)
that a bounded schemathesis run against the live service finds true (no 5xx, no answer
that contradicts it). And GET /metrics: Prometheus text with the hub's state."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Service, run_service
from ticker.auth import KeyStore
from ticker.config import Settings

SCHEMATHESIS_SECONDS = 60


async def test_openapi_json_is_a_valid_openapi_3_1_document_listing_every_route(
    service: Service,
) -> None:
    r = await service.http.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    document = r.json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    routes = {
        getattr(route, "path", None) for route in service.app.routes
    } - {None, "/v1/ws", "/widget.{version}.js", "/demo.js", "/demo.css", "/console.js",
         "/console.css"}
    missing = {path for path in routes if path not in document["paths"]}
    assert not missing, f"routes missing from /openapi.json: {missing}"
    limit = document["paths"]["/v1/channels/{channel}/briefs"]["get"]["parameters"][0]
    assert limit["schema"]["maximum"] == service.app.state.services.settings.list_max_limit


async def test_a_bounded_schemathesis_run_finds_no_5xx_and_no_answer_off_the_schema(
    service: Service, tmp_path: Path
) -> None:
    st = shutil.which("st", path=os.path.dirname(sys.executable)) or shutil.which("st")
    assert st, "schemathesis is not installed: pip install -e '.[test]'"
    await service.publish("world", "seed brief")
    proc = await asyncio.create_subprocess_exec(
        st, "run", f"{service.base}/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance,response_headers_conformance",
        "--max-examples", "20", "--seed", "1", "--workers", "1", "--phases", "fuzzing",
        "--exclude-path-regex", "/events$",  # an endless stream
        "--header", f"Authorization: Bearer {service.key}",
        "--request-timeout", "5", "--no-color",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), SCHEMATHESIS_SECONDS)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-6000:]
    assert "passed" in report.lower()


async def test_metrics_show_connections_subscriptions_and_outboxes(service: Service) -> None:
    sub = await service.subscriber()
    await sub.subscribe("world")
    await sub.recv()
    async with httpx.AsyncClient(base_url=service.base, timeout=10) as http:
        r = await http.get("/metrics")
    await sub.close()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    assert samples[("ticker_connections", ())] == 1
    assert samples[("ticker_subscriptions", (("channel", "world"),))] == 1
    assert samples[("ticker_outbox_messages", ())] == 0
    assert samples[("ticker_reader_up", ())] == 1
    assert ("process_resident_memory_bytes", ()) in samples


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_publishes_deliveries_and_slow_closes(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    async with run_service(settings.with_overrides(outbox_max_messages=2)) as svc:
        svc.key = await KeyStore(redis_client).create("test", ["*"])
        subs = [await svc.subscriber() for _ in range(3)]
        for sub in subs:
            await sub.subscribe("world")
            await sub.recv()
        await svc.publish("world", "one")
        for sub in subs:
            await sub.recv()
        # A connection whose outbox passes its bound is closed: counted once.
        conn = next(iter(svc.app.state.services.hub.connections))
        for i in range(3):
            conn.push(f'{{"type":"filler","n":{i}}}'.encode())
        samples = _samples((await svc.http.get("/metrics")).text)
        assert samples[("ticker_events_delivered_total", ())] == 3
        assert samples[("ticker_slow_consumer_closes_total", ())] == 1
        assert samples[("ticker_publish_seconds_count", ())] == 1
        assert samples[("ticker_publish_to_deliver_seconds_count", ())] == 1
        assert samples[("ticker_redis_reconnects_total", ())] == 0
        for sub in subs:
            await sub.close()


async def test_channels_list_counts_live_readers_across_processes(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    fast = settings.with_overrides(readers_report_interval=0.1)
    async with run_service(fast) as one, run_service(fast) as two:
        one.key = await KeyStore(redis_client).create("test", ["*"])
        await one.publish("world", "a")
        await one.publish("sport", "b")
        subs = []
        for svc, channel in [(one, "world"), (two, "world"), (two, "sport")]:
            sub = await svc.subscriber()
            await sub.subscribe(channel)
            await sub.recv()
            subs.append(sub)

        async def readers() -> dict[str, int]:
            body = (await one.http.get("/v1/channels")).json()
            return {c["name"]: c["readers"] for c in body["channels"]}

        for _ in range(100):  # bounded: the reports arrive within a few periods
            if await readers() == {"world": 2, "sport": 1}:
                break
            await asyncio.sleep(0.05)
        assert await readers() == {"world": 2, "sport": 1}
        for sub in subs:
            await sub.close()
        for _ in range(100):
            if await readers() == {"world": 0, "sport": 0}:
                break
            await asyncio.sleep(0.05)
        assert await readers() == {"world": 0, "sport": 0}
