"""Browser tests of the <news-ticker> widget: Debian's Chromium driven by Playwright.

The service runs for real (uvicorn, the packaged Redis), and the pages that embed the
widget come from a host server on another port, so the widget always works cross-origin
as on a real site. Nothing is skipped: without Chromium, Playwright or axe-core the tests
fail and say what to install (``scripts/install`` does it for CI).

Every page is watched: a request to any origin but the service and the host page fails
the test, and so does an uncaught error in the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.conftest import Service, start_uvicorn, tcp_socket

CHROMIUM = os.environ.get("TICKER_CHROMIUM", "/usr/bin/chromium")
# The flags that work on these machines (no sandbox as root; no background traffic).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
TIMEOUT_MS = 10_000


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail(
            "The browser tests need the Python package 'playwright' "
            "(pip install playwright; never 'playwright install': the tests use Debian's Chromium)."
        )
    path = CHROMIUM if os.path.isabs(CHROMIUM) else shutil.which(CHROMIUM)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: run 'apt-get install -y chromium' "
            "(scripts/install does), or point TICKER_CHROMIUM at a Chromium binary."
        )
    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE.exists():
        pytest.fail(
            f"axe-core is not installed ({AXE} is missing): run 'npm ci --prefix tests/browser'."
        )
    return AXE.read_text()


class HostPages:
    """A web server on its own port: the site that embeds the widget."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[str, dict[str, str]]] = {}
        self.base = ""
        self._count = 0

    def add(self, html: str, headers: dict[str, str] | None = None) -> str:
        self._count += 1
        name = f"p{self._count}"
        self.pages[name] = (html, headers or {})
        return f"{self.base}/{name}"

    async def page(self, request: Request) -> Response:
        html, headers = self.pages[request.path_params["name"]]
        return HTMLResponse(html, headers={"Cache-Control": "no-store", **headers})

    @staticmethod
    async def favicon(request: Request) -> Response:
        return Response(status_code=204)


@contextlib.asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Any ASGI app in uvicorn on a free loopback port, in this event loop."""
    sock = tcp_socket()
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
    server = uvicorn.Server(config)
    task = await start_uvicorn(server, sock)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture(scope="session")
async def host() -> AsyncIterator[HostPages]:
    pages = HostPages()
    app = Starlette(
        routes=[
            Route("/favicon.ico", pages.favicon),
            Route("/{name}", pages.page),
        ]
    )
    async with serve_asgi(app) as (base, _):
        pages.base = base
        yield pages


@pytest.fixture
async def svc(serve_with: Callable[..., Any]) -> AsyncIterator[Service]:
    """The ticker service, with an API key, on a fresh Redis database."""
    async with serve_with() as service:
        yield service


@dataclass
class Watch:
    """What a page did: requests, WebSocket frames, errors."""

    allowed: set[str]
    requests: list[str] = field(default_factory=list)
    sockets: list[Any] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def on_socket(self, ws: Any) -> None:
        self.sockets.append(ws)
        self.requests.append(ws.url)
        ws.on("framesent", lambda payload: self.sent.append(str(payload)))
        ws.on("framereceived", lambda payload: self.received.append(str(payload)))

    def foreign(self) -> list[str]:
        def origin(url: str) -> str:
            parts = urlsplit(url)
            scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
            return f"{scheme}://{parts.netloc}"

        return [
            u for u in self.requests if origin(u) not in self.allowed and not u.startswith("data:")
        ]


@pytest.fixture
async def context(browser: Any, host: HostPages, svc: Service) -> AsyncIterator[Any]:
    ctx = await browser.new_context(viewport={"width": 1000, "height": 800}, locale="en-US")
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest.fixture
async def watch(host: HostPages, svc: Service) -> AsyncIterator[Watch]:
    w = Watch(allowed={host.base, svc.base})
    yield w
    assert not w.errors, f"errors in the page: {w.errors}"
    assert not w.foreign(), f"the page made requests to other hosts: {w.foreign()}"


@pytest.fixture
async def page(context: Any, watch: Watch) -> AsyncIterator[Any]:
    p = await context.new_page()
    p.on("request", lambda r: watch.requests.append(r.url))
    p.on("websocket", watch.on_socket)
    p.on("pageerror", lambda e: watch.errors.append(str(e)))
    yield p


def host_page(server: str, body: str, *, title: str = "Host page", lang: str = "en") -> str:
    """A page of a site that embeds the widget from the ticker service (another origin)."""
    return (
        f'<!doctype html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n"
        f'<script async src="{server}/widget.js"></script>\n</head>\n'
        f"<body>\n<main>\n<h1>{title}</h1>\n{body}\n"
        '<p id="after">Text that follows the ticker on the host page.</p>\n'
        "</main>\n</body>\n</html>\n"
    )


def items(page: Any, widget: str = "news-ticker") -> Any:
    """The briefs a widget shows (its shadow DOM), not the crawl's hidden copy."""
    return page.locator(f"{widget} [part~=list] > li")


async def wait_ready(page: Any, widget: str = "news-ticker") -> None:
    """Until the widget has rendered its first snapshot (its view went live)."""
    await page.wait_for_function(
        """sel => { const w = document.querySelector(sel); const r = w && w.shadowRoot;
                    return !!(r && w.cursor !== null && r.querySelector('[part~=list]')); }""",
        arg=widget,
        timeout=TIMEOUT_MS,
    )
