"""The ``<news-ticker>`` widget and the pages around it. See docs/widget.md.

- ``GET /widget.js``: the widget, revalidated on every use (ETag, ``no-cache``);
  ``GET /widget.<version>.js`` and ``/widget.js?v=<version>``: the same bytes cached for a
  year (``immutable``). The version is a digest of the file, so it changes with the file.
- ``GET /embed/{channel}``: the same list rendered on the server (no JavaScript needed),
  with schema.org ``LiveBlogPosting`` JSON-LD and the cursor, which the widget upgrades in
  place and resumes from. ``?fragment=1`` gives only the element, for server-side includes.
- ``GET /demo``: both widget modes live and a form to publish, under a strict CSP.
- Absolute URLs (the ``server`` attribute, the script, the canonical link) start with the
  setting ``public_url``; without it they come from the request's Host, and the pages are
  then ``private`` to caches (docs/api.md, "Caches and public_url").
- CORS on the public reads (``GET /v1/channels...`` of routes/briefs.py), for the widget's
  polling fallback from other sites: ``public_reads`` below, listed before those routes.

The single source of the widget is ``ticker/static/news-ticker.js`` (package data).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import gzip
import hashlib
import html
import string
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Message, Receive, Scope, Send

from ticker import access, answers, views
from ticker.auth import origin_allowed
from ticker.errors import ProblemError
from ticker.http import base_url, etag_matches, link_cache_control, query_limit
from ticker.models import LANG_RE, check_channel
from ticker.routes import briefs, channels
from ticker.services import Services
from ticker.store import Snapshot

NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
EMBED_MAX_AGE = "public, max-age=10"
DEFAULT_LIMIT = 20


@dataclasses.dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes
    version: str  # hex digest prefix: the versioned URL and the ETag
    media_type: str


@functools.cache
def asset(name: str) -> Asset:
    """A file of ticker/static, read once, with its gzip form and version."""
    body = (resources.files("ticker") / "static" / name).read_bytes()
    version = hashlib.sha256(body).hexdigest()[:16]
    media = {
        "js": "text/javascript; charset=utf-8",
        "css": "text/css; charset=utf-8",
        "html": "text/html; charset=utf-8",
    }[name.rsplit(".", 1)[1]]
    return Asset(body, gzip.compress(body, 9, mtime=0), version, media)


def widget_version() -> str:
    return asset("news-ticker.js").version


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def serve_asset(request: Request, name: str, cache_control: str) -> Response:
    """A static file with an ETag, gzip when accepted, and 304 when unchanged."""
    a = asset(name)
    gz = _accepts_gzip(request)
    etag = f'"{a.version}-gz"' if gz else f'"{a.version}"'
    headers = {
        "ETag": etag,
        "Cache-Control": cache_control,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
        # Loaded by other sites, also with crossorigin="anonymous" or under COEP.
        "Access-Control-Allow-Origin": "*",
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if etag_matches(request, etag):
        return Response(status_code=304, headers=headers)
    if gz:
        headers["Content-Encoding"] = "gzip"
    return Response(a.gzipped if gz else a.body, headers=headers, media_type=a.media_type)


async def widget_js(request: Request) -> Response:
    version = request.path_params.get("version") or request.query_params.get("v")
    # An unknown version (an older release, say) still gets today's widget, not cached long.
    current = version == widget_version()
    return serve_asset(request, "news-ticker.js", IMMUTABLE if current else NO_CACHE)


async def demo_js(request: Request) -> Response:
    return serve_asset(request, "demo.js", NO_CACHE)


async def demo_css(request: Request) -> Response:
    return serve_asset(request, "demo.css", NO_CACHE)


# Pages


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _server(request: Request) -> str:
    return base_url(request, _services(request).settings.public_url)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json_ld(data: Any) -> str:
    """JSON for a <script type="application/ld+json"> block: nothing can close the tag."""
    text = orjson.dumps(data).decode()
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _lang(raw: str | None, default: str | None = None) -> str:
    """The page's language: ``?lang=``, else the channel's, else English."""
    if raw and len(raw) <= 35 and LANG_RE.fullmatch(raw):
        return raw
    if raw:
        raise ProblemError(
            "Query parameter 'lang' must be a language tag such as 'fr' or 'en-US'.",
            type_suffix="bad-lang", field="lang",
        )
    return default or "en"


def _zone(raw: str | None) -> ZoneInfo | None:
    if not raw:
        return None
    try:
        return ZoneInfo(raw)
    except (ValueError, OSError, KeyError):
        raise ProblemError(
            "Query parameter 'tz' must be an IANA time zone such as 'Europe/Paris', "
            f"not {raw[:60]!r}.",
            type_suffix="bad-time-zone", field="tz",
        ) from None


def short_date(time: str, lang: str, zone: ZoneInfo | None) -> str:
    """"14/02" (day/month), or "02/14" for US English, as the widget's Intl formatter does
    for these languages. The widget reformats with Intl for every other locale."""
    try:
        dt = datetime.fromisoformat(time.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if zone is not None:
        dt = dt.astimezone(zone)
    us = lang.lower() in ("en", "en-us") or lang.lower().startswith("en-us-")
    return dt.strftime("%m/%d" if us else "%d/%m")


def _safe_url(url: Any) -> str | None:
    if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
        return url
    return None


def _render_item(brief: dict[str, Any], lang: str, zone: ZoneInfo | None) -> str:
    urgent = int(brief.get("urgency") or 5) <= 2
    classes = " ".join(c for c, on in (("urgent", urgent), ("pinned", brief.get("pinned"))) if on)
    attrs = (
        f' data-id="{_e(brief["id"])}" data-version="{_e(brief.get("version", 1))}"'
        f' data-urgency="{_e(brief.get("urgency", 5))}"'
        f' data-pinned="{"true" if brief.get("pinned") else "false"}"'
    )
    if classes:
        attrs += f' class="{classes}"'
    if brief.get("lang"):
        attrs += f' lang="{_e(brief["lang"])}"'
    author = brief.get("author")
    if author:
        attrs += f' data-author="{_e(author)}"'
    time = brief.get("time") or ""
    text = _e(brief.get("text", ""))
    url = _safe_url(brief.get("url"))
    inner = f'<a href="{_e(url)}" rel="noopener">{text}</a>' if url else text
    badge = '<strong class="badge">Urgent</strong> ' if urgent else ""
    french = lang.lower().startswith("fr")
    corrected = "corrigé" if french else "corrected"
    mark = f' <small class="mark">{corrected}</small>' if int(brief.get("version") or 1) > 1 else ""
    by = f' <span class="by">{"par" if french else "by"} <bdi>{_e(author)}</bdi></span>' if author else ""
    return (
        f'<li{attrs}><time datetime="{_e(time)}">{_e(short_date(time, lang, zone))}</time> '
        f'{badge}<span class="nt-text" dir="auto">{inner}</span>{by}{mark}</li>'
    )


def _ordered(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Newest first (as the snapshot is), pinned briefs on top, as the widget shows them.
    return sorted(items, key=lambda b: not b.get("pinned"))


EMBED_CSS = (
    "body{margin:0;font:16px/1.4 system-ui,sans-serif;color:#1a1a1a;background:#fff}"
    "news-ticker{display:block}ol{list-style:none;margin:0;padding:0}"
    "li{padding:.4em .6em;border-top:1px solid #e2e2e2}time{font-weight:700;margin-right:.5em}"
    "a{color:inherit}.urgent time,.badge{color:#b00020}"
    ".badge{font-size:.75em;text-transform:uppercase}"
    ".pinned{background:#f1f4f9}.mark,.by{color:#595959}.by{font-size:.8em}"
)
EMBED_CSS_HASH = base64.b64encode(hashlib.sha256(EMBED_CSS.encode()).digest()).decode()
EMBED_CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; "
    f"style-src 'sha256-{EMBED_CSS_HASH}'; base-uri 'none'; form-action 'none'"
)


async def embed(request: Request) -> Response:
    """The channel's page (or, with ``?fragment=1``, its ``<news-ticker>`` element alone),
    rendered once per change of the channel and of the options (``ticker.views``), with
    an ETag so that a cache or a browser revalidates it with ``304``."""
    s = _services(request)
    channel = check_channel(request.path_params["channel"])
    q = request.query_params
    state = await access.followed(request, channel)
    # The channel's defaults (ticker.channels) where the query says nothing.
    info = await s.hub.channel_info(state)
    lang = _lang(q.get("lang"), info.lang)
    tz_name = q.get("tz") or q.get("time-zone") or info.time_zone
    zone = _zone(tz_name)
    limit = query_limit(request, min(DEFAULT_LIMIT, s.settings.list_max_limit), s.settings.list_max_limit)
    mode = q.get("mode")
    if mode not in (None, "list", "crawl"):
        raise ProblemError(
            "Query parameter 'mode' must be 'list' or 'crawl'.",
            type_suffix="bad-mode", field="mode",
        )
    fragment = q.get("fragment") in ("1", "true")
    server = _server(request)
    title = info.title or f"Live: {channel}"
    options = (limit, lang, tz_name, mode, fragment, server, widget_version(), title)

    def build(snapshot: Snapshot) -> views.Rendered:
        page = _page(snapshot, server, lang, tz_name, zone, limit, mode, fragment, title)
        etag = views.etag("embed", options, snapshot)
        return views.Rendered(etag, page.encode(), snapshot.cursor, snapshot.epoch)

    page = await views.render(s.hub, state, ("embed", *options), limit, build)
    answers.offer(request, state, page.cursor)
    headers = {
        "ETag": page.etag,
        "Cache-Control": link_cache_control(s.settings.public_url, EMBED_MAX_AGE),
        "Access-Control-Allow-Origin": "*",
    }
    if not fragment:
        headers["Content-Security-Policy"] = EMBED_CSP
    if etag_matches(request, page.etag):
        return Response(status_code=304, headers=headers)
    return Response(page.body, headers=headers, media_type="text/html; charset=utf-8")


def _page(
    snapshot: Snapshot, server: str, lang: str, tz_name: str | None, zone: ZoneInfo | None,
    limit: int, mode: str | None, fragment: bool, title: str,
) -> str:
    """The channel's page, or its element alone (``fragment``); ``title``: the channel's,
    or "Live: <channel>"."""
    channel = snapshot.channel
    items = _ordered([orjson.loads(b) for b in snapshot.briefs])
    script = f"{server}/widget.{widget_version()}.js"

    attrs = (
        f'server="{_e(server)}" channel="{_e(channel)}" lang="{_e(lang)}" limit="{limit}"'
        f' label="{_e(title)}" data-cursor="{_e(snapshot.cursor)}" data-epoch="{_e(snapshot.epoch)}"'
    )
    if tz_name:
        attrs += f' time-zone="{_e(tz_name)}"'
    if mode == "crawl":
        attrs += ' mode="crawl"'
    body = "\n".join(_render_item(b, lang, zone) for b in items)
    element = (
        f'<news-ticker {attrs}>\n<ol class="news-ticker-list">\n{body}\n</ol>\n</news-ticker>\n'
        f'<script async src="{_e(script)}"></script>\n'
    )
    if fragment:
        return element

    page_url = f"{server}/embed/{channel}"
    ld: dict[str, Any] = {
        "@context": "https://schema.org",
        "@type": "LiveBlogPosting",
        "headline": title,
        "url": page_url,
        "inLanguage": lang,
        "liveBlogUpdate": [
            {
                "@type": "BlogPosting",
                "identifier": b["id"],
                "headline": b["text"][:110],
                "articleBody": b["text"],
                "datePublished": b["time"],
                **({"dateModified": b["updated_at"]} if b.get("updated_at") else {}),
                **({"url": b["url"]} if _safe_url(b.get("url")) else {}),
                **({"inLanguage": b["lang"]} if b.get("lang") else {}),
            }
            for b in items
        ],
    }
    if items:
        times = sorted(b["time"] for b in items)
        ld["coverageStartTime"] = times[0]
        ld["dateModified"] = max(b.get("updated_at") or b["time"] for b in items)
    page = (
        f'<!doctype html>\n<html lang="{_e(lang)}">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{EMBED_CSS}</style>\n"
        f'<link rel="canonical" href="{_e(page_url)}">\n'
        f'<script type="application/ld+json">{_json_ld(ld)}</script>\n'
        f"</head>\n<body>\n{element}</body>\n</html>\n"
    )
    return page


DEMO_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


async def demo(request: Request) -> Response:
    channel = check_channel(request.query_params.get("channel") or "demo")
    template = string.Template(asset("demo.html").body.decode())
    server = _server(request)
    version = widget_version()
    page = template.substitute(
        channel=_e(channel),
        server=_e(server),
        widget=_e(f"/widget.{version}.js"),
        demo_js=_e(f"/demo.js?v={asset('demo.js').version}"),
        demo_css=_e(f"/demo.css?v={asset('demo.css').version}"),
        snippet=_e(
            f'<script async src="{server}/widget.{version}.js"></script>\n'
            f'<news-ticker server="{server}" channel="{channel}" lang="fr" '
            'time-zone="Europe/Paris"></news-ticker>'
        ),
    )
    cache = link_cache_control(_services(request).settings.public_url, NO_CACHE)
    headers = {"Content-Security-Policy": DEMO_CSP, "Cache-Control": cache,
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
    return Response(page, headers=headers, media_type="text/html; charset=utf-8")


# CORS for the public reads, used by the widget's polling fallback from other sites.


class PublicReads(BaseRoute):
    """``Access-Control-Allow-Origin`` on the GET (and HEAD) answers of other routes.

    It matches only GET/HEAD requests that one of ``routes`` matches fully, hands them to
    that route, and adds the header as the answer starts (problem answers included, since
    Starlette handles route errors inside the route). Other methods never match here, so
    the routes' own 405 answers and Allow headers are untouched. Only simple GETs, so no
    preflight is involved. The origin policy is the setting ``allowed_origins``.
    """

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = routes

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return Match.NONE, {}
        for route in self.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return Match.FULL, {**child, "ticker.cors_route": route}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: BaseRoute = scope["ticker.cors_route"]
        allowed = scope["app"].state.services.settings.allowed_origins
        origin = Headers(scope=scope).get("origin")
        value = "*" if "*" in allowed else None
        if value is None and origin and origin_allowed(origin, allowed):
            value = origin

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and value is not None:
                headers = MutableHeaders(scope=message)
                headers["Access-Control-Allow-Origin"] = value
                if value != "*":
                    headers.add_vary_header("Origin")
            await send(message)

        await route.handle(scope, receive, send_with_cors)


routes = [
    Route("/widget.js", widget_js, methods=["GET"]),
    Route("/widget.{version}.js", widget_js, methods=["GET"]),
    Route("/embed/{channel}", access.guarded(embed), methods=["GET"]),
    Route("/demo", demo, methods=["GET"]),
    Route("/demo.js", demo_js, methods=["GET"]),
    Route("/demo.css", demo_css, methods=["GET"]),
]
# Listed before briefs.routes (ticker.app). (GET /v1/audit needs an admin key: no CORS.)
public_reads = PublicReads([*briefs.routes, channels.routes[0]])
