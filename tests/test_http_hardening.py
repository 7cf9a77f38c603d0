"""Hardening of the HTTP side for the open internet (issue 9, items 6 and 7): /readyz
bounded while Redis is stalled; the write rate counts only valid writes; a client that
leaves in the middle of its body is one line of log; and nothing the client puts in
``Host`` reaches a redirect, or a feed or page that a shared cache may keep.

Real parts: a real uvicorn, real Redis (a separate one where it gets SIGSTOP), raw
sockets where the request must be cut short, a forged ``Host`` through httpx.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import Service, run_service, tcp_socket
from ticker.config import Settings
from ticker.embedded import EmbeddedRedis

PROBLEM = "application/problem+json"
PUBLIC = "https://ticker.example.org"
EVIL = "evil.example"
ATOM = "{http://www.w3.org/2005/Atom}"
FORGED = {"Host": EVIL}


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"]
    return body


# /readyz while Redis is stalled


@pytest.mark.faults
async def test_readyz_answers_503_within_its_timeout_while_redis_is_stalled(
    tmp_short: Path,
) -> None:
    """A SIGSTOPped Redis accepts connections (the kernel does) and never replies: the
    client's own timeout (redis_timeout, 5 s) is longer than a prober waits, so /readyz
    must give up after readyz_timeout by itself."""
    server = EmbeddedRedis(tmp_short / "redis").start()
    assert server.process is not None
    pid = server.process.pid
    try:
        settings = Settings(
            redis_url=server.url, log_level="warning", shutdown_drain=0.5,
            readyz_timeout=1.0, redis_timeout=5.0,
        )
        async with run_service(settings, tcp_socket()) as svc:
            assert (await svc.http.get("/readyz")).status_code == 200
            os.kill(pid, signal.SIGSTOP)
            try:
                r = await svc.http.get("/readyz", timeout=3.0)
                body = _problem(r, 503)
                assert "readyz_timeout" in body["detail"]
                assert int(r.headers["retry-after"]) > 0
                assert (await svc.http.get("/healthz", timeout=3.0)).status_code == 200
            finally:
                os.kill(pid, signal.SIGCONT)
            for _ in range(100):  # ready again once Redis runs: at most ~10 s
                if (await svc.http.get("/readyz", timeout=3.0)).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("/readyz did not answer 200 again after SIGCONT")
    finally:
        server.stop()
        shutil.rmtree(tmp_short, ignore_errors=True)


# The write rate counts valid writes only


async def _rate_keys(r: aioredis.Redis) -> list[bytes]:
    keys: Any = await r.keys("ticker:rate:*")
    return list(keys)


async def test_refused_writes_do_not_count_against_the_key_rate(
    serve_with: Any, redis_client: aioredis.Redis
) -> None:
    async with serve_with(publish_rate_per_minute=2) as svc:
        path = "/v1/channels/world/briefs"
        json_type = {"Content-Type": "application/json"}
        _problem(await svc.http.post(path, json={"text": ""}, headers=svc.auth()), 422)
        _problem(
            await svc.http.post(path, content=b'{"text": ', headers={**svc.auth(), **json_type}),
            400,
        )
        _problem(
            await svc.http.patch(f"{path}/1-0", json={"urgency": 99}, headers=svc.auth()), 422
        )
        assert await _rate_keys(redis_client) == [], "a refused request was counted"

        # The window is a fixed minute: do not straddle its end.
        left = 60 - time.time() % 60
        if left < 5:
            await asyncio.sleep(left + 0.1)
        for i in range(2):
            assert (await svc.http.post(path, json={"text": f"ok {i}"}, headers=svc.auth())
                    ).status_code == 201
        refused = await svc.http.post(path, json={"text": "third"}, headers=svc.auth())
        assert _problem(refused, 429)["limit"] == 2


async def test_an_unauthorized_write_is_refused_before_its_body_is_read(service: Service) -> None:
    r = await service.http.post(
        "/v1/channels/world/briefs", content=b"not even json",
        headers={"Content-Type": "application/json", "Authorization": "Bearer nope"},
    )
    _problem(r, 401)


# A client that leaves in the middle of its body


async def test_a_client_leaving_mid_body_is_one_info_line_and_no_traceback(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ticker")
    # uvicorn's loggers do not propagate to the root (its logging configuration): listen
    # to them directly, where "Exception in ASGI application" would be logged.
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(caplog.handler)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(
            b"POST /v1/channels/world/briefs HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            + f"Authorization: Bearer {service.key}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            + b'{"text": "'  # 10 of the 1000 bytes
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # let the server start reading the body
        writer.close()
        await writer.wait_closed()

        message = "client disconnected before sending the whole body"
        for _ in range(500):
            if any(message in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        lines = [r for r in caplog.records if message in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.INFO
        assert "POST '/v1/channels/world/briefs'" in lines[0].getMessage()
        tracebacks = [
            r for r in caplog.records
            if r.exc_info and r.name.split(".")[0] in ("ticker", "uvicorn")
        ]
        assert tracebacks == []
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        # And the server goes on serving.
        assert (await service.http.get("/healthz")).status_code == 200
        await service.publish("world", "still here")
    finally:
        uvicorn_error.removeHandler(caplog.handler)


# Host never reaches a redirect


async def test_trailing_slash_redirect_is_relative_and_ignores_host(service: Service) -> None:
    for path, target in [
        ("/v1/channels/", "/v1/channels"),
        ("/v1/channels/world/briefs/?limit=1", "/v1/channels/world/briefs?limit=1"),
    ]:
        r = await service.http.get(path, headers=FORGED)
        assert r.status_code == 307, r.text
        assert r.headers["location"] == target
        assert EVIL not in r.headers["location"]
        followed = await service.http.get(r.headers["location"])
        assert followed.status_code == 200, followed.text
    # A path that matches nothing either way is still a problem-details 404.
    _problem(await service.http.get("/nothing/", headers=FORGED), 404)
    # A request target that looks like a network-path reference (httpx would resolve it
    # itself, hence the raw request): never a Location that names another host.
    for target in ("//evil.example/v1/channels/", "//evil.example/", "/\\evil.example/"):
        status, headers = await _raw_get(service.port, target)
        assert status in (307, 404), (target, status)
        location = headers.get("location", "/")
        assert location.startswith("/") and not location.startswith(("//", "/\\"))
        assert EVIL not in location, (target, location)


async def _raw_get(port: int, target: str) -> tuple[int, dict[str, str]]:
    """One GET with a forged Host over a plain socket: (status, headers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {EVIL}\r\nConnection: close\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


# Feeds and pages: public_url, else private


def _atom_links(body: bytes) -> list[str]:
    root = ET.fromstring(body)
    links = [root.findtext(f"{ATOM}id") or ""]
    links += [link.get("href") or "" for link in root.findall(f"{ATOM}link")]
    links += [entry.findtext(f"{ATOM}id") or "" for entry in root.findall(f"{ATOM}entry")]
    return links


def _rss_links(body: bytes) -> list[str]:
    channel = ET.fromstring(body).find("channel")
    assert channel is not None
    links = [channel.findtext("link") or ""]
    links += [link.get("href") or "" for link in channel.findall(f"{ATOM}link")]
    links += [item.findtext("guid") or "" for item in channel.findall("item")]
    return links


def _json_feed_links(body: bytes) -> list[str]:
    feed = orjson.loads(body)
    return [feed["home_page_url"], feed["feed_url"], *(item["id"] for item in feed["items"])]


LINKS = {"rss": _rss_links, "atom": _atom_links, "json": _json_feed_links}


async def test_feeds_with_public_url_link_there_whatever_the_host(serve_with: Any) -> None:
    async with serve_with(public_url=PUBLIC + "/") as svc:
        brief = await svc.publish("world", "Summit opens", url="https://news.example/a/1")
        for fmt, links_of in LINKS.items():
            r = await svc.http.get(f"/v1/channels/world/feed.{fmt}", headers=FORGED)
            assert r.status_code == 200, r.text
            assert EVIL not in r.text and "127.0.0.1" not in r.text
            links = links_of(r.content)
            assert len(links) >= 3 and all(link.startswith(PUBLIC + "/") for link in links), links
            assert f"{PUBLIC}/v1/channels/world/feed.{fmt}" in links  # self
            assert f"{PUBLIC}/embed/world" in links  # home
            assert f"{PUBLIC}/v1/channels/world/briefs/{brief['id']}" in links
            assert r.headers["cache-control"] == "public, max-age=30"
            # The same feed whatever the Host: one copy serves everybody.
            plain = await svc.http.get(f"/v1/channels/world/feed.{fmt}")
            assert plain.content == r.content and plain.headers["etag"] == r.headers["etag"]


async def test_feeds_without_public_url_are_private_to_caches(service: Service) -> None:
    await service.publish("world", "Summit opens")
    for fmt in LINKS:
        r = await service.http.get(f"/v1/channels/world/feed.{fmt}", headers=FORGED)
        assert r.status_code == 200, r.text
        cache_control = [d.strip() for d in r.headers["cache-control"].split(",")]
        assert "private" in cache_control and "public" not in cache_control
        # A copy made for another Host never revalidates as this one.
        plain = await service.http.get(f"/v1/channels/world/feed.{fmt}")
        assert plain.headers["etag"] != r.headers["etag"]
        again = await service.http.get(
            f"/v1/channels/world/feed.{fmt}", headers={"If-None-Match": r.headers["etag"]}
        )
        assert again.status_code == 200


async def test_pages_with_public_url_link_there_whatever_the_host(serve_with: Any) -> None:
    async with serve_with(public_url=PUBLIC) as svc:
        await svc.publish("world", "Summit opens")
        r = await svc.http.get("/embed/world", headers=FORGED)
        assert r.status_code == 200, r.text
        assert EVIL not in r.text and "127.0.0.1" not in r.text
        assert f'server="{PUBLIC}"' in r.text
        assert f'<link rel="canonical" href="{PUBLIC}/embed/world">' in r.text
        assert f'src="{PUBLIC}/widget.' in r.text
        assert r.headers["cache-control"] == "public, max-age=10"
        demo = await svc.http.get("/demo", headers=FORGED)
        assert demo.status_code == 200 and EVIL not in demo.text
        assert PUBLIC in demo.text and demo.headers["cache-control"] == "no-cache"


async def test_pages_without_public_url_are_private_to_caches(service: Service) -> None:
    await service.publish("world", "Summit opens")
    for path in ("/embed/world", "/embed/world?fragment=1", "/demo"):
        r = await service.http.get(path, headers=FORGED)
        assert r.status_code == 200, r.text
        cache_control = [d.strip() for d in r.headers["cache-control"].split(",")]
        assert "private" in cache_control and "public" not in cache_control, path

