"""HTTP reads answered before routing: the whole answer to a GET of a channel's list,
``/embed`` page or feed, kept with the channel until its next event and given again to
the same request without routing, endpoint or rendering.

Why: once reads came from memory and each answer was rendered once per change
(``ticker.views``), what was left of a poll was the framework around it: Starlette's
routing through every route, the request object, the query's parsing, the response's
building, its middleware. That cost twice what the whole of ``GET /healthz`` does. A
poller, a CDN or a page that revalidates every few seconds asks the same thing again and
again, and the answer only changes when the channel does.

Which requests are the same (``_request_key``): the same path and query string, and the
same values of what these endpoints read besides the channel: the scheme, root path,
server address and ``Host`` (the base of absolute links), ``Accept`` (JSON or ninjs) and
``Origin`` (CORS). An endpoint that comes to read anything else from a request must add
it here, or not offer its answers; one that checks who asks (a private channel) must not
offer them, since nothing here checks it again: ``offer`` takes nothing from a channel
whose object is not known public, and nothing kept is given for one (``ticker.access``).

An endpoint offers an answer with ``offer``: only one made from the channel at its
position in memory whose bytes depend on nothing else (not a feed whose Last-Modified is
still to come, not a poll answered from Redis). ``Answers`` takes what the endpoint sent,
CORS headers included, once it is complete with status 200 and the channel has not moved
meanwhile. Conditional requests are answered here too: ``If-None-Match`` with the kept
ETag gets ``304``; a request with ``If-Modified-Since`` and no ``If-None-Match`` goes to the
endpoint, which knows the dates.

Kept in ``Channel.answers``: emptied by every event of the channel (``Hub.dispatch``) and
every change of its object (title, lang, time zone: ``Hub.channel_changed``),
gone with the channel when nobody follows it any more, at most ``ANSWERS_PER_CHANNEL``
per channel (the oldest goes first: a query string is the client's to choose). The
bodies are the rendered bytes that ``Channel.renders`` holds already, not copies. An
answer given here renews the channel's lease (``Hub.renew``) as the endpoint would, and a
channel whose memory is behind what this process wrote (``Hub.caught_up``) is left to the
endpoint, which waits for it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ticker.channel import Channel
from ticker.http import names_etag
from ticker.hub import Hub
from ticker.store import StreamKey, format_key

ANSWERS_PER_CHANNEL = 32

# The paths whose answers may be kept: a channel's list, its feeds and its /embed page.
_PATH = re.compile(r"/v1/channels/([^/]+)/(?:briefs|feed\.[a-z]+)|/embed/([^/]+)")
_OFFER: Final = "ticker.answer"  # the scope's key for an endpoint's offer
# Headers of an answer that a 304 leaves out (RFC 9110, section 15.4.5).
_NOT_IN_304 = frozenset({b"content-length", b"content-type"})
_KEYED = frozenset({b"host", b"accept", b"origin"})


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """A complete 200 answer, and its 304."""

    etag: str
    head: Message  # http.response.start
    body: Message  # http.response.body
    not_modified: Message  # http.response.start of its 304


def offer(request: Request, state: Channel, cursor: str) -> None:
    """The endpoint's answer to ``request`` may be given again to the same request until
    the channel's next event: it was made from the channel at ``cursor``, and from
    nothing else that ``_request_key`` does not name."""
    info = state.info
    if info is None or info.private:
        return  # a private channel's answers are for the reader who asked only
    if cursor == format_key(state.position):
        request.scope[_OFFER] = (state, state.position, state.revision)


class Answers:
    """The ASGI app's way in for GETs: answered here when an answer is kept, else passed
    to ``app`` and its answer kept when the endpoint offered it."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            await app(scope, receive, send)
            return
        state = self.hub.channels.get(match[1] or match[2])
        key, if_none_match, if_modified_since = _request_key(scope)
        # Only a channel known to be public (one made private since has its answers
        # dropped, but its object is checked again here all the same).
        if (state is not None and state.position >= state.written
                and state.info is not None and not state.info.private):
            kept = state.answers.get(key)
            if kept is not None and (if_none_match is not None or if_modified_since is None):
                self.hub.renew(state)
                if if_none_match is not None and names_etag(if_none_match, kept.etag):
                    await send(kept.not_modified)
                    await send({"type": "http.response.body", "body": b""})
                else:
                    await send(kept.head)
                    await send(kept.body)
                return
        await self._ask(scope, receive, send, app, key)

    async def _ask(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp,
                   key: tuple[object, ...]) -> None:
        """The endpoint answers; its answer is kept if it offered it."""
        sent: list[Message] = []

        async def keeping(message: Message) -> None:
            sent.append(message)
            await send(message)

        await app(scope, receive, keeping)
        offered = scope.get(_OFFER)
        if offered is None or len(sent) != 2:
            return  # not offered, or a body sent in parts
        state: Channel = offered[0]
        position: StreamKey = offered[1]
        head, body = sent
        if (head["status"] != 200 or body.get("more_body") or state.position != position
                or state.revision != offered[2]  # its object changed meanwhile
                or self.hub.channels.get(state.name) is not state):
            return
        etag = next((v.decode("latin-1") for k, v in head["headers"] if k == b"etag"), None)
        if etag is None:
            return
        not_modified = {
            "type": "http.response.start", "status": 304,
            "headers": [(k, v) for k, v in head["headers"] if k not in _NOT_IN_304],
        }
        answers = state.answers
        if len(answers) >= ANSWERS_PER_CHANNEL:
            del answers[next(iter(answers))]
        answers[key] = Answer(etag, head, body, not_modified)


def _request_key(scope: Scope) -> tuple[tuple[object, ...], str | None, bytes | None]:
    """What makes two requests the same for these endpoints (see the module's
    docstring), and the request's If-None-Match and If-Modified-Since."""
    keyed: list[tuple[bytes, bytes]] = []
    if_none_match: str | None = None
    if_modified_since: bytes | None = None
    for name, value in scope["headers"]:
        if name in _KEYED:
            keyed.append((name, value))
        elif name == b"if-none-match":
            text = value.decode("latin-1")
            if_none_match = text if if_none_match is None else f"{if_none_match},{text}"
        elif name == b"if-modified-since":
            if_modified_since = value
    keyed.sort()
    key = (scope["path"], scope["query_string"], scope["scheme"], scope.get("root_path", ""),
           scope.get("server"), *keyed)
    return key, if_none_match, if_modified_since
