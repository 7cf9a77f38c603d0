"""Resilience: a server restart while briefs are published, a WebSocket that cannot connect,
and the connection check when the page comes back online."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import expect
from starlette.types import Receive, Scope, Send

from tests.browser.conftest import HostPages, Watch, host_page, items, serve_asgi, wait_ready
from tests.conftest import Service, run_service, tcp_socket
from ticker.config import Settings


def same_port(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def test_restart_while_publishing_shows_every_brief_exactly_once(
    page: Any, host: HostPages, svc: Service, settings: Settings, watch: Watch
) -> None:
    """The widget talks to node A; briefs go in through node B (same Redis). A is stopped
    (its subscribers get 1012) and started again on the same port while B publishes."""
    publisher = svc
    sock = tcp_socket()
    port = sock.getsockname()[1]
    node = contextlib.AsyncExitStack()
    a = await node.enter_async_context(run_service(settings, sock))
    watch.allowed.add(a.base)
    published: list[dict[str, Any]] = []

    async def publish(n: int, label: str) -> None:
        for i in range(n):
            published.append(await publisher.publish("world", f"{label} {i}"))

    try:
        await publish(2, "before the page")
        body = f'<news-ticker id="w" server="{a.base}" channel="world" limit="50"></news-ticker>'
        await page.goto(host.add(host_page(a.base, body)))
        shown = items(page, "#w")
        await expect(shown).to_have_count(2)
        await publish(3, "live")
        await expect(shown).to_have_count(5)

        await node.aclose()  # node A stops: 1012 to the widget
        await publish(4, "while down")
        await expect(page.locator("#w [part=status]")).to_have_text("Offline", timeout=15_000)
        await expect(shown).to_have_count(5)

        node = contextlib.AsyncExitStack()
        await node.enter_async_context(run_service(settings, same_port(port)))
        await publish(4, "during the restart")
        await expect(shown).to_have_count(len(published), timeout=20_000)
        await expect(page.locator("#w [part=status]")).to_have_text("")
        await publish(1, "after")
        await expect(shown.first).to_contain_text("after 0")

        ids = [await shown.nth(i).get_attribute("data-id") for i in range(await shown.count())]
        assert ids == [b["id"] for b in reversed(published)], "every brief once, newest first"
        texts = await shown.locator("[part~=text]").all_text_contents()
        assert texts == [b["text"] for b in reversed(published)]
        # It came back over WebSocket and resumed from its cursor.
        resumed = [json.loads(f) for f in watch.sent if '"since"' in f]
        assert resumed, watch.sent
        assert len(watch.sockets) >= 2 and not watch.sockets[-1].is_closed()
    finally:
        await node.aclose()


class RefusingProxy:
    """A proxy that forwards plain HTTP to the service but refuses WebSocket upgrades,
    like a corporate proxy that blocks them (the handshake gets HTTP 403)."""

    def __init__(self, upstream: str) -> None:
        self.client = httpx.AsyncClient(base_url=upstream, timeout=10)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        assert scope["type"] == "http"
        query = scope["query_string"].decode()
        r = await self.client.get(scope["path"] + (f"?{query}" if query else ""))
        keep = ("content-type", "access-control-allow-origin", "cache-control")
        headers = [(k.encode(), v.encode()) for k, v in r.headers.items() if k.lower() in keep]
        await send({"type": "http.response.start", "status": r.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": r.content})


@contextlib.asynccontextmanager
async def refusing_proxy(upstream: str) -> AsyncIterator[str]:
    proxy = RefusingProxy(upstream)
    try:
        async with serve_asgi(proxy) as (base, _):
            yield base
    finally:
        await proxy.client.aclose()


@pytest.mark.parametrize("blocker", ["proxy", "route"])
async def test_websocket_blocked_falls_back_to_polling(
    page: Any, host: HostPages, svc: Service, watch: Watch, blocker: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        server = svc.base
        refused: list[str] = []
        if blocker == "proxy":
            server = await stack.enter_async_context(refusing_proxy(svc.base))
            watch.allowed.add(server)
        else:

            async def refuse(ws: Any) -> None:
                refused.append(ws.url)
                await ws.close(code=1008, reason="blocked")

            await page.route_web_socket(re.compile(r"/v1/ws$"), refuse)

        first = await svc.publish("world", "Delivered by polling")
        body = (
            f'<news-ticker id="w" server="{server}" channel="world" lang="fr" '
            'poll-interval="1"></news-ticker>'
        )
        await page.goto(host.add(host_page(server, body)))
        shown = items(page, "#w")
        await expect(shown).to_have_count(1)
        second = await svc.publish("world", "Published later, still delivered")
        await expect(shown).to_have_count(2)
        await expect(shown.first).to_have_attribute("data-id", second["id"])

        r = await svc.http.patch(
            f"/v1/channels/world/briefs/{first['id']}",
            json={"text": "Corrigé par sondage"},
            headers=svc.auth(),
        )
        assert r.status_code == 200
        corrected = page.locator(f'#w li[data-id="{first["id"]}"]')
        await expect(corrected.locator("[part~=text]")).to_have_text("Corrigé par sondage")
        await expect(corrected.locator("[part=mark]")).to_have_text("corrigé")
        r = await svc.http.delete(f"/v1/channels/world/briefs/{second['id']}", headers=svc.auth())
        assert r.status_code == 204
        await expect(shown).to_have_count(1)
        # Polling works, so the reader is not told it is offline.
        await expect(page.locator("#w [part=status]")).to_have_text("")

        polls = [u for u in watch.requests if "/v1/channels/world/briefs?limit=" in u]
        assert len(polls) >= 3, watch.requests
        # The first poll takes the list; the next ones only what followed their cursor.
        assert "since=" not in polls[0] and all("&since=" in u for u in polls[1:]), polls
        assert watch.sockets or refused, "it tried WebSocket first"
        assert not watch.received, "no WebSocket message ever arrived"


async def test_coming_back_online_checks_the_connection_at_once(
    page: Any, host: HostPages, svc: Service, watch: Watch
) -> None:
    body = f'<news-ticker id="w" server="{svc.base}" channel="world"></news-ticker>'
    await page.goto(host.add(host_page(svc.base, body)))
    await wait_ready(page, "#w")
    assert len(watch.sockets) == 1
    sent = len(watch.sent)

    await page.evaluate("dispatchEvent(new Event('online'))")
    # A probe on the open socket, answered at once: the socket is alive, so it stays.
    for _ in range(100):
        if '{"type":"pong"}' in watch.received:
            break
        await asyncio.sleep(0.05)
    assert '{"type":"pong"}' in watch.received, watch.received
    assert len(watch.sent) == sent + 1 and watch.sent[-1] == '{"op":"ping"}'

    await page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    for _ in range(100):
        if len(watch.sent) == sent + 2:
            break
        await asyncio.sleep(0.05)
    assert len(watch.sent) == sent + 2
    await svc.publish("world", "Still live after the checks")
    await expect(items(page, "#w")).to_have_count(1)
    assert len(watch.sockets) == 1 and not watch.sockets[0].is_closed()
