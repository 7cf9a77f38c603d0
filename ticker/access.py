"""Who may read a channel: everyone for a public one; for a private one, the holder of a
reader token that names it (``ticker.tokens``) or of an API key that may ``read`` it.

Every read path asks here before it sends a brief: the WebSocket subscribe
(``ticker.routes.ws``), both event-stream paths (``ticker.routes.sse``), the lists, one
brief, the feeds, ninjs and ``/embed``. Whether a channel is private comes from its object
(``ChannelInfo.private``), kept with the channel in memory while this process follows it
and dropped when the doorbell says it changed (``Hub.channel_info``): a public channel
that is followed costs a dict lookup, never a token check.

A credential comes as ``Authorization: Bearer <token>`` or, where a browser cannot set a
header (``EventSource``, an ``<iframe>`` of ``/embed``), ``?token=``. An API key (``tk_...``)
in the header opens the channel server-side when its role may read it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from ticker.auth import require_key
from ticker.channel import Channel
from ticker.channels import object_info
from ticker.errors import ProblemError
from ticker.hub import Hub
from ticker.models import check_channel
from ticker.services import Services
from ticker.tokens import KEY_KID, Grant, TokenRefused

KEY_PREFIX = "tk_"


def key_kid(digest: str) -> str:
    return KEY_KID + digest


_FOLLOWED = "ticker.followed"  # the scope's key for the channel the check followed


async def is_private(hub: Hub, channel: str, followed: Channel | None = None) -> bool:
    """Whether the channel is private: from memory when this process follows it (the
    object is read once and kept until it changes), else one read of its object.
    ``followed``: the channel as ``Hub.follow`` gave it for an HTTP read; one never
    published (not followed: its answer is empty, whatever it is) needs no read."""
    if followed is not None and hub.channels.get(channel) is not followed and followed.empty():
        return False  # an empty log, answered empty: nothing to keep from anyone
    if followed is None and hub.is_public(channel):
        return False  # known public in this process (``Hub.private``): no read
    state = followed if followed is not None else hub.channels.get(channel)
    if state is not None:
        info = state.info if state.info is not None else await hub.channel_info(state)
    else:
        info = object_info(channel, await hub.store.channel_object(channel))
    return info.private


def credential(authorization: str | None, query_token: str | None) -> str | None:
    """The bearer credential of a request: the header's, else ``?token=``."""
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


async def check(s: Services, channel: str, authorization: str | None,
                query_token: str | None, followed: Channel | None = None) -> Grant | None:
    """None when the channel is public; the grant that opens a private one (a token's,
    or an endless one for an API key that may read it); else a 401/403 problem."""
    if not await is_private(s.hub, channel, followed):
        return None
    header = credential(authorization, None)
    if header is None and query_token and query_token.startswith(KEY_PREFIX):
        raise TokenRefused(
            "An API key goes in the Authorization header, never in a URL (URLs end up in "
            "logs and browser histories): send 'Authorization: Bearer <key>'.")
    return await grant(s, channel, header or query_token or None)


async def grant(s: Services, channel: str, token: str | None) -> Grant:
    """What opens the private ``channel`` to this credential, or a 401/403 problem."""
    if token is None:
        raise TokenRefused(
            f"Channel {channel!r} is private: send a reader token for it (Authorization: "
            "Bearer <token>, or ?token=), which the site you read it on gives its readers.",
            "token_required")
    if token.startswith(KEY_PREFIX):
        key = await require_key(s.keys, f"Bearer {token}", channel, "read")
        # Ends with the key: at its expiry or grace (on the schedule), or when a revoke
        # or rotation names its digest on the doorbell (``Hub.key_revoked``).
        ends = key.ends if key.ends is not None else math.inf
        return Grant(frozenset({channel}), ends, key_kid(key.digest), f"key:{key.name}")
    return await s.tokens.verify(token, channel)


def refusal_code(exc: ProblemError) -> str:
    """The WebSocket ``error`` code of a refusal."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else "forbidden" if exc.status == 403 else "unauthorized"


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(endpoint: Endpoint, follow: bool = True) -> Endpoint:
    """``endpoint`` (a read of ``{channel}``) answers only who may read the channel; a
    private channel's answer is marked ``private, no-store`` so that no shared cache (a
    CDN, a proxy) keeps it for the next reader. ``follow``: the endpoint answers from the
    channel in memory (``Hub.follow``); else (one brief, read from Redis) it is not
    followed for this check."""

    @functools.wraps(endpoint)
    async def read(request: Request) -> Response:
        services: Services = request.app.state.services
        channel = check_channel(request.path_params["channel"])
        state = None
        if follow:
            state = request.scope[_FOLLOWED] = await services.hub.follow(channel)
        grant = await check(services, channel, request.headers.get("authorization"),
                            request.query_params.get("token"), state)
        response = await endpoint(request)
        if grant is not None:
            response.headers["Cache-Control"] = "private, no-store"
        return response

    return read


async def followed(request: Request, channel: str) -> Channel:
    """The channel as the check followed it (``guarded``): the endpoint answers from the
    very state that was checked, never from one opened after it."""
    state = request.scope.get(_FOLLOWED)
    if isinstance(state, Channel) and state.name == channel:
        return state
    services: Services = request.app.state.services
    return await services.hub.follow(channel)
