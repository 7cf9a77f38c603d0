"""IPTC ninjs 3.1: briefs served as ninjs (validated against the IPTC schema), and ninjs
accepted on publish, against the real service."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from tests.conftest import Service

CONFORMANCE = Path(__file__).resolve().parent / "conformance"
SCHEMA_FILE = CONFORMANCE / "ninjs-schema_3.1.json"
NINJS = "application/ninjs+json"


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _valid(validator: Any, item: dict[str, Any]) -> dict[str, Any]:
    errors = sorted(validator.iter_errors(item), key=str)
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    return item


async def _ninjs(service: Service, brief_id: str, channel: str = "world") -> dict[str, Any]:
    r = await service.http.get(
        f"/v1/channels/{channel}/briefs/{brief_id}", headers={"Accept": NINJS}
    )
    assert r.status_code == 200 and r.headers["content-type"] == NINJS
    assert r.headers["vary"] == "Accept"
    item: dict[str, Any] = r.json()
    return item


async def test_a_brief_as_ninjs_is_valid_3_1_and_maps_every_field(
    service: Service, validator: Any
) -> None:
    brief = await service.publish(
        "world", "Tsahal ne se retirera pas de cinq avant-postes", url="https://news.example/a",
        time="2026-02-14T16:30:00+01:00", urgency=2, tags=["Liban", "Israël"], lang="fr",
        author="Ana Pérez, à Beyrouth",
    )
    item = _valid(validator, await _ninjs(service, brief["id"]))
    assert item == {
        "uri": f"{service.base}/v1/channels/world/briefs/{brief['id']}",
        "standard": {"name": "ninjs", "version": "3.1",
                     "schema": "http://www.iptc.org/std/ninjs/ninjs-schema_3.1.json#"},
        "type": "text",
        "representationType": "full",
        "profile": "ticker-brief",
        "version": "1",
        "firstCreated": "2026-02-14T16:30:00+01:00",
        "versionCreated": "2026-02-14T16:30:00+01:00",
        "pubStatus": "usable",
        "urgency": 2,
        "headlines": [{"value": brief["text"], "contentType": "text/plain"}],
        "altIds": [{"role": "ticker-id", "value": brief["id"]}],
        "language": "fr",
        "subjects": [{"name": "Liban"}, {"name": "Israël"}],
        "associations": [{"name": "link", "rel": "related", "uri": "https://news.example/a"}],
        "by": "Ana Pérez, à Beyrouth",
    }
    # Without a byline, no 'by'; a correction that clears it takes it away.
    fixed = await service.correct(brief["id"], author=None)
    assert fixed["author"] is None
    assert "by" not in _valid(validator, await _ninjs(service, brief["id"]))


async def test_corrections_bump_version_and_a_retraction_is_canceled(
    service: Service, validator: Any
) -> None:
    brief = await service.publish("world", "Frist draft")
    path = f"/v1/channels/world/briefs/{brief['id']}"
    r = await service.http.patch(path, json={"text": "First draft"}, headers=service.auth())
    fixed = r.json()
    item = _valid(validator, await _ninjs(service, brief["id"]))
    assert item["version"] == "2" and item["versionCreated"] == fixed["updated_at"]
    assert item["firstCreated"] == brief["time"] and item["headlines"][0]["value"] == "First draft"
    assert (await service.http.delete(path, headers=service.auth())).status_code == 204
    item = _valid(validator, await _ninjs(service, brief["id"]))
    assert item["pubStatus"] == "canceled" and item["version"] == "3"


async def test_ninjs_is_chosen_by_query_or_accept_preference(service: Service) -> None:
    brief = await service.publish("world", "Negotiated")
    path = f"/v1/channels/world/briefs/{brief['id']}"
    cases: list[tuple[dict[str, str], dict[str, str], str]] = [
        ({"format": "ninjs"}, {}, NINJS),
        ({"format": "json"}, {"Accept": NINJS}, "application/json"),
        ({}, {}, "application/json"),
        ({}, {"Accept": "*/*"}, "application/json"),
        ({}, {"Accept": f"application/json;q=0.5, {NINJS}"}, NINJS),
        ({}, {"Accept": f"{NINJS};q=0.5, application/json"}, "application/json"),
        ({}, {"Accept": f"{NINJS};q=0"}, "application/json"),
    ]
    for params, headers, expected in cases:
        r = await service.http.get(path, params=params, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == expected, (params, headers)
    r = await service.http.get(path, params={"format": "xml"})
    assert r.status_code == 400 and r.json()["type"] == "urn:ticker:problem:bad-format"


async def test_publishing_ninjs_creates_the_brief_it_describes(
    service: Service, validator: Any
) -> None:
    original = await service.publish(
        "world", "Round trip", url="https://news.example/r", tags=["a", "b"], urgency=3,
        lang="en-GB", time="2026-02-14T08:00:00Z", author="Desk",
    )
    item = await _ninjs(service, original["id"])
    assert item["by"] == "Desk"
    # What the service gives as ninjs, it takes back as ninjs (here onto another channel).
    headers = {**service.auth(), "Content-Type": NINJS, "Idempotency-Key": "ninjs-1"}
    r = await service.http.post(
        "/v1/channels/sport/briefs", content=json.dumps(item), headers=headers
    )
    assert r.status_code == 201 and r.headers["content-type"] == NINJS, r.text
    created = _valid(validator, r.json())
    (alt,) = created["altIds"]
    native = (await service.http.get(f"/v1/channels/sport/briefs/{alt['value']}")).json()
    same = ("text", "url", "tags", "urgency", "lang", "time", "author")
    assert {k: native[k] for k in same} == {k: original[k] for k in same}
    assert native["channel"] == "sport" and native["version"] == 1
    assert r.headers["location"] == f"/v1/channels/sport/briefs/{native['id']}"

    again = await service.http.post(
        "/v1/channels/sport/briefs", content=json.dumps(item), headers=headers
    )
    assert again.status_code == 201 and again.json()["uri"] == created["uri"]
    assert again.headers["idempotent-replayed"] == "true"

    minimal = {"uri": "urn:x:1", "headlines": [{"value": "Minimal"}]}
    r = await service.http.post(
        "/v1/channels/sport/briefs", content=json.dumps(minimal),
        headers={**service.auth(), "Content-Type": NINJS, "Accept": "application/json"},
    )
    assert r.status_code == 201 and r.json()["text"] == "Minimal" and r.json()["urgency"] == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"uri": "urn:x"}, "headlines", id="no-headline"),
        pytest.param({"headlines": [{"value": "x" * 501}]}, "headlines/0/value", id="too-long"),
        pytest.param({"headlines": [{"value": " "}]}, "headlines/0/value", id="empty"),
        pytest.param({"headlines": [{"value": "x"}], "bodies": [{"value": "y"}]}, "bodies",
                     id="unmapped-field"),
        pytest.param({"headlines": [{"value": "x"}], "pubStatus": "canceled"}, "pubStatus",
                     id="canceled"),
        pytest.param({"headlines": [{"value": "x"}], "urgency": 0}, "urgency", id="urgency"),
        pytest.param({"headlines": [{"value": "x"}], "associations": [{"uri": "ftp://x"}]},
                     "associations/0/uri", id="bad-link"),
        pytest.param({"headlines": [{"value": "x"}], "subjects": ["tag"]}, "subjects",
                     id="bad-subjects"),
        pytest.param({"headlines": [{"value": "x"}], "firstCreated": "yesterday"},
                     "firstCreated", id="bad-date"),
        pytest.param({"headlines": [{"value": "x"}], "by": "x" * 101}, "by", id="long-by"),
        pytest.param({"headlines": [{"value": "x"}], "by": ["Ana"]}, "by", id="by-not-string"),
        pytest.param(["not", "an", "object"], "", id="not-an-object"),
    ],
)
async def test_a_bad_ninjs_publish_is_422_naming_the_ninjs_field(
    service: Service, body: Any, field: str
) -> None:
    r = await service.http.post(
        "/v1/channels/world/briefs", content=json.dumps(body),
        headers={**service.auth(), "Content-Type": NINJS},
    )
    assert r.status_code == 422, r.text
    problem = r.json()
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in problem["errors"]] == [field]
    assert (await service.http.get("/v1/channels/world/briefs")).json()["briefs"] == []


async def test_a_ninjs_uri_comes_from_public_url_not_from_host(serve_with: Any) -> None:
    async with serve_with(public_url="https://ticker.example.org") as service:
        brief = await service.publish("world", "Un brief")
        r = await service.http.get(
            f"/v1/channels/world/briefs/{brief['id']}",
            headers={"Accept": "application/ninjs+json", "Host": "evil.example"},
        )
        assert r.json()["uri"] == f"https://ticker.example.org/v1/channels/world/briefs/{brief['id']}"


async def test_a_channels_list_as_ninjs_is_one_valid_composite_of_its_briefs(
    service: Service, validator: Any
) -> None:
    """``GET .../briefs`` as ninjs: one composite object whose associations are the
    channel's briefs newest first, each the brief's own ninjs object; revalidated with
    its ETag, changed by a correction, and no ninjs for a ``since`` poll."""
    first = await service.publish("ninjs-list", "First", url="https://news.example/1")
    second = await service.publish("ninjs-list", "Second", urgency=2)
    path = "/v1/channels/ninjs-list/briefs"
    r = await service.http.get(path, headers={"Accept": NINJS})
    assert r.status_code == 200 and r.headers["content-type"] == NINJS
    assert r.headers["vary"] == "Accept" and r.headers["cache-control"] == "private, no-cache"
    native = (await service.http.get(path)).json()
    item = _valid(validator, r.json())
    assert item["uri"] == f"{service.base}{path}"
    assert item["type"] == "composite" and item["profile"] == "ticker-list"
    assert item["altIds"] == [{"role": "ticker-cursor", "value": native["cursor"]},
                              {"role": "ticker-epoch", "value": native["epoch"]}]
    millis = int(native["cursor"].split("-")[0])  # the time of the last event
    created = datetime.fromisoformat(item["versionCreated"])
    assert created == datetime.fromtimestamp(millis / 1000, UTC)
    members = item["associations"]
    assert [(m["name"], m["rel"]) for m in members] == [("brief", "item")] * 2
    for member, brief in zip(members, [second, first], strict=True):  # newest first
        alone = await _ninjs(service, brief["id"], "ninjs-list")
        assert {k: v for k, v in member.items() if k not in ("name", "rel")} == alone

    same = await service.http.get(path, params={"format": "ninjs"},
                                  headers={"If-None-Match": r.headers["etag"]})
    assert same.status_code == 304
    assert r.headers["etag"] != (await service.http.get(path)).headers["etag"]  # not the JSON's

    fix = await service.http.patch(f"{path}/{first['id']}", json={"text": "First, fixed"},
                                   headers=service.auth())
    assert fix.status_code == 200
    changed = await service.http.get(path, params={"format": "ninjs"},
                                     headers={"If-None-Match": r.headers["etag"]})
    assert changed.status_code == 200
    member = _valid(validator, changed.json())["associations"][1]
    assert member["headlines"][0]["value"] == "First, fixed" and member["version"] == "2"

    refused = await service.http.get(path, params={"format": "ninjs", "since": native["cursor"]})
    assert refused.status_code == 400 and refused.json()["type"] == "urn:ticker:problem:bad-format"
