"""The editor console: ``GET /console`` and its script and style (docs/console.md).

A page for people who write briefs, served by ticker itself and built only on the public
HTTP API and WebSocket protocol (plus ``GET /v1/keys/self``). It runs under a strict CSP
of its own, stricter than the demo's: nothing inline, nothing from another origin, no
form posted anywhere but here, never framed (a framed console could be clickjacked into
publishing). The API key lives only in the page's memory (docs/security.md, "The editor
console"), so the page itself holds no secret and is never cached (``no-store``): a
reload signs out.

The files are ``ticker/static/console.{html,js,css}`` (package data), served like the
widget's (``ticker.routes.widget.serve_asset``: ETag, gzip, ``no-cache``) and referred
to with their version in the query, so that a new release is never mixed with an old
script.
"""

from __future__ import annotations

import string
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ticker.http import base_url
from ticker.routes.widget import NO_CACHE, asset, serve_asset
from ticker.services import Services


def console_csp(base: str) -> str:
    """The page's policy. ``connect-src`` names the WebSocket URL of this host as well as
    'self': CSP Level 3 lets 'self' match ws: and wss: of the same host, older browsers
    do not. ``base``: this service's address (``public_url``, else the request's)."""
    parts = urlsplit(base)
    ws = f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"connect-src 'self' {ws}; img-src 'self' data:; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


async def console(request: Request) -> Response:
    services: Services = request.app.state.services
    template = string.Template(asset("console.html").body.decode())
    page = template.substitute(
        console_js=f"/console.js?v={asset('console.js').version}",
        console_css=f"/console.css?v={asset('console.css').version}",
    )
    headers = {
        "Content-Security-Policy": console_csp(base_url(request, services.settings.public_url)),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    }
    return Response(page, headers=headers, media_type="text/html; charset=utf-8")


async def console_js(request: Request) -> Response:
    return serve_asset(request, "console.js", NO_CACHE)


async def console_css(request: Request) -> Response:
    return serve_asset(request, "console.css", NO_CACHE)


routes = [
    Route("/console", console, methods=["GET"]),
    Route("/console.js", console_js, methods=["GET"]),
    Route("/console.css", console_css, methods=["GET"]),
]
