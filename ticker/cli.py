"""The ``ticker`` command: serve, and manage API keys.

    ticker serve [--host HOST] [--port PORT] [--workers N|auto]
    ticker keys create --name NAME [--channel CH ...] [--role ROLE] [--expires-in 90d]
    ticker keys list
    ticker keys rotate NAME [--grace 24h]
    ticker keys revoke NAME
    ticker channels create NAME [--title T] [--lang fr] [--time-zone Europe/Paris]
    ticker channels list
    ticker channels update NAME [--title T] [--lang L] [--time-zone Z] [--clear FIELD]
    ticker channels delete NAME [--force]
    ticker audit [--limit N]

Errors go to standard error as one sentence that says what to do; the exit code is 2
for a usage or configuration error and 1 for anything else that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions
import uvicorn

from ticker import client_cli, redact
from ticker.audit import DEFAULT_LIMIT as DEFAULT_AUDIT_LIMIT
from ticker.audit import MAX_LIMIT as MAX_AUDIT_LIMIT
from ticker.audit import AuditLog, cli_actor
from ticker.auth import (
    MAX_GRACE,
    MAX_LIFETIME,
    ROLES,
    ROTATE_GRACE,
    ApiKey,
    KeyAdminError,
    KeyStore,
)
from ticker.channels import FIELDS, MAX_TITLE, ChannelError, ChannelStore
from ticker.config import Settings, cpu_count, load_settings
from ticker.durations import describe, parse_duration
from ticker.embedded import EmbeddedRedis, reserved
from ticker.errors import ConfigError, TickerError
from ticker.gate import Gate, gate_protocol
from ticker.keys import Layout
from ticker.migrate import migrate
from ticker.store import check_layout, connect
from ticker.supervisor import RUN_DIR_FLAG, WORKER_FLAG, RunDir, Supervisor, bound_socket
from ticker.tokens import CONFIG_KID, SecretCache, Tokens


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticker", description="A live news-ticker service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--host", help="address to listen on (setting 'host')")
    serve.add_argument("--port", type=int, help="port to listen on (setting 'port', or PORT)")
    serve.add_argument(
        "--workers", type=_workers, metavar="N",
        help="worker processes on one port, or 'auto': one per CPU (setting 'workers')",
    )
    serve.add_argument("--config", help="configuration file (default config/ticker.toml)")
    # Internal: how the supervisor of --workers N starts each worker (ticker.supervisor).
    serve.add_argument(WORKER_FLAG, type=int, dest="worker_of", help=argparse.SUPPRESS)
    serve.add_argument(RUN_DIR_FLAG, dest="run_dir", help=argparse.SUPPRESS)

    keys = sub.add_parser("keys", help="create, list, rotate and revoke API keys")
    keys.add_argument("--config", help="configuration file (default config/ticker.toml)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key and print it")
    create.add_argument("--name", required=True, help="a name for the key, e.g. the CMS")
    create.add_argument(
        "--channel", action="append", default=[], dest="channels",
        help="a channel the key may publish to (or read, for a reader key); repeat for "
        "more, '*' for all. Needed for publisher and reader keys; an admin key is for "
        "every channel and refuses any other than '*'",
    )
    create.add_argument(
        "--role", choices=ROLES, default="publisher",
        help="publisher (publish, correct, retract, pin on its channels; the default), "
        "reader (read private channels, mint reader tokens) or admin (everything)",
    )
    create.add_argument(
        "--expires-in", type=_lifetime, metavar="DURATION",
        help=f"the key stops working after this long, e.g. 90d (45s, 30m, 12h; at most "
        f"{describe(MAX_LIFETIME)}); by default it never expires",
    )
    keys_sub.add_parser(
        "list", help="list the keys: name, role, channels, created, expires (never secrets)"
    )
    rotate = keys_sub.add_parser(
        "rotate", help="give a key a new secret; the old one works for a grace period",
        description="Print a new secret for the key NAME (same role, channels and expiry). "
        f"The old secret keeps working for --grace (default {describe(ROTATE_GRACE)}: time "
        "to give every publisher the new one), then is refused as rotated. Use --grace 0s "
        "for a secret that leaked.",
    )
    rotate.add_argument("name")
    rotate.add_argument(
        "--grace", type=_grace, default=ROTATE_GRACE, metavar="DURATION",
        help=f"how long the old secret stays valid (default {describe(ROTATE_GRACE)}, "
        f"0s to {describe(MAX_GRACE)})",
    )
    revoke = keys_sub.add_parser(
        "revoke", help="revoke a key by name (every secret of it, rotated ones included)"
    )
    revoke.add_argument("name")
    tokens = sub.add_parser(
        "tokens", help="manage the secrets that sign reader tokens of private channels"
    )
    tokens_sub = tokens.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    for action, text in (
        ("list-secrets", "list the signing secrets kept in the store (kid, created), "
                         "the current one marked, and the CMS's public keys "
                         "(reader_token_public_keys)"),
        ("rotate-secret", "make a new signing secret, used for new tokens from now on "
                          "(tokens of the others stay valid until revoked)"),
    ):
        parser_ = tokens_sub.add_parser(action, help=text)
        parser_.add_argument("--config", help="configuration file (default config/ticker.toml)")
    revoke_secret = tokens_sub.add_parser(
        "revoke-secret", help="revoke a signing secret by kid: its tokens stop working at once, "
        "live subscriptions included (a CMS's public key is revoked by removing it from "
        "reader_token_public_keys and restarting)",
    )
    revoke_secret.add_argument("kid")
    revoke_secret.add_argument("--config", help="configuration file (default config/ticker.toml)")
    migrate = sub.add_parser(
        "migrate", help="copy the store into another Redis (e.g. a Redis Cluster)",
        description="Copy every channel (logs with their IDs, briefs, epochs, idempotency "
        "records, channel objects), every API key and the audit stream from the "
        "configured store (or --from) into another, in that one's key layout. Stop "
        "publishing first; the destination must be empty.",
    )
    migrate.add_argument("--to", required=True, metavar="URL",
                         help="destination: redis://, redis+sentinel:// or redis+cluster://")
    migrate.add_argument("--from", dest="source", metavar="URL",
                         help="source (default: the configured store, REDIS_URL or embedded)")
    migrate.add_argument("--config", help="configuration file (default config/ticker.toml)")
    # publish, tail, channels (with no action: of a running server): ticker/client_cli.py
    _channel_actions(client_cli.add_commands(sub))
    audit = sub.add_parser(
        "audit", help="print the audit stream of key and channel management, newest first"
    )
    audit.add_argument(
        "--limit", type=_audit_limit, default=DEFAULT_AUDIT_LIMIT, metavar="N",
        help=f"entries to print (default {DEFAULT_AUDIT_LIMIT}, at most {MAX_AUDIT_LIMIT})",
    )
    audit.add_argument("--config", help="configuration file (default config/ticker.toml)")
    return parser


def _channel_actions(channels: argparse.ArgumentParser) -> None:
    """``ticker channels create|list|update|delete``: channel objects in the store."""
    actions = channels.add_subparsers(dest="channels_command", metavar="ACTION")

    def defaults(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--title", help=f"the channel's title (1 to {MAX_TITLE} characters)")
        parser.add_argument("--lang", help="the channel's language tag, e.g. fr or en-US")
        parser.add_argument(
            "--time-zone", dest="time_zone", help="the channel's IANA time zone, e.g. Europe/Paris"
        )
        access = parser.add_mutually_exclusive_group()
        access.add_argument(
            "--private", dest="private", action="store_const", const=True, default=None,
            help="its briefs reach only reader tokens and reader keys (docs/security.md)",
        )
        access.add_argument(
            "--public", dest="private", action="store_const", const=False,
            help="its briefs reach everyone (the default)",
        )
        parser.add_argument("--config", help="configuration file (default config/ticker.toml)")

    create = actions.add_parser(
        "create", help="create a channel, with the defaults the widget, feeds and /embed use"
    )
    create.add_argument("name")
    defaults(create)
    listing = actions.add_parser(
        "list", help="list the channels: name, title, lang, time zone, created ('-': none)"
    )
    listing.add_argument("--config", help="configuration file (default config/ticker.toml)")
    update = actions.add_parser(
        "update", help="change a channel's title, lang, time zone or privacy"
    )
    update.add_argument("name")
    defaults(update)
    update.add_argument(
        "--clear", action="append", default=[], choices=("title", "lang", "time-zone"),
        help="remove a default (repeat for more)",
    )
    delete = actions.add_parser(
        "delete", help="delete a channel (refused while it retains briefs, unless --force)"
    )
    delete.add_argument("name")
    delete.add_argument(
        "--force", action="store_true",
        help="delete it with its briefs, log and histories; its subscribers are told",
    )
    delete.add_argument("--config", help="configuration file (default config/ticker.toml)")


def _audit_limit(raw: str) -> int:
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_AUDIT_LIMIT:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {MAX_AUDIT_LIMIT}")
    return limit


def _lifetime(raw: str) -> float:
    try:
        return parse_duration(raw, 1, MAX_LIFETIME)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _grace(raw: str) -> float:
    try:
        return parse_duration(raw, 0, MAX_GRACE)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _workers(raw: str) -> int:
    if raw == "auto":
        return cpu_count()
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes or 'auto', not {raw!r}")
    return count


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    managing = args.command == "channels" and args.channels_command is not None
    if args.command in client_cli.COMMANDS and not managing:
        return client_cli.run(args)
    try:
        settings = load_settings(config_file=args.config)
        if args.command == "serve":
            # With the embedded store, the data directory's lock is taken here, so that
            # one in use by another ticker is refused in a sentence (DataDirInUse, a
            # ConfigError: exit code 2); the app's lifespan takes it over to start the server.
            with reserved(settings.data_dir) if settings.embedded else contextlib.nullcontext():
                return serve(
                    settings, host=args.host, port=args.port, workers=args.workers,
                    worker_of=args.worker_of, run_dir=args.run_dir, config_file=args.config,
                )
        if args.command == "migrate":
            return asyncio.run(_migrate(settings, args))
        if args.command == "channels":
            return asyncio.run(_channels(settings, args))
        if args.command == "audit":
            return asyncio.run(_audit(settings, args))
        if args.command == "tokens":
            return asyncio.run(_tokens(settings, args))
        return asyncio.run(_keys(settings, args))
    except ConfigError as exc:
        print(f"ticker: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except TickerError as exc:
        print(f"ticker: {exc}", file=sys.stderr)
        return 1


GC_THRESHOLDS = (50_000, 20, 20)  # young, middle, old: see serve()


class _Server(uvicorn.Server):
    """uvicorn, with one more step at shutdown: before uvicorn drops the sockets, every
    subscriber gets what is queued for it and then close code 1012, so that it
    reconnects (to this process after a restart, or to another) and resumes."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self.ticker_app = app

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        services = getattr(self.ticker_app.state, "services", None)
        if services is not None:
            if services.store_watch is not None:
                # The embedded store may get the same signal (systemd signals the whole
                # service, a terminal the whole group): from now on its exit is no crash.
                await services.store_watch.stop()
            await services.hub.shutdown(
                1012, "server restart: reconnect and resume", services.settings.shutdown_drain
            )
        await super().shutdown(sockets)


def uvicorn_config(settings: Settings, app: Any) -> uvicorn.Config:
    """How ``ticker serve`` runs uvicorn. The app's ``gate`` is set to the server's
    entrance (``ticker.gate``), whose counts ``/metrics`` reports."""
    from ticker.routes.ws import PATH

    gate = Gate(settings, PATH, lambda: getattr(app, "subscribers", None))
    app.gate = gate
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # Every connection passes ticker's gate (limits, timeouts, connection counts);
        # then uvicorn's httptools protocol, except that the subscribers' handshakes go
        # straight to the app's ``subscribers`` (ticker.wsproto); other WebSocket
        # requests (all of them malformed) get websockets' answers.
        http=gate_protocol(gate),
        timeout_keep_alive=settings.keepalive_timeout,  # type: ignore[arg-type]
        forwarded_allow_ips=list(settings.forwarded_allow_ips),
        ws="websockets-sansio",
        # Compressing every brief for every subscriber would cost more than the rest.
        ws_per_message_deflate=False,
        ws_max_size=settings.ws_max_message_bytes,
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_timeout,
        lifespan="on",
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_drain) + 5,
        server_header=False,
    )
    redact.install()  # after uvicorn's logging configuration: no ?token= in its access log
    return config


def serve(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    *,
    worker_of: int | None = None,
    run_dir: str | None = None,
    config_file: str | None = None,
) -> int:
    """Serve in this process, or, with more than one worker, supervise that many
    (``ticker.supervisor``). ``worker_of``: this process is a worker of that supervisor,
    which shares ``run_dir`` with it."""
    from ticker.app import create_app

    changes: dict[str, Any] = {}
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    if workers is not None:
        changes["workers"] = workers
    settings = settings.with_overrides(**changes) if changes else settings
    if worker_of is None and settings.workers > 1:
        return Supervisor(settings, config_file).run()
    sockets = None
    supervisor_dir = None
    if worker_of is not None:
        if os.getppid() != worker_of:
            return 1  # the supervisor died before this worker could be told to die with it
        # Its own socket on the shared port (SO_REUSEPORT): the kernel balances the workers.
        sockets = [bound_socket(settings.host, settings.port)]
        supervisor_dir = RunDir(run_dir) if run_dir else None
    else:
        # A port in use is refused in a sentence, before the store starts (uvicorn would
        # start everything, then fail to listen). Checked by binding without
        # SO_REUSEPORT, which no listening socket shares; uvicorn binds it again.
        bound_socket(settings.host, settings.port, reuse_port=False).close()
    app = create_app(settings, supervisor_dir)
    server = _Server(uvicorn_config(settings, app), app)
    # What exists now (the modules, the app) lives as long as the process: keep it out of
    # every collection. And collect less often than Python's default (every 700 new
    # objects): each subscriber is about ten objects that live as long as it, and with the
    # defaults a storm of connections spent a sixth of its time re-scanning them
    # (docs/performance.md, "Garbage collection").
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    server.run(sockets=sockets)
    return 0 if server.started else 1


@contextlib.asynccontextmanager
async def _store(
    settings: Settings, url: str | None = None
) -> AsyncIterator[tuple[aioredis.Redis, Layout]]:
    """A client of ``url``, or of the configured Redis, and its key layout; with the
    embedded default, the server of the data directory: the running service's (used,
    never stopped), or else one started for this command, under the data directory's
    lock, and stopped after it."""
    embedded = EmbeddedRedis(settings.data_dir) if settings.embedded and not url else None
    if embedded is not None:
        url = embedded.start(adopt=True).url
    url = url or settings.redis_url
    client = connect(settings, url)
    try:
        yield client, Layout.for_url(url, settings.redis_partitions)
    finally:
        await client.aclose()
        if embedded is not None:
            embedded.stop()


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    load_settings({"REDIS_URL": args.to}, config_file=None)  # ConfigError if the URL is wrong
    async with _store(settings, args.source) as (source, source_layout), _store(
        settings, args.to
    ) as (target, target_layout):
        await check_layout(target, target_layout)
        try:
            copied = await migrate(
                source, source_layout, target, target_layout,
                progress=lambda line: print(line, file=sys.stderr),
            )
        except (redis.exceptions.RedisError, OSError) as exc:
            print(f"ticker: the copy stopped: {exc}. Empty the destination and run it again.",
                  file=sys.stderr)
            return 1
    print(
        f"Copied {copied.channels} channels ({copied.events} events, {copied.briefs} retained "
        f"briefs, {copied.histories} brief histories, {copied.idempotency_records} idempotency "
        f"records), {copied.channel_objects} channel objects, {copied.api_keys} API keys and "
        f"{copied.audit_entries} audit entries. Point REDIS_URL at the destination and start "
        "ticker.", file=sys.stderr,
    )
    return 0


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    async with _store(settings) as (client, layout):
        keys = KeyStore(client, layout)
        if args.keys_command == "create":
            try:
                key = await keys.create(
                    args.name, args.channels, args.role, args.expires_in, by=cli_actor()
                )
            except KeyAdminError as exc:
                print(f"ticker: {exc}", file=sys.stderr)
                return 1
            print(key)
            scope = "every channel" if args.role == "admin" else ", ".join(args.channels)
            print(
                f"Created {args.role} key {args.name!r} for {scope}. It is shown once: "
                "store it now.", file=sys.stderr,
            )
            return 0
        if args.keys_command == "list":
            found = await keys.list()
            if not found:
                print("No keys yet: create one with 'ticker keys create --name NAME --channel CH'.",
                      file=sys.stderr)
            for line in _listing(found):
                print(line)
            return 0
        if args.keys_command == "rotate":
            try:
                key, valid_until = await keys.rotate(args.name, args.grace, by=cli_actor())
            except KeyAdminError as exc:
                print(f"ticker: {exc}", file=sys.stderr)
                return 1
            print(key)
            print(
                f"Rotated key {args.name!r}: the new secret is shown once, store it now. The "
                f"old secret works until {valid_until}.", file=sys.stderr,
            )
            return 0
        if await keys.revoke(args.name, by=cli_actor()):
            print(f"Revoked key {args.name!r}.", file=sys.stderr)
            return 0
        print(f"ticker: there is no key named {args.name!r} ('ticker keys list' shows them).",
              file=sys.stderr)
        return 1


async def _channels(settings: Settings, args: argparse.Namespace) -> int:
    """``ticker channels ACTION``; a refusal (ProblemError) is printed by ``main``."""
    async with _store(settings) as (client, layout):
        channels = ChannelStore(client, layout)
        command = args.channels_command
        if command == "list":
            found = await channels.list()
            if not found:
                print("No channels yet: create one with 'ticker channels create NAME'.",
                      file=sys.stderr)
            for info in found:
                print("\t".join(v or "-" for v in (
                    info.name, info.title, info.lang, info.time_zone, info.created_at,
                    "private" if info.private else "public",
                )))
            return 0
        if command == "delete":
            retained = await channels.delete(args.name, cli_actor(), force=args.force)
            also = f", with its {retained} retained briefs" if retained else ""
            print(f"Deleted channel {args.name!r}{also}; its subscribers were told.",
                  file=sys.stderr)
            return 0
        values = {f: getattr(args, f) for f in FIELDS if getattr(args, f) is not None}
        if command == "create":
            info = await channels.create(args.name, values, cli_actor())
            print(f"Created channel {info.name!r}.", file=sys.stderr)
            return 0
        for cleared in args.clear:
            field = cleared.replace("-", "_")
            if field in values:
                raise ChannelError(f"Give --{cleared} or --clear {cleared}, not both.")
            values[field] = None
        if not values:
            raise ChannelError(
                "Nothing to change: give --title, --lang, --time-zone, --private, --public "
                "or --clear FIELD.",
                status=400,
            )
        info, _ = await channels.update(args.name, values, cli_actor())
        print(f"Updated channel {info.name!r}.", file=sys.stderr)
        return 0


async def _tokens(settings: Settings, args: argparse.Namespace) -> int:
    """``ticker tokens list-secrets|rotate-secret|revoke-secret``: never prints a secret."""
    async with _store(settings) as (client, layout):
        tokens = Tokens(client, layout, settings.reader_token_secret, SecretCache(),
                        settings.public_keys)
        if args.tokens_command == "list-secrets":
            if settings.reader_token_secret:
                print("Reader tokens are signed with the setting 'reader_token_secret' (kid "
                      f"{CONFIG_KID!r}); secrets in the store are not used.", file=sys.stderr)
            current, found = await tokens.list()
            for kid, created in found:
                print(f"{kid}\t{created}\t{'current' if kid == current else '-'}")
            if not found:
                print("No signing secret yet: the first token minted makes one.", file=sys.stderr)
            # The CMS's public keys: they verify the tokens it signs; ticker signs none.
            for kid, key in settings.public_keys.items():
                print(f"{kid}\t-\tpublic {key.algorithm} ({key.description}), "
                      "from reader_token_public_keys")
            if settings.public_keys:
                print("Public keys verify tokens signed by your CMS; to revoke one, remove it "
                      "from the setting 'reader_token_public_keys' and restart every node.",
                      file=sys.stderr)
            return 0
        if args.tokens_command == "rotate-secret":
            kid = await tokens.rotate(cli_actor())
            print(kid)
            print(f"New tokens are signed with secret {kid!r}; revoke an older one with "
                  "'ticker tokens revoke-secret KID' once its tokens may stop working.",
                  file=sys.stderr)
            return 0
        await tokens.revoke(args.kid, cli_actor())
        print(f"Revoked signing secret {args.kid!r}: its tokens stop working on every server "
              "now, live subscriptions included.", file=sys.stderr)
        return 0


async def _audit(settings: Settings, args: argparse.Namespace) -> int:
    """``ticker audit``: one tab-separated line per entry, newest first."""
    async with _store(settings) as (client, layout):
        entries = await AuditLog(client, layout).read(args.limit)
    if not entries:
        print("The audit stream is empty: key and channel management is recorded there.",
              file=sys.stderr)
    for e in entries:
        details = orjson.dumps(e.details, option=orjson.OPT_SORT_KEYS).decode()
        print(f"{e.at}\t{e.action}\t{e.target}\t{e.by}\t{details}")
    return 0


def _listing(keys: Sequence[ApiKey]) -> list[str]:
    """One tab-separated line per key: name, role, channels, created, expires ('never'),
    and, after a rotation, until when the old secret still works ('-': none does)."""
    now = time.time()
    grace: dict[str, str] = {}
    for key in keys:
        if key.retired and key.valid_until is not None and (key.ends or 0) > now:
            grace[key.name] = max(grace.get(key.name, ""), key.valid_until)
    return [
        f"{k.name}\t{k.role}\t{','.join(k.channels)}\t{k.created_at}\t{k.expires_at or 'never'}"
        f"\t{grace.get(k.name, '-')}"
        for k in keys if not k.retired
    ]
