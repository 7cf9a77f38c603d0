"""Private channels in the widget: ``token-url``.

A host site (its own origin, two ports: the page's and an "accounts" origin) serves the
page and a token endpoint that answers only readers with its login cookie, minting each
token with its reader key (``POST /v1/channels/premium/tokens``) and passing ticker's
answer through. The widget must fetch the token with the reader's cookies, subscribe with
it, renew it before it expires without missing or repeating a brief, say clearly when the
reader is not signed in (and recover when they are), poll with ``?token=`` when WebSocket
is blocked, and show a refusal, never a silent empty list, when a private channel is
embedded without a token.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import redis.asyncio as aioredis
from playwright.async_api import expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.browser.conftest import Watch, host_page, items, serve_asgi
from tests.conftest import Service
from ticker.auth import KeyStore

CHANNEL = "premium"
COOKIE = {"name": "session", "value": "reader-1"}
SIGN_IN = "Sign in to follow this live coverage"
PRIVATE = {"en": "This live coverage is private", "fr": "Ce direct est réservé"}


class Site:
    """The site that embeds the widget: its pages and its token endpoint."""

    def __init__(self, svc: Service, reader_key: str) -> None:
        self.svc = svc
        self.reader = svc.auth(reader_key)
        self.pages: dict[str, str] = {}
        self.calls: list[tuple[float, int]] = []  # (when, status) of each token request
        self.tokens: list[str] = []  # every token handed out
        self.ttl = 3600
        self.failing: set[int] = set()  # the token requests (1, 2, ...) that fail with 503
        self.base = self.other = ""

    def add(self, html: str) -> str:
        name = f"p{len(self.pages) + 1}"
        self.pages[name] = html
        return f"{self.base}/{name}"

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self.pages[request.path_params["name"]],
                            headers={"Cache-Control": "no-store"})

    async def token(self, request: Request) -> Response:
        """GET /ticker-token?channel=...[&format=text|bogus]: the site's backend checks
        its own login (a cookie), then asks ticker for a reader token."""
        origin = request.headers.get("origin")
        headers = {"Cache-Control": "no-store"}
        if origin:  # the "accounts" origin answers the page's origin, with credentials
            headers.update({"Access-Control-Allow-Origin": origin,
                            "Access-Control-Allow-Credentials": "true", "Vary": "Origin"})
        if request.cookies.get(COOKIE["name"]) != COOKIE["value"]:
            self.calls.append((time.monotonic(), 401))
            return JSONResponse({"detail": "Sign in first."}, 401, headers=headers)
        fmt = request.query_params.get("format")
        if len(self.calls) + 1 in self.failing:
            self.calls.append((time.monotonic(), 503))
            return JSONResponse({"detail": "Try again later."}, 503, headers=headers)
        self.calls.append((time.monotonic(), 200))
        if fmt == "bogus":  # a site that hands out something that is not a ticker token
            return PlainTextResponse("not-a-ticker-token", headers=headers)
        r = await self.svc.http.post(f"/v1/channels/{request.query_params['channel']}/tokens",
                                     json={"ttl": self.ttl, "sub": "reader-1"}, headers=self.reader)
        assert r.status_code == 201, r.text
        self.tokens.append(r.json()["token"])
        if fmt == "text":
            return PlainTextResponse(self.tokens[-1] + "\n", headers=headers)
        return Response(r.content, media_type="application/json", headers=headers)

    @staticmethod
    async def favicon(request: Request) -> Response:
        return Response(status_code=204)


@pytest.fixture
async def site(svc: Service, redis_client: aioredis.Redis, watch: Watch) -> AsyncIterator[Site]:
    """The private channel 'premium', a reader key for it, and the site that uses it."""
    keys = KeyStore(redis_client)
    admin = await keys.create("boss", ["*"], role="admin", by="test-setup")
    r = await svc.http.put(f"/v1/channels/{CHANNEL}", json={"private": True},
                           headers=svc.auth(admin))
    assert r.status_code == 201, r.text
    s = Site(svc, await keys.create("site", [CHANNEL], role="reader", by="test-setup"))
    app = Starlette(routes=[Route("/favicon.ico", s.favicon), Route("/ticker-token", s.token),
                            Route("/{name}", s.page)])
    async with serve_asgi(app) as (base, _), serve_asgi(app) as (other, _):
        s.base, s.other = base, other
        watch.allowed |= {base, other}
        yield s


async def signed_in(context: Any, site: Site) -> None:
    # Cookies ignore ports: the "accounts" origin gets it too, when the request includes it.
    await context.add_cookies([{**COOKIE, "url": site.base}])


def widget(site: Site, token_url: str | None, **attrs: str) -> str:
    more = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    url = f' token-url="{token_url}"' if token_url is not None else ""
    body = f'<news-ticker id="w" server="{site.svc.base}" channel="{CHANNEL}"{url}{more}></news-ticker>'
    return site.add(host_page(site.svc.base, body, lang=attrs.get("lang", "en")))


async def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def frames(raw: list[str], **match: Any) -> list[dict[str, Any]]:
    found = []
    for f in raw:
        m = json.loads(f)
        if all(m.get(k) == v for k, v in match.items()):
            found.append(m)
    return found


async def test_a_private_channel_shows_its_briefs_with_a_token_from_the_host_site(
    page: Any, context: Any, site: Site, svc: Service, watch: Watch
) -> None:
    """The token endpoint is on another origin than the page (another port): only a
    request with ``credentials: 'include'`` carries the login cookie there."""
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    published = [await svc.publish(CHANNEL, f"For subscribers {i}") for i in range(2)]
    await signed_in(context, site)
    await page.goto(widget(site, f"{site.other}/ticker-token?channel={CHANNEL}"))
    shown = items(page, "#w")
    await expect(shown).to_have_count(2)
    published.append(await svc.publish(CHANNEL, "Live, for subscribers"))
    await expect(shown).to_have_count(3)
    ids = [await shown.nth(i).get_attribute("data-id") for i in range(3)]
    assert ids == [b["id"] for b in reversed(published)]
    await expect(page.locator("#w").get_by_role("log")).to_be_visible()
    await expect(page.locator("#w [part~=status]")).to_have_text("")

    assert [status for _, status in site.calls] == [200] and len(site.tokens) == 1
    token = site.tokens[0]
    subscribes = frames(watch.sent, op="subscribe")
    assert subscribes == [{"op": "subscribe", "channel": CHANNEL, "token": token}], watch.sent
    # The token is in no URL, no console message, and no storage.
    assert not [u for u in watch.requests if token in u], watch.requests
    assert not [m for m in console if token in m]
    assert await page.evaluate("localStorage.length + sessionStorage.length") == 0


async def test_the_token_is_renewed_before_it_expires_and_every_brief_shows_once(
    page: Any, context: Any, site: Site, svc: Service, watch: Watch
) -> None:
    """A 10 s token: ``token-expiring`` comes a second before its end; the widget fetches
    another, unsubscribes and subscribes again from its cursor, while briefs keep coming."""
    site.ttl = 10
    published = [await svc.publish(CHANNEL, "Before the page")]
    await signed_in(context, site)
    await page.goto(widget(site, f"/ticker-token?channel={CHANNEL}", limit="200"))
    shown = items(page, "#w")
    await expect(shown).to_have_count(1)

    stop = asyncio.Event()

    async def publish_on() -> None:
        while not stop.is_set():
            published.append(await svc.publish(CHANNEL, f"Live {len(published)}"))
            await asyncio.sleep(0.25)

    publisher = asyncio.create_task(publish_on())
    try:
        await until(lambda: bool(frames(watch.received, type="subscribed", recovered=True)),
                    "the widget resubscribed with a new token", timeout=30)
        count = len(published)
        await until(lambda: len(published) >= count + 3, "briefs after the renewal")
    finally:
        stop.set()
        await publisher
    published.append(await svc.publish(CHANNEL, "After the renewal"))

    await expect(shown).to_have_count(len(published), timeout=15_000)
    ids = [await shown.nth(i).get_attribute("data-id") for i in range(await shown.count())]
    assert ids == [b["id"] for b in reversed(published)], "every brief once, newest first"

    assert frames(watch.received, type="token-expiring", channel=CHANNEL)
    assert len(site.calls) >= 2 and len(site.tokens) >= 2
    assert {"op": "unsubscribe", "channel": CHANNEL} in frames(watch.sent)
    first, *renewed = frames(watch.sent, op="subscribe")
    assert first == {"op": "subscribe", "channel": CHANNEL, "token": site.tokens[0]}
    again = renewed[0]
    assert again["token"] == site.tokens[1] and again["since"] and again["epoch"], again
    assert len(watch.sockets) == 1, "renewed on the same connection"
    await expect(page.locator("#w [part~=status]")).to_have_text("")


async def test_a_token_that_expires_before_its_renewal_resumes_exactly_with_a_new_one(
    page: Any, context: Any, site: Site, svc: Service, watch: Watch
) -> None:
    """The renewal's token request fails (503), so the subscription ends with
    ``token_expired``; briefs published then arrive once the widget has a new token."""
    site.ttl = 6
    site.failing = {2}
    published = [await svc.publish(CHANNEL, "Before the page")]
    await signed_in(context, site)
    await page.goto(widget(site, f"/ticker-token?channel={CHANNEL}"))
    shown = items(page, "#w")
    await expect(shown).to_have_count(1)
    await until(lambda: bool(frames(watch.received, type="error", code="token_expired")),
                "the token expired", timeout=20)
    published.append(await svc.publish(CHANNEL, "While the subscription is ended"))
    published.append(await svc.publish(CHANNEL, "Also while ended"))
    await expect(shown).to_have_count(3, timeout=15_000)
    published.append(await svc.publish(CHANNEL, "Live again"))
    await expect(shown).to_have_count(4)
    ids = [await shown.nth(i).get_attribute("data-id") for i in range(4)]
    assert ids == [b["id"] for b in reversed(published)]

    assert [s for _, s in site.calls][:3] == [200, 503, 200], site.calls
    first, again = frames(watch.sent, op="subscribe")[:2]
    assert again["token"] == site.tokens[1] != first["token"]
    assert again["since"] == published[0]["id"] and again["epoch"], again
    assert frames(watch.received, type="subscribed", recovered=True)
    assert not frames(watch.sent, op="unsubscribe"), "the subscription had ended: nothing to leave"
    assert len(watch.sockets) == 1
    await expect(page.locator("#w [part~=status]")).to_have_text("")


async def test_a_reader_who_is_not_signed_in_is_told_and_gets_the_feed_after_signing_in(
    page: Any, context: Any, site: Site, svc: Service, watch: Watch
) -> None:
    await svc.publish(CHANNEL, "Behind the paywall")
    await page.goto(widget(site, f"/ticker-token?channel={CHANNEL}"))
    status = page.locator("#w").get_by_role("status")
    await expect(status).to_have_text(SIGN_IN)
    await expect(items(page, "#w")).to_have_count(0)
    # It keeps asking, but never fast: at least a second between two attempts.
    await until(lambda: len(site.calls) >= 2, "a second attempt")
    assert [s for _, s in site.calls[:2]] == [401, 401]
    assert site.calls[1][0] - site.calls[0][0] >= 0.9, site.calls
    assert not watch.sockets, "no connection to ticker without a token"

    await signed_in(context, site)  # as if the reader signed in in another tab
    await expect(items(page, "#w")).to_have_count(1, timeout=20_000)
    await expect(status).to_have_text("")
    assert site.calls[-1][1] == 200
    assert frames(watch.sent, op="subscribe")[0]["token"] == site.tokens[0]


async def test_polling_sends_the_token_in_the_url_and_gets_a_new_one_when_refused(
    page: Any, context: Any, site: Site, svc: Service, watch: Watch
) -> None:
    """WebSocket blocked; the token endpoint answers plain text. The signing secret is
    revoked while the widget polls: 401 token-revoked, a new token, and polling goes on."""
    refused: list[str] = []

    async def refuse(ws: Any) -> None:
        refused.append(ws.url)
        await ws.close(code=1008, reason="blocked")

    await page.route_web_socket(re.compile(r"/v1/ws$"), refuse)
    polls: list[Any] = []
    statuses: list[int] = []
    briefs_url = f"/v1/channels/{CHANNEL}/briefs?"
    page.on("request", lambda r: polls.append(r) if briefs_url in r.url else None)
    page.on("response", lambda r: statuses.append(r.status) if briefs_url in r.url else None)

    published = [await svc.publish(CHANNEL, "Polled with a token")]
    await signed_in(context, site)
    await page.goto(widget(site, f"/ticker-token?channel={CHANNEL}&format=text",
                           poll_interval="1"))
    shown = items(page, "#w")
    await expect(shown).to_have_count(1)
    published.append(await svc.publish(CHANNEL, "Polled again"))
    await expect(shown).to_have_count(2)

    kid = jwt.get_unverified_header(site.tokens[0])["kid"]
    await svc.app.state.services.tokens.revoke(kid, by="test")
    published.append(await svc.publish(CHANNEL, "After the revocation"))
    await expect(shown).to_have_count(3, timeout=20_000)
    ids = [await shown.nth(i).get_attribute("data-id") for i in range(3)]
    assert ids == [b["id"] for b in reversed(published)]
    await expect(page.locator("#w [part~=status]")).to_have_text("")

    assert 401 in statuses, statuses
    assert len(site.tokens) >= 2
    assert refused and not watch.received, "WebSocket was blocked: every brief came by polling"
    for request in polls:
        assert "&token=" in request.url, request.url
        assert "authorization" not in await request.all_headers()
    tokens_seen = {parse_qs(urlsplit(r.url).query)["token"][0] for r in polls}
    assert tokens_seen <= set(site.tokens) and len(tokens_seen) >= 2
    # No URL but the polls' carries a token.
    assert not [u for u in watch.requests
                if briefs_url not in u and any(t in u for t in site.tokens)], watch.requests


@pytest.mark.parametrize("lang", ["en", "fr"])
async def test_a_private_channel_without_token_url_shows_that_it_is_private(
    page: Any, site: Site, svc: Service, watch: Watch, lang: str
) -> None:
    await svc.publish(CHANNEL, "Not for this page")
    await page.goto(widget(site, None, lang=lang))
    await expect(page.locator("#w").get_by_role("status")).to_have_text(PRIVATE[lang])
    await expect(items(page, "#w")).to_have_count(0)
    assert frames(watch.received, type="error", code="token_required", channel=CHANNEL)
    assert frames(watch.sent, op="subscribe") == [{"op": "subscribe", "channel": CHANNEL}]
    assert not site.calls


async def test_a_token_the_service_refuses_is_not_retried_fast(
    page: Any, context: Any, site: Site, svc: Service, watch: Watch
) -> None:
    """The site hands out something ticker refuses (invalid_token) although it was just
    fetched: the widget says the coverage is private and waits long before trying again."""
    await svc.publish(CHANNEL, "Never shown")
    await signed_in(context, site)
    await page.goto(widget(site, f"/ticker-token?channel={CHANNEL}&format=bogus"))
    await expect(page.locator("#w").get_by_role("status")).to_have_text(PRIVATE["en"])
    assert frames(watch.received, type="error", code="invalid_token", channel=CHANNEL)
    assert frames(watch.sent, op="subscribe")[0]["token"] == "not-a-ticker-token"
    await asyncio.sleep(1.5)  # a window in which a fast retry would show
    assert len(site.calls) == 1 and len(frames(watch.sent, op="subscribe")) == 1
    await expect(items(page, "#w")).to_have_count(0)
