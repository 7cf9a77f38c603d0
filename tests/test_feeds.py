"""Feeds: RSS 2.0, Atom and JSON Feed 1.1 of a channel's latest briefs, read back with
feedparser and an XML parser, and JSON Feed checked against its published schema."""

from __future__ import annotations

import calendar
import json
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any

import feedparser  # type: ignore[import-untyped]
import jsonschema  # type: ignore[import-untyped]

from tests.conftest import Service

CONFORMANCE = Path(__file__).resolve().parent / "conformance"
ATOM = "{http://www.w3.org/2005/Atom}"
HOSTILE = (
    "<script>alert('x')</script> & &amp; \"quoted\" ]]> <![CDATA[ x ]]> \u202eRTL\u202c "
    "🎉 \u00e9 \ufffe end"
)


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _parsed_epoch(struct: time.struct_time) -> float:
    return float(calendar.timegm(struct))


async def _three_briefs(service: Service) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Publish three briefs, correct the second and retract the third."""
    first = await service.publish(
        "world", "Summit opens", time="2026-02-14T09:00:00+01:00",
        url="https://news.example/summit", tags=["diplomacy"],
    )
    second = await service.publish("world", "Typo in hedline", time="2026-02-14T16:30:00Z")
    third = await service.publish("world", "To be retracted", time="2026-02-14T17:00:00Z")
    r = await service.http.patch(
        f"/v1/channels/world/briefs/{second['id']}", json={"text": "Typo in headline"},
        headers=service.auth(),
    )
    assert r.status_code == 200
    second = r.json()
    path = f"/v1/channels/world/briefs/{third['id']}"
    r = await service.http.delete(path, headers=service.auth())
    assert r.status_code == 204
    return first, second, third


def _brief_uri(service: Service, brief: dict[str, Any]) -> str:
    return f"{service.base}/v1/channels/world/briefs/{brief['id']}"


async def test_rss_lists_live_briefs_newest_first_with_dates_ids_and_links(
    service: Service,
) -> None:
    first, second, third = await _three_briefs(service)
    r = await service.http.get("/v1/channels/world/feed.rss")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/rss+xml; charset=utf-8"
    feed = feedparser.parse(r.content)
    assert not feed.bozo, feed.get("bozo_exception")
    assert feed.version == "rss20"
    assert feed.feed.title == "ticker: world"
    assert feed.feed.link == f"{service.base}/embed/world"
    assert [e.title for e in feed.entries] == ["Typo in headline", "Summit opens"]
    newest, oldest = feed.entries
    assert newest.id == _brief_uri(service, second) and oldest.id == _brief_uri(service, first)
    assert oldest.guidislink is False and oldest.link == "https://news.example/summit"
    assert _parsed_epoch(oldest.published_parsed) == _epoch(first["time"])
    assert _parsed_epoch(newest.published_parsed) == _epoch(second["time"])
    assert [t.term for t in oldest.tags] == ["diplomacy"]
    assert _parsed_epoch(feed.feed.updated_parsed) == int(_epoch(second["updated_at"]))
    assert third["id"] not in r.text


async def test_atom_entries_carry_published_and_updated_and_the_feed_links_itself(
    service: Service,
) -> None:
    first, second, _ = await _three_briefs(service)
    r = await service.http.get("/v1/channels/world/feed.atom")
    assert r.headers["content-type"] == "application/atom+xml; charset=utf-8"
    feed = feedparser.parse(r.content)
    assert not feed.bozo and feed.version == "atom10"
    links = {link.rel: link.href for link in feed.feed.links}
    assert links == {
        "self": f"{service.base}/v1/channels/world/feed.atom",
        "alternate": f"{service.base}/embed/world",
    }
    newest, oldest = feed.entries
    assert newest.id == _brief_uri(service, second) and newest.title == "Typo in headline"
    assert _parsed_epoch(newest.published_parsed) == _epoch(second["time"])
    assert _parsed_epoch(newest.updated_parsed) == int(_epoch(second["updated_at"]))
    assert _parsed_epoch(oldest.updated_parsed) == _epoch(first["time"])
    assert oldest.link == "https://news.example/summit"
    assert feed.feed.author == "ticker"  # RFC 4287: a feed needs an author


async def test_json_feed_is_valid_json_feed_1_1(service: Service) -> None:
    schema = json.loads((CONFORMANCE / "jsonfeed-schema-v1.1.json").read_text())
    first, second, _ = await _three_briefs(service)
    await service.publish("world", "En français", lang="fr", time="2026-02-15T08:00:00+01:00")
    r = await service.http.get("/v1/channels/world/feed.json")
    assert r.headers["content-type"] == "application/feed+json; charset=utf-8"
    feed = r.json()
    jsonschema.validate(feed, schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["feed_url"] == f"{service.base}/v1/channels/world/feed.json"
    french, newest, oldest = feed["items"]
    assert french["language"] == "fr" and french["content_text"] == "En français"
    assert newest == {
        "id": _brief_uri(service, second), "content_text": "Typo in headline",
        "date_published": second["time"], "date_modified": second["updated_at"],
    }
    assert oldest["url"] == "https://news.example/summit" and oldest["tags"] == ["diplomacy"]
    assert oldest["date_published"] == first["time"]


async def test_hostile_text_is_escaped_and_round_trips_in_every_format(service: Service) -> None:
    url = "https://news.example/a?b=1&c=%22x%22&d=<e>"
    brief = await service.publish("world", HOSTILE, url=url, tags=["<b>&"])
    expected = HOSTILE.replace("\ufffe", "")  # not an XML character at all
    assert brief["text"] == HOSTILE

    r = await service.http.get("/v1/channels/world/feed.rss")
    assert b"<script>" not in r.content and b"<![CDATA[ x" not in r.content
    item = ET.fromstring(r.content).find("channel/item")
    assert item is not None
    assert item.findtext("title") == expected and item.findtext("description") == expected
    assert item.findtext("link") == url and item.findtext("category") == "<b>&"
    assert not feedparser.parse(r.content).bozo

    r = await service.http.get("/v1/channels/world/feed.atom")
    entry = ET.fromstring(r.content).find(f"{ATOM}entry")
    assert entry is not None and entry.findtext(f"{ATOM}title") == expected
    link = entry.find(f"{ATOM}link")
    assert link is not None and link.get("href") == url
    assert not feedparser.parse(r.content).bozo

    r = await service.http.get("/v1/channels/world/feed.json")
    (item_json,) = r.json()["items"]
    assert item_json["content_text"] == HOSTILE and item_json["url"] == url


async def test_feeds_answer_etag_with_304_until_something_changes(service: Service) -> None:
    await service.publish("world", "one")
    r = await service.http.get("/v1/channels/world/feed.atom")
    etag = r.headers["etag"]
    again = await service.http.get("/v1/channels/world/feed.atom", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = await service.http.get("/v1/channels/world/feed.rss", headers={"If-None-Match": etag})
    assert other.status_code == 200
    await service.publish("world", "two")
    changed = await service.http.get(
        "/v1/channels/world/feed.atom", headers={"If-None-Match": etag}
    )
    assert changed.status_code == 200 and changed.headers["etag"] != etag


async def test_limit_and_refusals(service: Service) -> None:
    for i in range(5):
        await service.publish("world", f"brief {i}")
    r = await service.http.get("/v1/channels/world/feed.json", params={"limit": "2"})
    assert [i["content_text"] for i in r.json()["items"]] == ["brief 4", "brief 3"]
    cases = [
        ("/v1/channels/world/feed.json?limit=0", 400, "bad-limit"),
        ("/v1/channels/never-used/feed.rss", 404, "not-found"),
        ("/v1/channels/world/feed.xml", 404, "not-found"),
        ("/v1/channels/Bad!/feed.rss", 400, "bad-channel"),
    ]
    for path, status, suffix in cases:
        r = await service.http.get(path)
        assert r.status_code == status, path
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == f"urn:ticker:problem:{suffix}"


async def test_a_byline_is_the_entrys_author_in_every_format(service: Service) -> None:
    """RSS: dc:creator (RSS's own <author> must be an e-mail address); Atom:
    <author><name>; JSON Feed 1.1: authors [{"name"}], valid against its schema. A brief
    without a byline has no author of its own (Atom's falls back to the feed's)."""
    plain = await service.publish("world", "No byline")
    signed = await service.publish("world", "Signed", author="Ana <Pérez> & Co")
    rss_r = await service.http.get("/v1/channels/world/feed.rss")
    assert b"<dc:creator>Ana &lt;P\xc3\xa9rez&gt; &amp; Co</dc:creator>" in rss_r.content
    rss_feed = feedparser.parse(rss_r.content)
    assert not rss_feed.bozo, rss_feed.get("bozo_exception")
    newest, oldest = rss_feed.entries
    assert newest.id.endswith(signed["id"]) and newest.author == "Ana <Pérez> & Co"
    assert oldest.id.endswith(plain["id"]) and "author" not in oldest
    assert b"<author>" not in rss_r.content

    atom_feed = feedparser.parse((await service.http.get("/v1/channels/world/feed.atom")).content)
    assert not atom_feed.bozo
    assert atom_feed.entries[0].author_detail.name == "Ana <Pérez> & Co"

    schema = json.loads((CONFORMANCE / "jsonfeed-schema-v1.1.json").read_text())
    feed = (await service.http.get("/v1/channels/world/feed.json")).json()
    jsonschema.validate(feed, schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    assert feed["items"][0]["authors"] == [{"name": "Ana <Pérez> & Co"}]
    assert "authors" not in feed["items"][1]
