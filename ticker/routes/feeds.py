"""Feeds of a channel's latest briefs: RSS 2.0, Atom (RFC 4287) and JSON Feed 1.1.

    GET /v1/channels/{channel}/feed.rss    application/rss+xml
    GET /v1/channels/{channel}/feed.atom   application/atom+xml
    GET /v1/channels/{channel}/feed.json   application/feed+json

The briefs are those of ``GET .../briefs`` (newest first, corrections applied, retracted
ones left out; ``?limit=`` as there). RSS and Atom are written by feedgen (lxml), which
escapes the text; characters that XML 1.0 cannot carry at all (U+FFFE, U+FFFF) are
dropped from the XML feeds. The feed's home is the channel's page ``/embed/{channel}``;
each entry's id is the brief's URL in this API, stable across corrections, and its link
is the brief's own ``url`` when it has one. A brief's byline (``author``) is the entry's
author: ``dc:creator`` in RSS (whose own ``<author>`` must be an e-mail address),
``<author><name>`` in Atom, ``authors: [{"name"}]`` in JSON Feed. The ETag is the channel's
cursor (and a digest of the links' base), so a poller that sends ``If-None-Match`` gets
304 until something changes.

The feed's title is the channel's (``ticker.channels``; "ticker: <channel>" without one),
its language the channel's, and its dates are written with the offset of the channel's
time zone when it has one (the same instants).

Absolute links start with the setting ``public_url``; without it they come from the
request's Host, and the feed is then ``private`` so that no shared cache keeps one
client's Host for everybody (docs/api.md, "Caches and public_url").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from feedgen.feed import FeedGenerator  # type: ignore[import-untyped]
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ticker import access, answers, views
from ticker.channels import ChannelInfo
from ticker.errors import ProblemError
from ticker.http import (
    base_url,
    etag_matches,
    last_modified,
    link_cache_control,
    not_modified_since,
    query_limit,
)
from ticker.models import Brief, check_channel
from ticker.services import Services
from ticker.store import Snapshot

RSS_TYPE = "application/rss+xml; charset=utf-8"
ATOM_TYPE = "application/atom+xml; charset=utf-8"
JSON_FEED_TYPE = "application/feed+json; charset=utf-8"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
GENERATOR = "ticker"
# Characters outside XML 1.0's Char production (brief validation already refuses C0/C1
# controls; these two noncharacters are the rest that JSON can carry).
_NOT_XML = re.compile("[\ufffe\uffff]")


def _xml_text(value: str) -> str:
    return _NOT_XML.sub("", value)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _updated(brief: Brief) -> datetime:
    return _time(brief["updated_at"] or brief["time"])


class _Feed:
    """What every format needs: the briefs, the URLs, and when the feed last changed."""

    def __init__(
        self, base: str, channel: str, fmt: str, snapshot: Snapshot, info: ChannelInfo
    ) -> None:
        self.channel = channel
        self.briefs: list[Brief] = [orjson.loads(b) for b in snapshot.briefs]
        # The channel's defaults (ticker.channels): its title, language and time zone.
        self.title = info.title or f"ticker: {channel}"
        self.lang = info.lang
        self.zone = ZoneInfo(info.time_zone) if info.time_zone else None
        self.description = f"The latest briefs of the {channel} channel."
        # The channel's page (server-rendered HTML, see routes/widget.py) is the feed's home;
        # each brief's id is its resource in the JSON API.
        self.home = f"{base}/embed/{channel}"
        self.briefs_url = f"{base}/v1/channels/{channel}/briefs"
        self.self_url = f"{base}/v1/channels/{channel}/feed.{fmt}"
        self.updated = self.local(max(
            (_updated(b) for b in self.briefs), default=datetime.fromtimestamp(0, UTC)
        ))

    def local(self, when: datetime) -> datetime:
        """The same instant, written with the channel's time zone's offset (if any)."""
        return when.astimezone(self.zone) if self.zone is not None else when

    def brief_uri(self, brief: Brief) -> str:
        return f"{self.briefs_url}/{brief['id']}"


def _generator(feed: _Feed) -> FeedGenerator:
    fg = FeedGenerator()
    fg.load_extension("dc", atom=False, rss=True)  # dc:creator, for RSS's bylines
    fg.id(feed.briefs_url)
    fg.title(_xml_text(feed.title))
    fg.description(_xml_text(feed.description))
    fg.author({"name": GENERATOR})
    fg.link(href=feed.self_url, rel="self")
    fg.link(href=feed.home, rel="alternate")  # last: feedgen gives RSS's <link> the last one
    fg.generator(GENERATOR)
    if feed.lang:
        fg.language(feed.lang)
    fg.updated(feed.updated)
    fg.lastBuildDate(feed.updated)
    for brief in feed.briefs:
        text = _xml_text(brief["text"])
        entry = fg.add_entry(order="append")  # briefs come newest first
        entry.id(feed.brief_uri(brief))
        entry.guid(feed.brief_uri(brief), permalink=False)
        entry.title(text)
        entry.description(text)
        entry.published(feed.local(_time(brief["time"])))
        entry.updated(feed.local(_updated(brief)))
        if brief.get("url"):
            entry.link(href=brief["url"], rel="alternate")
        for tag in brief.get("tags") or []:
            entry.category(term=_xml_text(tag))
        if brief.get("author"):
            byline = _xml_text(brief["author"])
            entry.author({"name": byline})  # Atom (RSS's needs an e-mail address)
            entry.dc.dc_creator(byline)  # RSS
    return fg


def rss(feed: _Feed) -> bytes:
    data: bytes = _generator(feed).rss_str(pretty=False)
    return data


def atom(feed: _Feed) -> bytes:
    data: bytes = _generator(feed).atom_str(pretty=False)
    return data


def json_feed(feed: _Feed) -> bytes:
    items: list[dict[str, Any]] = []
    for brief in feed.briefs:
        item: dict[str, Any] = {
            "id": feed.brief_uri(brief),
            "content_text": brief["text"],
            "date_published": brief["time"],
        }
        if brief.get("url"):
            item["url"] = brief["url"]
        if brief.get("updated_at"):
            item["date_modified"] = brief["updated_at"]
        if brief.get("tags"):
            item["tags"] = brief["tags"]
        if brief.get("lang"):
            item["language"] = brief["lang"]
        if brief.get("author"):
            item["authors"] = [{"name": brief["author"]}]
        items.append(item)
    return orjson.dumps({
        "version": JSON_FEED_VERSION,
        "title": feed.title,
        **({"language": feed.lang} if feed.lang else {}),
        "description": feed.description,
        "home_page_url": feed.home,
        "feed_url": feed.self_url,
        "authors": [{"name": GENERATOR}],
        "items": items,
    })


_FORMATS: dict[str, tuple[Callable[[_Feed], bytes], str]] = {
    "rss": (rss, RSS_TYPE),
    "atom": (atom, ATOM_TYPE),
    "json": (json_feed, JSON_FEED_TYPE),
}


async def feed_endpoint(request: Request) -> Response:
    """A feed, rendered once per change of the channel (``ticker.views``).

    ``ETag`` and ``Last-Modified`` (when the channel last changed) let a feed reader or a
    cache ask again cheaply: ``If-None-Match`` (which wins, as RFC 9110 says) or
    ``If-Modified-Since`` gets ``304`` while nothing changed."""
    services: Services = request.app.state.services
    settings = services.settings
    channel = check_channel(request.path_params["channel"])
    fmt = request.url.path.rsplit(".", 1)[1]
    limit = query_limit(request, settings.snapshot_size, settings.list_max_limit)
    base = base_url(request, settings.public_url)
    state = await access.followed(request, channel)
    info = await services.hub.channel_info(state)

    def build(snapshot: Snapshot) -> views.Rendered:
        # The links are part of the representation: a copy made for another base never
        # revalidates as this one; and so are the channel's defaults.
        links = hashlib.sha256(f"{base}\0{info}".encode()).hexdigest()[:8]
        etag = f'"{fmt}-{limit}-{snapshot.epoch}-{snapshot.cursor}-{links}"'
        body = (_FORMATS[fmt][0](_Feed(base, channel, fmt, snapshot, info))
                if snapshot.epoch else b"")
        return views.Rendered(etag, body, snapshot.cursor, snapshot.epoch)

    feed = await views.render(services.hub, state, ("feed", fmt, limit, base, info), limit, build)
    if not feed.epoch:
        raise ProblemError(
            f"Channel {channel!r} has no briefs yet: its feed exists once something is "
            "published to it.",
            status=404, title="Not Found", type_suffix="not-found",
        )
    headers = {
        "ETag": feed.etag,
        "Cache-Control": link_cache_control(settings.public_url, "public, max-age=30"),
    }
    modified = last_modified(feed.cursor)
    if modified is not None:
        headers["Last-Modified"] = modified
        # Kept whole once its Last-Modified is there to stay (ticker.answers).
        answers.offer(request, state, feed.cursor)
    if etag_matches(request, feed.etag) or not_modified_since(request, feed.cursor):
        return Response(status_code=304, headers=headers)
    return Response(feed.body, headers=headers, media_type=_FORMATS[fmt][1])


routes = [
    Route(f"/v1/channels/{{channel}}/feed.{fmt}", access.guarded(feed_endpoint), methods=["GET"])
    for fmt in _FORMATS
]
