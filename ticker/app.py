"""create_app(): the ASGI application, its routes and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from ticker import redact
from ticker.answers import Answers
from ticker.auth import KeyCache, KeyStore
from ticker.config import Settings, load_settings
from ticker.embedded import EmbeddedRedis
from ticker.gate import Gate
from ticker.http import EXCEPTION_HANDLERS, JSONResponse, SlashRedirect, problem
from ticker.hub import Hub
from ticker.keys import Layout
from ticker.metrics import Metrics
from ticker.routes import apikeys, briefs, channels, console, feeds, ops, sse, widget, ws
from ticker.services import Services, StoreHealth
from ticker.store import Store, check_layout, connect
from ticker.storewatch import StoreWatch
from ticker.wsproto import Admit

_READS = frozenset({"GET", "HEAD"})

log = logging.getLogger("ticker")


class App(Starlette):
    """Starlette, with the subscribers' WebSocket endpoint taken straight: connections
    come in storms (after a deploy, a network blip, a breaking story) and the endpoint
    needs neither routing nor the HTTP middleware. Under ``ticker serve`` the handshake
    does not even reach ASGI: ``subscribers`` (set once the services run) is what
    ticker's HTTP protocol calls instead (``ticker.wsproto``)."""

    subscribers: Admit | None = None
    gate: Gate | None = None  # the server's entrance under ``ticker serve`` (ticker.cli)
    answers: Answers | None = None  # GETs answered before routing (set with the services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == ws.PATH:
            scope["app"] = self
            await ws.websocket_endpoint(WebSocket(scope, receive, send))
            return
        answers = self.answers
        if answers is not None and scope["type"] == "http" and scope["method"] in _READS:
            await answers(scope, receive, send, super().__call__)
            return
        await super().__call__(scope, receive, send)


async def healthz(request: Request) -> Response:
    """The process is alive and can recover by itself: not while the embedded store it
    supervises cannot be restarted (then its supervisor should restart ticker)."""
    services: Services | None = getattr(request.app.state, "services", None)
    health = services.store_health if services is not None else None
    failure = health.failure if health is not None else None
    if failure is not None:
        return problem(503, "Service Unavailable", failure, "store-down")
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready to serve: Redis answers within ``readyz_timeout`` and the stream reader is
    connected. Bounded: a stalled Redis (which accepts connections but never answers)
    makes it 503, not hang until the prober gives up."""
    services: Services = request.app.state.services
    if services.hub.shutting_down:
        return problem(503, "Service Unavailable", "The server is shutting down.", "shutting-down")
    timeout = services.settings.readyz_timeout
    try:
        async with asyncio.timeout(timeout):
            # Cancelled mid-reply, redis-py drops that connection rather than reuse it.
            answered = await services.store.ping()
    except TimeoutError:
        return problem(
            503, "Service Unavailable",
            f"Redis did not answer within {timeout:g} s (the setting 'readyz_timeout').",
            "unavailable", {"Retry-After": "2"},
        )
    if not answered or not services.hub.reader_healthy:
        return problem(
            503, "Service Unavailable", "Redis is unreachable; the service will reconnect.",
            "unavailable", {"Retry-After": "2"},
        )
    return JSONResponse({"status": "ready"})


def create_app(settings: Settings | None = None, supervisor: StoreHealth | None = None) -> Starlette:
    """The ticker ASGI app. Without settings, they are read from the file and environment.
    ``supervisor``: a worker's supervisor, which runs the embedded store."""
    redact.install()  # before uvicorn logs a request with ?token=
    settings = settings or load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        embedded = None
        watch = None
        url = settings.redis_url
        if settings.embedded:
            embedded = EmbeddedRedis(settings.data_dir)
            # On this thread, not a worker thread: the child is told to exit when the
            # thread that started it ends (PR_SET_PDEATHSIG), which must be the main one.
            # Nothing is served yet, so blocking the loop here costs nothing.
            embedded.start()
            url = embedded.url
            log.info("Embedded Redis serving %s", embedded.data_dir)
            if embedded.owned:
                # Only a server this process started is supervised: one found serving
                # the data directory belongs to another process, which restarts it.
                watch = StoreWatch(embedded)
        layout = Layout.for_url(url, settings.redis_partitions)
        client = connect(settings, url)
        reads = connect(settings, url, pool_size=settings.redis_read_pool_size)
        reader = connect(settings, url, reader=True)
        if layout.clustered:
            # The slot map, read once before anything runs: the readers of every
            # partition start at once, and redis-py's cluster client, asked by many
            # tasks before it knows the cluster, reads the map in each, closing
            # connections that the others are opening.
            for redis_client in (client, reads, reader):
                await cast(Any, redis_client).initialize()
        await check_layout(client, layout)
        store = Store(client, settings, reads, layout)
        metrics = Metrics()
        hub = Hub(store, reader, settings, metrics)
        # The API keys that authenticated, kept true by the readers, which follow the
        # doorbells that every revoke rings (ticker.auth.KeyCache).
        key_cache = (
            KeyCache(settings.api_key_cache_seconds) if settings.api_key_cache_seconds else None
        )
        for stream_reader in hub.stream_readers:
            stream_reader.key_cache = key_cache
        metrics.watch_hub(hub)
        if app.gate is not None:
            metrics.watch_gate(app.gate)
        app.state.services = Services(
            settings, client, reader, store, KeyStore(client, layout, key_cache), hub, metrics,
            watch, supervisor,
        )
        hub.start()
        metrics.start()
        if watch is not None:
            watch.start()
        app.subscribers = functools.partial(ws.admit, app.state.services)
        app.answers = Answers(hub)
        if app.gate is not None:  # event streams on the gate's way in too (ticker.sseproto)
            app.gate.events = functools.partial(sse.admit, app.state.services)
        try:
            yield
        finally:
            app.subscribers = None
            app.answers = None
            if app.gate is not None:
                app.gate.events = None
            await hub.shutdown(1012, "server restart: reconnect and resume", settings.shutdown_drain)
            await hub.stop()
            await metrics.stop()
            await reader.aclose()
            await reads.aclose()
            await client.aclose()
            if watch is not None:
                await watch.stop()  # first, so that the stop is not taken for a crash
            if embedded is not None:
                embedded.stop()

    app = App(
        routes=[
            *ws.routes,  # reached through App.__call__ (and here for the route list)
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            widget.public_reads,  # before briefs: CORS on the public GET routes of briefs
            *briefs.routes,  # before the pages: a publish is matched against fewer routes
            *channels.routes,
            *widget.routes,
            *sse.routes,
            *feeds.routes,
            *ops.routes,
            *apikeys.routes,  # GET /v1/keys/self (the console's sign-in)
            *console.routes,  # the editor console (docs/console.md)
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # Starlette's own trailing-slash redirect puts the Host header in an absolute Location;
    # ticker's is relative (ticker.http.SlashRedirect).
    app.router.redirect_slashes = False
    app.router.default = SlashRedirect(app.router)
    return app
