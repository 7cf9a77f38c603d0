"""The ``ticker`` commands that talk to a running server, through the Python client
(``clients/python``, package ``ticker_client``)::

    ticker publish --channel CH "text" [--url URL] [--urgency N] [--tag TAG ...] [--key KEY]
    ticker tail --channel CH [--since CURSOR] [--json] [--token TOKEN]
    ticker channels

Every command takes ``--server URL``, else ``TICKER_SERVER``, else the local default.
``publish`` takes its key from ``--key``, else ``TICKER_API_KEY``. Errors are one sentence
on standard error that says what to do; the exit code is 2 for a usage error and 1 for
anything else that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ticker_client import Brief, Event, TickerClient

DEFAULT_SERVER = "http://127.0.0.1:8000"
COMMANDS = frozenset({"publish", "tail", "channels"})


class UsageError(Exception):
    """Wrong or missing arguments: exit code 2."""


def add_commands(sub: Any) -> Any:
    """Add ``publish``, ``tail`` and ``channels`` to the ``ticker`` subcommands; returns
    the ``channels`` parser, to which ``ticker.cli`` adds the management actions."""
    server_help = f"server URL (default: TICKER_SERVER, else {DEFAULT_SERVER})"

    publish = sub.add_parser("publish", help="publish a brief to a running server")
    publish.add_argument("--channel", required=True, help="the channel, e.g. world")
    publish.add_argument("text", help="the brief: plain text, at most 500 characters")
    publish.add_argument("--url", help="a link for the brief (http or https)")
    publish.add_argument("--urgency", type=int, help="1 (most urgent) to 9; default 5")
    publish.add_argument("--tag", action="append", dest="tags", help="a tag; repeat for more")
    publish.add_argument("--time", help="when it happened, RFC 3339 (default: now)")
    publish.add_argument("--lang", help="language tag, e.g. fr")
    publish.add_argument("--key", help="API key (default: TICKER_API_KEY)")
    publish.add_argument("--server", help=server_help)

    tail = sub.add_parser("tail", help="print a channel's briefs live until interrupted")
    tail.add_argument("--channel", required=True, help="the channel, e.g. world")
    tail.add_argument("--since", help="resume after this cursor instead of the latest briefs")
    tail.add_argument("--json", action="store_true", help="one JSON event per line")
    tail.add_argument("--token", help="for a private channel: a reader token, or an API key "
                      "that may read it (default: TICKER_READER_TOKEN, else TICKER_API_KEY)")
    tail.add_argument("--server", help=server_help)

    channels = sub.add_parser(
        "channels", help="list the channels of a running server; or manage channels",
        description="With no ACTION: list the channels of a running server and their "
        "readers. With an ACTION: create, list, update or delete channels in the store.",
    )
    channels.add_argument("--server", help=server_help)
    return channels


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    """Run one client command; returns the exit code."""
    env = os.environ if environ is None else environ
    try:
        import ticker_client
    except ImportError:
        print(
            "ticker: the client commands need the Python client: run "
            "\"pip install -e clients/python\" in the ticker checkout.",
            file=sys.stderr,
        )
        return 1
    server = args.server or env.get("TICKER_SERVER") or DEFAULT_SERVER
    try:
        if args.command == "publish":
            key = args.key or env.get("TICKER_API_KEY")
            if not key:
                raise UsageError(
                    "publishing needs an API key: set TICKER_API_KEY or pass --key (an "
                    "operator creates one with 'ticker keys create --name NAME --channel CH')."
                )
            return asyncio.run(_publish(server, key, args))
        if args.command == "tail":
            token = args.token or env.get("TICKER_READER_TOKEN") or env.get("TICKER_API_KEY")
            with contextlib.suppress(KeyboardInterrupt):
                return asyncio.run(_tail(server, args, token or None))
            return 0
        return asyncio.run(_channels(server))
    except (UsageError, ValueError) as exc:
        print(f"ticker: {exc}", file=sys.stderr)
        return 2
    except ticker_client.ServerUnreachable:
        print(
            f"ticker: cannot reach the ticker server at {server}. Is it running? Start it with "
            "'ticker serve', or point --server (or TICKER_SERVER) at it.",
            file=sys.stderr,
        )
        return 1
    except ticker_client.AuthenticationError as exc:
        print(
            f"ticker: the server refused the API key: {exc.detail} Check TICKER_API_KEY or "
            "--key; an operator creates keys with 'ticker keys create'.",
            file=sys.stderr,
        )
        return 1
    except ticker_client.SubscriptionRefused as exc:
        if exc.error is not None and exc.error.startswith("token_"):
            print(f"ticker: channel {exc.channel!r} is private and the token was refused or "
                  f"missing ({exc.error}): pass --token (a reader token, or an API key that "
                  "may read it) or set TICKER_READER_TOKEN.", file=sys.stderr)
        else:
            print(f"ticker: {exc}", file=sys.stderr)
        return 1
    except ticker_client.TickerClientError as exc:
        print(f"ticker: {exc}", file=sys.stderr)
        return 1


def _client(server: str, **kwargs: Any) -> TickerClient:
    from ticker_client import TickerClient

    try:
        return TickerClient(server, **kwargs)
    except ValueError as exc:
        raise UsageError(f"{exc} (from --server or TICKER_SERVER)") from None


async def _publish(server: str, key: str, args: argparse.Namespace) -> int:
    # 503s (a Redis failover) retried for up to 30 s; an unreachable server 3 times.
    async with _client(server, api_key=key, max_transport_retries=3) as client:
        brief = await client.publish(
            args.channel, args.text, url=args.url, urgency=args.urgency, tags=args.tags,
            time=args.time, lang=args.lang,
        )
    print(brief.id)
    print(f"Published to {brief.channel}: {line(brief)}", file=sys.stderr)
    return 0


async def _channels(server: str) -> int:
    async with _client(server, max_retries=1) as client:
        names = await client.channels()
    for name in names:
        print(name)
    if not names:
        print("No channels yet: the first publish to a channel creates it.", file=sys.stderr)
    return 0


async def _tail(server: str, args: argparse.Namespace, token: str | None) -> int:
    async with _client(server, max_retries=1) as client:
        # Fail now, with a clear message, if nothing answers; once connected, the client
        # reconnects and resumes by itself.
        await client.channels()
        printer = Printer(as_json=args.json)
        # The token goes only to a channel that is private (the client asks for it then).
        events = client.subscribe(args.channel, since=args.since, token=token)
        async with contextlib.aclosing(events):
            async for event in events:
                printer.show(event)
    return 0  # pragma: no cover - subscribe() only ends by an exception


def line(brief: Brief, note: str = "") -> str:
    """``14/02 16:30  text``, in the local time zone."""
    when = brief.time.astimezone().strftime("%d/%m %H:%M")
    return f"{when}  {note}{brief.text}"


class Printer:
    """Prints events as ticker lines, or as JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.shown: dict[str, Brief] = {}  # brief id -> brief, to name retracted ones

    def show(self, event: Event) -> None:
        from ticker_client import BriefEvent, Correction, Retraction, Snapshot

        if self.as_json:
            self._print(json.dumps(_as_json(event), ensure_ascii=False))
            return
        if isinstance(event, Snapshot):
            for brief in reversed(event.briefs):  # oldest first, like tail
                self._remember(brief)
                self._print(line(brief))
        elif isinstance(event, BriefEvent):
            self._remember(event.brief)
            self._print(line(event.brief))
        elif isinstance(event, Correction):
            self._remember(event.brief)
            self._print(line(event.brief, "(corrected) "))
        elif isinstance(event, Retraction):
            retracted = self.shown.pop(event.id, None)
            self._print(line(retracted, "(retracted) ") if retracted else f"(retracted) {event.id}")

    def _remember(self, brief: Brief) -> None:
        self.shown[brief.id] = brief
        if len(self.shown) > 10_000:  # bounded: forget the oldest
            del self.shown[next(iter(self.shown))]

    @staticmethod
    def _print(text: str) -> None:
        print(text, flush=True)


def _as_json(event: Event) -> dict[str, Any]:
    """The event as the protocol message it came from (docs/protocol.md)."""
    from ticker_client import BriefEvent, Correction, Retraction, Snapshot

    if isinstance(event, Snapshot):
        return {"type": "snapshot", "channel": event.channel,
                "briefs": [dict(b.raw) for b in event.briefs],
                "cursor": event.cursor, "epoch": event.epoch}
    if isinstance(event, Retraction):
        return {"type": "retraction", "channel": event.channel, "id": event.id,
                "cursor": event.cursor}
    kind = "brief" if isinstance(event, BriefEvent) else "correction"
    assert isinstance(event, BriefEvent | Correction)
    return {"type": kind, "channel": event.channel, "brief": dict(event.brief.raw),
            "cursor": event.cursor}
