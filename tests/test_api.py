"""The HTTP API contract (docs/api.md), against the real service and a real Redis.

Every refused request is checked twice: it gets the right status and an RFC 9457 problem
body, and the whole Redis keyspace is byte-for-byte what it was before the request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import unicodedata
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import Service, run_service, tcp_socket
from ticker.auth import KeyStore
from ticker.config import Settings
from ticker.embedded import EmbeddedRedis

PROBLEM = "application/problem+json"
WORLD_LOG = "ticker:{world}:log"
WORLD_BRIEFS = "ticker:{world}:briefs"
MISSING_ID = "1-0"  # a well-formed brief id that no channel ever holds

Json = dict[str, Any]


# Helpers


async def keyspace(r: aioredis.Redis) -> dict[bytes, Any]:
    """Every key of the Redis server with its full value: a refused request changes none.
    The per-key write counters of the rate limit are left out: a write that passes
    validation counts even when the store then refuses it (404, 409), on purpose."""
    state: dict[bytes, Any] = {}
    keys: Any = await r.keys("*")
    for key in sorted(keys):
        if key.startswith(b"ticker:rate:"):
            continue
        kind_raw: Any = await r.type(key)
        kind = kind_raw.decode()
        if kind == "stream":
            value: Any = await r.xrange(key)
        elif kind == "hash":
            value = await r.hgetall(key)
        elif kind == "set":
            value = sorted(await r.smembers(key))
        elif kind == "string":
            value = await r.get(key)
        else:
            value = kind
        state[key] = (kind, value)
    return state


async def log_ids(r: aioredis.Redis, stream: str = WORLD_LOG) -> list[str]:
    """The entry IDs of a channel's log, oldest first."""
    entries: Any = await r.xrange(stream)
    return [entry_id.decode() for entry_id, _ in entries]


def assert_problem(r: httpx.Response, status: int) -> Json:
    """The response is an RFC 9457 problem with this status; returns its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].split(";")[0] == PROBLEM
    body: Json = r.json()
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def problem_fields(body: Json) -> list[str]:
    errors = body["errors"]
    assert isinstance(errors, list) and errors
    assert all(isinstance(e["message"], str) and e["message"] for e in errors)
    return [e["field"] for e in errors]


async def post(service: Service, channel: str, body: Any, **headers: str) -> httpx.Response:
    return await service.http.post(
        f"/v1/channels/{channel}/briefs", json=body, headers={**service.auth(), **headers}
    )


def parse_rfc3339(value: str) -> datetime:
    return datetime.fromisoformat(value)




@pytest.fixture(scope="module")
async def shared_service(redis_server: EmbeddedRedis) -> AsyncIterator[Service]:
    """One service for the module: the API is stateless (Redis holds everything, and the
    Redis fixture empties it before every test), so starting one per test only costs time."""
    settings = Settings(redis_url=redis_server.url, log_level="warning", shutdown_drain=1.0)
    async with run_service(settings, tcp_socket()) as svc:
        yield svc


@pytest.fixture
async def service(shared_service: Service, redis_client: aioredis.Redis) -> Service:
    shared_service.key = await KeyStore(redis_client).create("test", ["*"])
    return shared_service


async def raw_request(service: Service, head: str, body: bytes = b"") -> tuple[int, dict[str, str]]:
    """Send a request byte for byte (httpx refuses some malformed headers); returns the
    status and the headers of the answer."""
    host, port = service.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request = head.replace("\n", "\r\n") + f"Content-Length: {len(body)}\r\n"
        writer.write(request.encode() + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    lines = response.split(b"\r\n\r\n")[0].decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


@dataclasses.dataclass
class Seeded:
    live: Json  # a published brief
    retracted: Json  # a published, then retracted, brief


@pytest.fixture
async def seeded(service: Service) -> Seeded:
    live = await service.publish("world", "A live brief")
    gone = await service.publish("world", "A brief that was retracted")
    r = await service.http.delete(f"/v1/channels/world/briefs/{gone['id']}", headers=service.auth())
    assert r.status_code == 204
    return Seeded(live, gone)


# Publishing


async def test_publish_returns_201_with_the_full_brief_and_its_defaults(
    service: Service, redis_client: aioredis.Redis
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    r = await post(service, "world", {"text": "Tsahal ne se retirera pas de cinq avant-postes"})
    after = datetime.now(UTC)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].split(";")[0] == "application/json"
    brief = r.json()
    assert list(brief) == [
        "id", "channel", "text", "url", "time", "urgency", "tags", "lang",
        "version", "updated_at", "status", "pinned", "author",
    ]
    assert brief == {
        "id": brief["id"],
        "channel": "world",
        "text": "Tsahal ne se retirera pas de cinq avant-postes",
        "url": None,
        "time": brief["time"],
        "urgency": 5,
        "tags": [],
        "lang": None,
        "version": 1,
        "updated_at": None,
        "status": "usable",
        "pinned": False,
        "author": None,
    }
    # time defaults to now, in UTC written with Z
    assert brief["time"].endswith("Z")
    assert before <= parse_rfc3339(brief["time"]) <= after
    # the id is the stream entry ID of the publish event, the only entry of the log
    assert await log_ids(redis_client) == [brief["id"]]


async def test_publish_location_header_gets_the_same_brief(service: Service) -> None:
    r = await post(service, "world", {"text": "Located", "tags": ["a"], "urgency": 2})
    assert r.status_code == 201
    location = r.headers["location"]
    assert location == f"/v1/channels/world/briefs/{r.json()['id']}"
    got = await service.http.get(location)
    assert got.status_code == 200
    assert got.json() == r.json()


async def test_publish_keeps_every_given_field_normalised(service: Service) -> None:
    r = await post(service, "world", {
        "text": "  Caf\u0065\u0301 ouvert  ",
        "url": "https://news.example.org/a?b=1#c",
        "time": "2026-02-14t16:30:00.123456789+01:00",
        "urgency": 1,
        "tags": [" politics ", "world", "politics"],
        "lang": "fr-FR",
        "pinned": True,
    })
    assert r.status_code == 201, r.text
    brief = r.json()
    assert brief["text"] == "Caf\u00e9 ouvert"
    assert brief["url"] == "https://news.example.org/a?b=1#c"
    assert brief["time"] == "2026-02-14T16:30:00.123+01:00"
    assert brief["urgency"] == 1
    assert brief["tags"] == ["politics", "world"]
    assert brief["lang"] == "fr-FR"
    assert brief["pinned"] is True


@pytest.mark.parametrize(
    "given, stored",
    [
        ("2026-02-14T15:30:00+00:00", "2026-02-14T15:30:00Z"),
        ("2026-02-14 15:30:00-00:00", "2026-02-14T15:30:00Z"),
        ("2026-02-14T15:30:00z", "2026-02-14T15:30:00Z"),
        ("2026-02-14T15:30:00.5-05:00", "2026-02-14T15:30:00.500-05:00"),
    ],
)
async def test_publish_normalises_time_to_rfc3339_with_z_for_utc(
    service: Service, given: str, stored: str
) -> None:
    r = await post(service, "world", {"text": "timed", "time": given})
    assert r.status_code == 201, r.text
    assert r.json()["time"] == stored


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a" * 500, id="500-chars"),
        pytest.param("  " + "a" * 500 + " \n", id="500-chars-after-trim"),
        pytest.param("e\u0301" * 500, id="500-chars-after-nfc"),
    ],
)
async def test_publish_accepts_500_characters_counted_after_trim_and_nfc(
    service: Service, text: str
) -> None:
    r = await post(service, "world", {"text": text})
    assert r.status_code == 201, r.text
    stored = r.json()["text"]
    assert len(stored) == 500
    assert stored == unicodedata.normalize("NFC", text.strip())


async def test_publish_accepts_json_content_type_with_charset(service: Service) -> None:
    r = await service.http.post(
        "/v1/channels/world/briefs",
        content=orjson.dumps({"text": "with charset"}),
        headers={**service.auth(), "Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 201, r.text


async def test_publish_accepts_a_body_of_exactly_the_size_limit(service: Service) -> None:
    body = orjson.dumps({"text": "fits", "lang": "en"})
    body = body[:-1] + b" " * (16 * 1024 - len(body)) + b"}"
    assert len(body) == 16 * 1024
    r = await service.http.post(
        "/v1/channels/world/briefs", content=body,
        headers={**service.auth(), "Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.text


# Bad inputs: the table


_DEFAULT = object()


@dataclasses.dataclass(frozen=True)
class Bad:
    status: int
    json: Any = _DEFAULT
    content: bytes | None = None
    method: str = "POST"
    path: str = "/v1/channels/world/briefs"
    content_type: str | None = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    field: str | None = None  # the field a 422 must name
    problem: str | None = None  # the problem type's name, when the status has several


PROBLEM_TYPES = {
    404: "not-found", 405: "method-not-allowed", 409: "conflict", 413: "too-large",
    415: "unsupported-media-type", 422: "validation",
}


def bad(case_id: str, status: int, **kw: Any) -> Any:
    return pytest.param(Bad(status, **kw), id=case_id)


def text_case(case_id: str, text: Any) -> Any:
    return bad(case_id, 422, json={"text": text}, field="text")


def field_case(case_id: str, name: str, value: Any) -> Any:
    return bad(case_id, 422, json={"text": "ok", name: value}, field=name)


BRIEF = "/v1/channels/world/briefs/{id}"


def channel_case(case_id: str, channel: str, method: str = "POST") -> Any:
    body = {"text": "a"} if method == "POST" else _DEFAULT
    path = f"/v1/channels/{channel}/briefs"
    return bad(case_id, 400, method=method, path=path, json=body, problem="bad-channel")


def id_case(case_id: str, method: str, brief_id: str) -> Any:
    body = {"text": "a"} if method == "PATCH" else _DEFAULT
    path = BRIEF.format(id=brief_id)
    return bad(case_id, 400, method=method, path=path, json=body, problem="bad-id")


def limit_case(case_id: str, limit: str) -> Any:
    path = f"/v1/channels/world/briefs?limit={limit}"
    return bad(case_id, 400, method="GET", path=path, problem="bad-limit")


TOO_BIG = orjson.dumps({"text": "a", "tags": ["b" * 60] * 300})

BAD_INPUTS = [
    # text
    text_case("text-empty", ""),
    text_case("text-whitespace-only", " \t \u00a0 "),
    text_case("text-501-chars", "a" * 501),
    text_case("text-501-chars-after-nfc", "e\u0301" * 501),
    text_case("text-newline", "first line\nsecond line"),
    text_case("text-tab", "a\tb"),
    text_case("text-nul", "a\x00b"),
    text_case("text-del", "a\x7fb"),
    text_case("text-c1-control", "a\x85b"),
    text_case("text-not-a-string", 42),
    text_case("text-null", None),
    bad("text-missing", 422, json={"urgency": 3}, field="text"),
    # url
    field_case("url-javascript", "url", "javascript:alert(1)"),
    field_case("url-ftp", "url", "ftp://example.org/file"),
    field_case("url-relative", "url", "/news/1"),
    field_case("url-no-host", "url", "http:///news"),
    field_case("url-with-space", "url", "https://exa mple.org/"),
    field_case("url-2049-chars", "url", "https://example.org/" + "a" * 2029),
    field_case("url-bad-port", "url", "https://example.org:99999/"),
    field_case("url-not-a-string", "url", 7),
    # time
    field_case("time-without-offset", "time", "2026-02-14T16:30:00"),
    field_case("time-not-a-date", "time", "yesterday"),
    field_case("time-date-only", "time", "2026-02-14"),
    field_case("time-impossible-date", "time", "2026-02-30T10:00:00Z"),
    field_case("time-not-a-string", "time", 1771083000),
    # urgency
    field_case("urgency-0", "urgency", 0),
    field_case("urgency-10", "urgency", 10),
    field_case("urgency-string", "urgency", "1"),
    field_case("urgency-true", "urgency", True),
    field_case("urgency-float", "urgency", 1.5),
    field_case("urgency-null", "urgency", None),
    # tags
    field_case("tags-11", "tags", [f"t{i}" for i in range(11)]),
    field_case("tag-65-chars", "tags", ["a" * 65]),
    field_case("tag-empty", "tags", [" "]),
    field_case("tag-control-char", "tags", ["a\nb"]),
    field_case("tags-not-a-list", "tags", "politics"),
    field_case("tags-not-strings", "tags", [1, 2]),
    # lang
    field_case("lang-word", "lang", "english"),
    field_case("lang-underscore", "lang", "fr_FR"),
    field_case("lang-empty", "lang", ""),
    field_case("lang-not-a-string", "lang", 5),
    # other fields
    field_case("pinned-not-bool", "pinned", "yes"),
    field_case("unknown-field", "headline", "x"),
    field_case("id-is-not-settable", "id", "1-0"),
    field_case("status-is-not-settable", "status", "canceled"),
    # the body as a whole
    bad("json-list", 422, json=[{"text": "a"}]),
    bad("json-string", 422, json="a brief"),
    bad("json-null", 422, content=b"null"),
    bad("malformed-json", 400, content=b'{"text": "a"', problem="malformed-json"),
    bad("empty-body", 400, content=b"", problem="malformed-json"),
    bad("json-trailing-garbage", 400, content=b'{"text": "a"} x', problem="malformed-json"),
    bad("json-lone-surrogate", 400, content=b'{"text": "\\ud800"}', problem="malformed-json"),
    bad("content-type-text-plain", 415, content=b'{"text": "a"}', content_type="text/plain"),
    bad("content-type-missing", 415, content=b'{"text": "a"}', content_type=None),
    bad("content-type-form", 415, content=b"text=a",
        content_type="application/x-www-form-urlencoded"),
    bad("body-over-16-kib", 413, content=TOO_BIG),
    # channel
    channel_case("channel-uppercase", "World"),
    channel_case("channel-65-chars", "a" * 65),
    channel_case("channel-leading-hyphen", "-world"),
    channel_case("channel-underscore", "wor_ld"),
    channel_case("channel-uppercase-list", "World", method="GET"),
    # Idempotency-Key
    bad("idempotency-key-256-chars", 400, json={"text": "a"}, problem="bad-idempotency-key",
        headers=(("Idempotency-Key", "k" * 256),)),
    bad("idempotency-key-empty", 400, json={"text": "a"}, problem="bad-idempotency-key",
        headers=(("Idempotency-Key", ""),)),
    # brief ids in paths
    id_case("patch-id-not-an-id", "PATCH", "abc"),
    id_case("patch-id-without-sequence", "PATCH", "1732850000000"),
    id_case("patch-id-three-parts", "PATCH", "1-2-3"),
    id_case("patch-id-overflow", "PATCH", f"{2**64}-0"),
    id_case("delete-id-not-an-id", "DELETE", "abc"),
    id_case("delete-id-negative", "DELETE", "-1-0"),
    id_case("get-id-not-an-id", "GET", "latest"),
    bad("patch-unknown-id", 404, method="PATCH", path=BRIEF.format(id=MISSING_ID),
        json={"text": "a"}),
    bad("delete-unknown-id", 404, method="DELETE", path=BRIEF.format(id=MISSING_ID)),
    bad("get-unknown-id", 404, method="GET", path=BRIEF.format(id=MISSING_ID)),
    bad("patch-unknown-channel", 404, method="PATCH", path="/v1/channels/nowhere/briefs/{live}",
        json={"text": "a"}),
    # corrections
    bad("patch-empty-object", 422, method="PATCH", path=BRIEF.format(id="{live}"), json={}),
    bad("patch-empty-text", 422, method="PATCH", path=BRIEF.format(id="{live}"),
        json={"text": " "}, field="text"),
    bad("patch-urgency-0", 422, method="PATCH", path=BRIEF.format(id="{live}"),
        json={"urgency": 0}, field="urgency"),
    bad("patch-unknown-field", 422, method="PATCH", path=BRIEF.format(id="{live}"),
        json={"version": 9}, field="version"),
    bad("patch-status", 422, method="PATCH", path=BRIEF.format(id="{retracted}"),
        json={"status": "usable"}, field="status"),
    bad("patch-list", 422, method="PATCH", path=BRIEF.format(id="{live}"), json=["text"]),
    bad("patch-malformed-json", 400, method="PATCH", path=BRIEF.format(id="{live}"),
        content=b"{", problem="malformed-json"),
    bad("patch-text-plain", 415, method="PATCH", path=BRIEF.format(id="{live}"),
        content=b'{"text": "a"}', content_type="text/plain"),
    bad("patch-over-16-kib", 413, method="PATCH", path=BRIEF.format(id="{live}"),
        content=TOO_BIG),
    bad("patch-retracted-brief", 409, method="PATCH", path=BRIEF.format(id="{retracted}"),
        json={"text": "Back from the dead"}),
    # listing
    limit_case("limit-0", "0"),
    limit_case("limit-201", "201"),
    limit_case("limit-x", "x"),
    limit_case("limit-negative", "-1"),
    limit_case("limit-empty", ""),
    limit_case("limit-fraction", "1.5"),
    # routing
    bad("unknown-route", 404, method="GET", path="/v1/nothing-here"),
    bad("unknown-route-post", 404, path="/v1/channel/world", json={"text": "a"}),
    bad("post-on-a-channel", 405, path="/v1/channels/world", json={"text": "a"}),
    bad("put-on-briefs", 405, method="PUT", path="/v1/channels/world/briefs", json={"text": "a"}),
    bad("delete-on-briefs", 405, method="DELETE", path="/v1/channels/world/briefs"),
    bad("post-on-a-brief", 405, path=BRIEF.format(id="{live}"), json={"text": "a"}),
    bad("post-on-channels", 405, path="/v1/channels", json={"text": "a"}),
    bad("post-on-healthz", 405, path="/healthz", json={}),
]


@pytest.mark.parametrize("case", BAD_INPUTS)
async def test_bad_input_gets_a_problem_and_changes_nothing(
    service: Service, redis_client: aioredis.Redis, seeded: Seeded, case: Bad
) -> None:
    path = case.path.format(live=seeded.live["id"], retracted=seeded.retracted["id"])
    headers = {**service.auth(), **dict(case.headers)}
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    content = case.content if case.json is _DEFAULT else orjson.dumps(case.json)
    before = await keyspace(redis_client)
    xlen = await redis_client.xlen(WORLD_LOG)
    briefs = await redis_client.hgetall(WORLD_BRIEFS)
    assert xlen == 3 and len(briefs) == 2  # two publishes and a retraction

    r = await service.http.request(case.method, path, content=content, headers=headers)

    body = assert_problem(r, case.status)
    assert body["type"] == f"urn:ticker:problem:{case.problem or PROBLEM_TYPES[case.status]}"
    if case.status == 422:
        fields = problem_fields(body)
        if case.field is not None:
            assert case.field in fields
    if case.status == 405:
        assert case.method not in r.headers["allow"]
    assert await redis_client.xlen(WORLD_LOG) == xlen
    assert await redis_client.hgetall(WORLD_BRIEFS) == briefs
    assert await keyspace(redis_client) == before


async def test_several_invalid_fields_are_all_named(service: Service) -> None:
    r = await post(service, "world", {"text": "", "urgency": 0, "url": "ftp://x", "extra": 1})
    body = assert_problem(r, 422)
    assert sorted(problem_fields(body)) == ["extra", "text", "urgency", "url"]


async def test_body_over_16_kib_without_content_length_gets_413(
    service: Service, redis_client: aioredis.Redis
) -> None:
    before = await keyspace(redis_client)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "a", "tags": ["'
        for _ in range(20):
            yield b"b" * 1024
        yield b'"]}'

    r = await service.http.post(
        "/v1/channels/world/briefs", content=chunks(),
        headers={**service.auth(), "Content-Type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert_problem(r, 413)
    assert await keyspace(redis_client) == before


async def test_method_not_allowed_lists_the_allowed_methods(service: Service) -> None:
    r = await service.http.put("/v1/channels/world/briefs", json={"text": "a"})
    assert_problem(r, 405)
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    r = await service.http.post("/v1/channels/world/briefs/1-0", json={"text": "a"})
    assert_problem(r, 405)
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert {"GET", "PATCH", "DELETE"} <= allowed


async def test_head_answers_like_get_without_a_body(service: Service, seeded: Seeded) -> None:
    for path in ["/v1/channels/world/briefs", f"/v1/channels/world/briefs/{seeded.live['id']}"]:
        r = await service.http.head(path)
        assert r.status_code == 200
        assert r.content == b""
        assert int(r.headers["content-length"]) == len((await service.http.get(path)).content)


async def test_retracting_twice_is_not_an_error(
    service: Service, redis_client: aioredis.Redis, seeded: Seeded
) -> None:
    before = await redis_client.xlen(WORLD_LOG)
    r = await service.http.delete(
        f"/v1/channels/world/briefs/{seeded.retracted['id']}", headers=service.auth()
    )
    assert r.status_code == 204
    assert await redis_client.xlen(WORLD_LOG) == before


# Corrections and retractions


async def test_patch_returns_the_corrected_brief_with_version_and_updated_at(
    service: Service, seeded: Seeded
) -> None:
    r = await service.http.patch(
        f"/v1/channels/world/briefs/{seeded.live['id']}",
        json={"text": "A corrected brief", "urgency": 2}, headers=service.auth(),
    )
    assert r.status_code == 200, r.text
    fixed = r.json()
    assert fixed == {
        **seeded.live, "text": "A corrected brief", "urgency": 2, "version": 2,
        "updated_at": fixed["updated_at"],
    }
    assert parse_rfc3339(fixed["updated_at"]) >= parse_rfc3339(seeded.live["time"])
    got = await service.http.get(f"/v1/channels/world/briefs/{seeded.live['id']}")
    assert got.json() == fixed


async def test_delete_retracts_the_brief(service: Service, seeded: Seeded) -> None:
    r = await service.http.delete(
        f"/v1/channels/world/briefs/{seeded.live['id']}", headers=service.auth()
    )
    assert r.status_code == 204
    assert r.content == b""
    got = (await service.http.get(f"/v1/channels/world/briefs/{seeded.live['id']}")).json()
    assert got["status"] == "canceled" and got["version"] == 2 and got["updated_at"]
    listed = (await service.http.get("/v1/channels/world/briefs")).json()
    assert listed["briefs"] == []


# Authentication and scopes


async def _key(redis_client: aioredis.Redis, name: str, channels: list[str]) -> str:
    return await KeyStore(redis_client).create(name, channels)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic"),
        pytest.param("Bearer", id="bearer-alone"),
        pytest.param("Token tk_abc", id="other-scheme"),
        pytest.param("Bearer tk_not-a-real-key", id="wrong-key"),
        pytest.param("Bearer " + "k" * 300, id="overlong-key"),
    ],
)
async def test_publish_without_a_valid_key_gets_401_and_changes_nothing(
    service: Service, redis_client: aioredis.Redis, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    before = await keyspace(redis_client)
    r = await service.http.post("/v1/channels/world/briefs", json={"text": "a"}, headers=headers)
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert await keyspace(redis_client) == before
    assert await redis_client.xlen(WORLD_LOG) == 0


async def test_bearer_with_an_empty_token_gets_401(
    service: Service, redis_client: aioredis.Redis
) -> None:
    before = await keyspace(redis_client)
    status, headers = await raw_request(
        service,
        "POST /v1/channels/world/briefs HTTP/1.1\nHost: x\nAuthorization: Bearer \n"
        "Content-Type: application/json\n",
        b'{"text": "a"}',
    )
    assert status == 401
    assert headers["content-type"] == PROBLEM
    assert headers["www-authenticate"].startswith("Bearer")
    assert await keyspace(redis_client) == before


async def test_auth_is_checked_before_the_body(
    service: Service, redis_client: aioredis.Redis
) -> None:
    r = await service.http.post(
        "/v1/channels/world/briefs", content=b"not json", headers={"Content-Type": "text/plain"}
    )
    assert_problem(r, 401)


async def test_revoked_key_gets_401(service: Service, redis_client: aioredis.Redis) -> None:
    keys = KeyStore(redis_client)
    key = await keys.create("cms", ["world"])
    r = await post(service, "world", {"text": "before"}, **service.auth(key))
    assert r.status_code == 201
    assert await keys.revoke("cms") is True
    before = await keyspace(redis_client)
    r = await post(service, "world", {"text": "after"}, **service.auth(key))
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert await keyspace(redis_client) == before
    assert await redis_client.xlen(WORLD_LOG) == 1


async def test_key_for_another_channel_gets_403_and_changes_nothing(
    service: Service, redis_client: aioredis.Redis
) -> None:
    sport = await _key(redis_client, "sport-desk", ["sport"])
    before = await keyspace(redis_client)
    r = await post(service, "world", {"text": "a"}, **service.auth(sport))
    body = assert_problem(r, 403)
    assert "world" in body["detail"]
    assert await keyspace(redis_client) == before


async def test_key_scoped_to_two_channels_publishes_to_both_and_no_other(
    service: Service, redis_client: aioredis.Redis
) -> None:
    key = await _key(redis_client, "two", ["world", "sport"])
    for channel in ("world", "sport"):
        r = await post(service, channel, {"text": f"on {channel}"}, **service.auth(key))
        assert r.status_code == 201, r.text
        assert r.json()["channel"] == channel
    assert_problem(await post(service, "culture", {"text": "no"}, **service.auth(key)), 403)
    assert await redis_client.xlen("ticker:{culture}:log") == 0


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_patch_and_delete_need_a_key_in_scope(
    service: Service, redis_client: aioredis.Redis, seeded: Seeded, method: str
) -> None:
    sport = await _key(redis_client, "sport-desk", ["sport"])
    path = f"/v1/channels/world/briefs/{seeded.live['id']}"
    content = orjson.dumps({"text": "changed"}) if method == "PATCH" else None
    json_type = {"Content-Type": "application/json"}
    before = await keyspace(redis_client)
    for headers, status in [
        ({}, 401),
        ({"Authorization": "Bearer tk_wrong"}, 401),
        (service.auth(sport), 403),
    ]:
        r = await service.http.request(
            method, path, content=content, headers={**headers, **json_type}
        )
        assert_problem(r, status)
        assert await keyspace(redis_client) == before


# Idempotency


async def test_idempotent_retry_returns_the_same_brief_and_publishes_once(
    service: Service, redis_client: aioredis.Redis
) -> None:
    body = {"text": "Only once"}
    first = await post(service, "world", body, **{"Idempotency-Key": "cms-42"})
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert await redis_client.xlen(WORLD_LOG) == 1
    again = await post(service, "world", body, **{"Idempotency-Key": "cms-42"})
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert await redis_client.xlen(WORLD_LOG) == 1
    other = await post(service, "world", body, **{"Idempotency-Key": "cms-43"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert await redis_client.xlen(WORLD_LOG) == 2


async def test_20_concurrent_retries_publish_exactly_once(
    service: Service, redis_client: aioredis.Redis
) -> None:
    responses = await asyncio.gather(*[
        post(service, "world", {"text": "Breaking"}, **{"Idempotency-Key": "storm"})
        for _ in range(20)
    ])
    assert [r.status_code for r in responses] == [201] * 20
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert replayed.count("true") == 19 and replayed.count(None) == 1
    assert await log_ids(redis_client) == list(ids)


async def test_retry_that_reserialises_the_same_json_is_the_same_request(
    service: Service, redis_client: aioredis.Redis
) -> None:
    headers = {**service.auth(), "Idempotency-Key": "k-json", "Content-Type": "application/json"}
    url = "/v1/channels/world/briefs"
    first = await service.http.post(url, content=b'{"text":"Same","urgency":2}', headers=headers)
    again = await service.http.post(
        url, content=b'{ "urgency": 2,\n  "text": "Same" }', headers=headers
    )
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert await redis_client.xlen(WORLD_LOG) == 1


async def test_same_idempotency_key_with_another_body_gets_422(
    service: Service, redis_client: aioredis.Redis
) -> None:
    first = await post(service, "world", {"text": "One"}, **{"Idempotency-Key": "k1"})
    assert first.status_code == 201
    before = await keyspace(redis_client)
    r = await post(service, "world", {"text": "Two"}, **{"Idempotency-Key": "k1"})
    assert_problem(r, 422)
    assert await keyspace(redis_client) == before


async def test_same_idempotency_key_from_two_api_keys_publishes_twice(
    service: Service, redis_client: aioredis.Redis
) -> None:
    other = await _key(redis_client, "other-cms", ["world"])
    a = await post(service, "world", {"text": "Same"}, **{"Idempotency-Key": "shared"})
    b = await post(
        service, "world", {"text": "Same"}, **{**service.auth(other), "Idempotency-Key": "shared"}
    )
    assert a.status_code == b.status_code == 201
    assert "idempotent-replayed" not in b.headers
    assert a.json()["id"] != b.json()["id"]
    assert await redis_client.xlen(WORLD_LOG) == 2


async def test_same_idempotency_key_on_two_channels_publishes_on_each(
    service: Service, redis_client: aioredis.Redis
) -> None:
    a = await post(service, "world", {"text": "Same"}, **{"Idempotency-Key": "shared"})
    b = await post(service, "sport", {"text": "Same"}, **{"Idempotency-Key": "shared"})
    assert a.status_code == b.status_code == 201
    assert "idempotent-replayed" not in b.headers
    assert b.json()["channel"] == "sport"
    assert await redis_client.xlen("ticker:{sport}:log") == 1


async def test_refused_request_does_not_use_up_its_idempotency_key(
    service: Service, redis_client: aioredis.Redis
) -> None:
    r = await post(service, "world", {"text": ""}, **{"Idempotency-Key": "retry-me"})
    assert_problem(r, 422)
    r = await post(service, "world", {"text": "fixed"}, **{"Idempotency-Key": "retry-me"})
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    assert r.json()["text"] == "fixed"
    assert await redis_client.xlen(WORLD_LOG) == 1


# Reading


async def test_list_is_newest_first_with_corrections_applied_and_retractions_left_out(
    service: Service, redis_client: aioredis.Redis
) -> None:
    published = [await service.publish("world", f"brief {i}") for i in range(6)]
    auth = service.auth()
    r = await service.http.patch(
        f"/v1/channels/world/briefs/{published[1]['id']}", json={"text": "brief 1, fixed"},
        headers=auth,
    )
    assert r.status_code == 200
    r = await service.http.delete(f"/v1/channels/world/briefs/{published[4]['id']}", headers=auth)
    assert r.status_code == 204

    r = await service.http.get("/v1/channels/world/briefs")
    assert r.status_code == 200
    listed = r.json()
    assert [b["text"] for b in listed["briefs"]] == [
        "brief 5", "brief 3", "brief 2", "brief 1, fixed", "brief 0"
    ]
    assert listed["briefs"][3]["version"] == 2
    assert listed["cursor"] == (await log_ids(redis_client))[-1]

    limited = (await service.http.get("/v1/channels/world/briefs?limit=2")).json()
    assert [b["text"] for b in limited["briefs"]] == ["brief 5", "brief 3"]
    assert limited["cursor"] == listed["cursor"]


async def test_list_of_a_channel_never_published_to_is_empty(service: Service) -> None:
    r = await service.http.get("/v1/channels/quiet/briefs")
    assert r.status_code == 200
    assert r.json()["briefs"] == []
    assert r.json()["cursor"] == "0-0"


async def test_list_limit_of_200_is_accepted(service: Service) -> None:
    await service.publish("world", "only one")
    r = await service.http.get("/v1/channels/world/briefs?limit=200")
    assert r.status_code == 200
    assert len(r.json()["briefs"]) == 1


async def test_channels_lists_the_channels_published_to(service: Service) -> None:
    assert (await service.http.get("/v1/channels")).json() == {"channels": []}
    await service.publish("world", "a")
    await service.publish("sport", "b")
    await service.publish("world", "c")
    r = await service.http.get("/v1/channels")
    assert r.status_code == 200
    assert sorted(c["name"] for c in r.json()["channels"]) == ["sport", "world"]


# Health


async def test_healthz_answers_200(service: Service) -> None:
    r = await service.http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_answers_200_when_redis_is_up(service: Service) -> None:
    r = await service.http.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready"}


# Redis down


@pytest.mark.faults
async def test_publish_answers_503_while_redis_is_down_and_writes_nothing() -> None:
    """A throwaway Redis (the session one is left alone) killed with SIGKILL, then
    restarted from its append-only file: what was acknowledged is there, nothing else."""
    data_dir = tempfile.mkdtemp(prefix="tk-")
    server = EmbeddedRedis(data_dir).start()
    try:
        settings = Settings(
            redis_url=server.url, log_level="warning", shutdown_drain=0.5,
            redis_timeout=2.0, reconnect_max_delay=0.5,
        )
        admin = aioredis.Redis.from_url(server.url)
        try:
            key = await KeyStore(admin).create("cms", ["*"])
        finally:
            await admin.aclose()
        async with run_service(settings, tcp_socket()) as service:
            service.key = key
            acknowledged = [(await service.publish("world", f"before {i}"))["id"] for i in range(5)]

            server.kill()
            r = await post(service, "world", {"text": "while down"}, **{"Idempotency-Key": "down"})
            body = assert_problem(r, 503)
            assert "nothing was written" in body["detail"]
            assert int(r.headers["retry-after"]) > 0
            r = await service.http.patch(
                f"/v1/channels/world/briefs/{acknowledged[0]}", json={"text": "x"},
                headers=service.auth(),
            )
            assert_problem(r, 503)
            assert_problem(await service.http.get("/readyz"), 503)
            assert (await service.http.get("/healthz")).status_code == 200

            server.start()
            check = aioredis.Redis.from_url(server.url)
            try:
                assert await log_ids(check) == acknowledged
                stored: Any = await check.hkeys(WORLD_BRIEFS)
                assert sorted(k.decode() for k in stored) == sorted(acknowledged)
                # Ready once the stream reader, which follows the bell even with no
                # subscriber, has reconnected (its backoff is at most 0.5 s here).
                for _ in range(500):
                    if (await service.http.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                assert (await service.http.get("/readyz")).status_code == 200
                r = await post(service, "world", {"text": "again"}, **{"Idempotency-Key": "down"})
                assert r.status_code == 201, r.text
                assert "idempotent-replayed" not in r.headers
                assert await log_ids(check) == [*acknowledged, r.json()["id"]]
            finally:
                await check.aclose()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_writes_past_the_rate_limit_get_429_with_retry_after(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    async with run_service(settings.with_overrides(publish_rate_per_minute=3), tcp_socket()) as svc:
        svc.key = await KeyStore(redis_client).create("busy", ["*"])
        other = await KeyStore(redis_client).create("calm", ["*"])
        for i in range(3):
            assert (await post(svc, "world", {"text": f"ok {i}"})).status_code == 201
        before = await keyspace(redis_client)
        refused = await post(svc, "world", {"text": "one too many"})
        body = assert_problem(refused, 429)
        assert body["type"] == "urn:ticker:problem:rate-limited" and body["limit"] == 3
        assert 1 <= int(refused.headers["retry-after"]) <= 61
        patch = await svc.http.patch(
            "/v1/channels/world/briefs/1-0", json={"text": "x"}, headers=svc.auth()
        )
        assert_problem(patch, 429)
        # Nothing written (but the key's own counter); another key is not affected.
        assert await keyspace(redis_client) == before
        assert (await post(svc, "world", {"text": "calm"}, **svc.auth(other))).status_code == 201


async def test_author_is_a_public_byline_set_changed_and_cleared(service: Service) -> None:
    brief = await service.publish("world", "Signed", author="  Ana Pérez ")
    assert brief["author"] == "Ana Pérez"
    got = (await service.http.get(f"/v1/channels/world/briefs/{brief['id']}")).json()
    assert got["author"] == "Ana Pérez"
    assert (await service.correct(brief["id"], author="Desk"))["author"] == "Desk"
    listed = (await service.http.get("/v1/channels/world/briefs")).json()["briefs"]
    assert listed[0]["author"] == "Desk"
    assert (await service.correct(brief["id"], author=None))["author"] is None
    r = await post(service, "world", {"text": "x", "author": "a" * 101})
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["author"]
    assert "1 to 100 characters" in r.json()["errors"][0]["message"]
