"""GETs answered before routing (ticker.answers): the same request, while the channel is
unchanged, gets the endpoint's last answer without reaching the endpoint; anything the
answer depends on (the channel, Accept, Host, Origin, the query) makes another answer.
Real Redis, real uvicorn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Service, until
from ticker.answers import ANSWERS_PER_CHANNEL

NINJS = "application/ninjs+json"
PATHS = (
    "/v1/channels/world/briefs?limit=20",
    "/v1/channels/world/briefs?format=ninjs",
    "/embed/world",
    "/embed/world?fragment=1&lang=fr",
    "/v1/channels/world/feed.rss",
    "/v1/channels/world/feed.json",
)


@pytest.fixture
def endpoint_calls(service: Service) -> Iterator[list[str]]:
    """The channels the endpoints were asked for (each endpoint's Hub.follow)."""
    hub = service.hub
    real = hub.follow
    calls: list[str] = []

    async def follow(name: str) -> Any:
        calls.append(name)
        return await real(name)

    hub.follow = follow  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        hub.follow = real  # type: ignore[method-assign]


async def _settled(service: Service) -> None:
    """A feed keeps its answer once its Last-Modified is there to stay (about 3 s after
    the channel's last change, ticker.http.last_modified): wait for it."""
    brief = await service.publish("world", "a brief")
    changed = int(brief["id"].partition("-")[0]) / 1000
    await asyncio.sleep(max(0.0, changed // 1 + 3.1 - time.time()))


async def test_the_same_get_of_an_unchanged_channel_is_answered_without_the_endpoint(
    service: Service, endpoint_calls: list[str]
) -> None:
    await _settled(service)
    first = {path: await service.http.get(path) for path in PATHS}
    assert all(r.status_code == 200 for r in first.values())
    assert len(endpoint_calls) == len(PATHS)
    for path in PATHS:
        again = await service.http.get(path)
        assert again.status_code == 200 and again.content == first[path].content
        assert {k: v for k, v in again.headers.items() if k != "date"} == {
            k: v for k, v in first[path].headers.items() if k != "date"}
    assert len(endpoint_calls) == len(PATHS)  # none of the repeats reached an endpoint

    new = await service.publish("world", "news")
    for path in PATHS:
        changed = await service.http.get(path)
        assert changed.status_code == 200 and new["text"].encode() in changed.content, path
        assert changed.headers["etag"] != first[path].headers["etag"]
    assert len(endpoint_calls) == 2 * len(PATHS)


async def test_requests_differing_in_what_the_answer_depends_on_get_their_own(
    serve_with: Any,
) -> None:
    """Accept (JSON or ninjs), Host (absolute links), Origin (CORS, here with a list of
    allowed origins), HEAD before GET, the query string."""
    async with serve_with(allowed_origins=["https://news.example"]) as service:
        await service.publish("world", "a brief")
        path = "/v1/channels/world/briefs"
        for _ in range(2):  # the second time, every answer comes from what was kept
            as_json = await service.http.get(path)
            assert as_json.headers["content-type"] == "application/json"
            assert "briefs" in as_json.json()
            as_ninjs = await service.http.get(path, headers={"Accept": NINJS})
            assert as_ninjs.headers["content-type"] == NINJS
            assert as_ninjs.json()["uri"] == f"{service.base}{path}"
            other_host = await service.http.get(path, headers={"Accept": NINJS,
                                                                "Host": "other.example"})
            assert other_host.json()["uri"] == f"http://other.example{path}"
            allowed = await service.http.get(path, headers={"Origin": "https://news.example"})
            assert allowed.headers["access-control-allow-origin"] == "https://news.example"
            stranger = await service.http.get(path, headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in stranger.headers
            one = await service.http.get(path, params={"limit": "1"})
            assert len(one.json()["briefs"]) == 1
        head = await service.http.head(f"{path}?limit=3")
        assert head.status_code == 200 and head.content == b""
        got = await service.http.get(f"{path}?limit=3")
        assert got.status_code == 200 and got.json()["briefs"][0]["text"] == "a brief"


async def test_conditional_requests_are_answered_before_routing_too(
    service: Service, endpoint_calls: list[str]
) -> None:
    await _settled(service)
    for path in PATHS:
        first = await service.http.get(path)
        etag = first.headers["etag"]
        calls = len(endpoint_calls)
        same = await service.http.get(path, headers={"If-None-Match": f'"other", {etag}'})
        assert same.status_code == 304 and same.content == b""
        assert same.headers["etag"] == etag
        assert "content-type" not in same.headers and "content-length" not in same.headers
        assert same.headers["cache-control"] == first.headers["cache-control"]
        other = await service.http.get(path, headers={"If-None-Match": '"other"'})
        assert other.status_code == 200 and other.content == first.content
        assert len(endpoint_calls) == calls, path
    # If-Modified-Since alone: the endpoint, which knows the dates, answers.
    feed = "/v1/channels/world/feed.rss"
    modified = (await service.http.get(feed)).headers["last-modified"]
    calls = len(endpoint_calls)
    assert (await service.http.get(feed, headers={"If-Modified-Since": modified})).status_code == 304
    assert len(endpoint_calls) == calls + 1


async def test_an_answer_given_before_routing_keeps_the_channel_followed(
    serve_with: Any,
) -> None:
    async with serve_with(http_follow_seconds=1.0) as service:
        await service.publish("world", "a brief")
        for _ in range(12):  # 2.4 s of reads, each answered from what was kept
            assert (await service.http.get("/embed/world")).status_code == 200
            await asyncio.sleep(0.2)
        assert "world" in service.hub.channels and "world" in service.hub.leases
        await until(lambda: "world" not in service.hub.channels,
                    "the channel was still followed after its lease", polls=600)


async def test_answers_kept_per_channel_are_bounded(service: Service) -> None:
    await service.publish("world", "a brief")
    for limit in range(1, 60):
        for _ in range(2):
            r = await service.http.get(f"/v1/channels/world/briefs?limit={limit}")
            assert r.status_code == 200
    assert len(service.hub.channels["world"].answers) == ANSWERS_PER_CHANNEL
