"""Redis Sentinel: where the primary is, and staying on it through failovers.

``REDIS_URL=redis+sentinel://HOST:PORT[,HOST:PORT...]/PRIMARY_NAME[/DB][?OPTIONS]`` names
the sentinels and the name they monitor the primary under (``sentinel monitor NAME ...``
in their configuration). Credentials and TLS are query parameters (``URL_OPTIONS``), so
that nothing is ambiguous between the sentinels and the data servers::

    redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/ticker/0?password=s3cret

Every connection asks Sentinel for the primary when it opens, through redis-py's own
``SentinelConnectionPool``. What redis-py does not do is notice a failover on a connection
that stays open: it asks Sentinel only when a connection is opened, and a write on a
demoted primary is the first sign (``READONLY``, which it turns into a ``ConnectionError``
and a reconnection). A connection that only reads (the stream reader's) never gets that
sign, and one on a primary cut off from the sentinels still takes writes that the next
primary will not have. So ``PrimaryPool`` also drops a connection to a former primary
when it comes back to the pool, and ``serves_as_primary`` is checked periodically by the
reader (``ROLE`` on its own connection, and the address Sentinel gives now): see
``ticker.reader``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from ticker.errors import ConfigError

SCHEME = "redis+sentinel://"
DEFAULT_SENTINEL_PORT = 26379

# Query parameters: the data servers' credentials and TLS, then the sentinels' own.
SERVER_OPTIONS = {
    "username": "user name on the primary and replicas (ACL)",
    "password": "password of the primary and replicas",
    "ssl": "true: TLS to the primary and replicas",
    "ssl_ca_certs": "CA bundle (a file) to check the servers' certificates with",
    "ssl_certfile": "client certificate (a file), for servers that ask for one",
    "ssl_keyfile": "its private key (a file)",
    "ssl_cert_reqs": "required (default), optional or none",
    "ssl_check_hostname": "true (default) or false",
}
_SENTINEL_OPTIONS = {
    "sentinel_username": "user name on the sentinels (ACL)",
    "sentinel_password": "password of the sentinels (their requirepass)",
    "sentinel_ssl": "true: TLS to the sentinels (the ssl_* files above are used for them too)",
}
URL_OPTIONS = {**SERVER_OPTIONS, **_SENTINEL_OPTIONS}
_BOOLEAN = {"ssl", "ssl_check_hostname", "sentinel_ssl"}
_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}
URL_FORMAT = (
    "redis+sentinel://HOST:PORT[,HOST:PORT...]/PRIMARY_NAME[/DB], with credentials and TLS "
    "as query parameters (" + ", ".join(URL_OPTIONS) + ")"
)


@dataclasses.dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    primary_name: str
    db: int = 0
    options: tuple[tuple[str, Any], ...] = ()  # (name, value) from the query, checked

    def server_kwargs(self) -> dict[str, Any]:
        """redis-py connection arguments for the primary (credentials, TLS, db)."""
        return {"db": self.db, **server_kwargs(self.options)}

    def sentinel_kwargs(self) -> dict[str, Any]:
        """redis-py connection arguments for the sentinels."""
        options = dict(self.options)
        kwargs: dict[str, Any] = {}
        if "sentinel_username" in options:
            kwargs["username"] = options["sentinel_username"]
        if "sentinel_password" in options:
            kwargs["password"] = options["sentinel_password"]
        if options.get("sentinel_ssl"):
            kwargs["ssl"] = True
            kwargs.update((k, v) for k, v in options.items() if k.startswith("ssl_"))
        return kwargs


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SCHEME)


def parse_url(url: str) -> SentinelURL:
    """Parse and check a ``redis+sentinel://`` URL; ConfigError says what is wrong."""
    if not is_sentinel_url(url):
        raise ConfigError(f"{shown(url)} is not a Sentinel URL: use {URL_FORMAT}.")
    parts = urlsplit(url)
    netloc = url[len(SCHEME):].split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc:
        raise ConfigError(
            f"In {shown(url)}, put credentials in query parameters (?password=..., "
            "?sentinel_password=...), not before the hosts: it must be clear which servers "
            "they are for."
        )
    sentinels = tuple(
        host_port(url, item, DEFAULT_SENTINEL_PORT) for item in netloc.split(",")
    )
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigError(
            f"{shown(url)} must name the primary as Sentinel monitors it, after the hosts "
            f"(and optionally a database number): {URL_FORMAT}."
        )
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ConfigError(f"In {shown(url)}, the database {path[1]!r} must be a number.")
        db = int(path[1])
    options = parse_options(parts.query, URL_OPTIONS, "Sentinel URL")
    return SentinelURL(sentinels, path[0], db, options)


def parse_options(
    query: str, allowed: dict[str, str], what: str
) -> tuple[tuple[str, Any], ...]:
    """The (name, value) options of a URL's query, checked against ``allowed`` (booleans
    made booleans); ConfigError names what is wrong (``what``: "Sentinel URL", ...)."""
    options: list[tuple[str, Any]] = []
    for name, values in parse_qs(query, keep_blank_values=True, strict_parsing=False).items():
        if name not in allowed:
            known = ", ".join(allowed)
            raise ConfigError(f"Unknown option {name!r} in the {what}; known options are: {known}.")
        value: Any = values[-1]
        if name in _BOOLEAN:
            if value.lower() not in _TRUE | _FALSE:
                raise ConfigError(
                    f"Option {name!r} of the {what} must be true or false, not {value!r}."
                )
            value = value.lower() in _TRUE
        elif name == "ssl_cert_reqs" and value not in ("required", "optional", "none"):
            raise ConfigError(
                f"Option 'ssl_cert_reqs' of the {what} must be required, optional or none, "
                f"not {value!r}."
            )
        options.append((name, value))
    return tuple(options)


def server_kwargs(options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """redis-py connection arguments for data servers (credentials, TLS) from the
    options of a URL."""
    values = dict(options)
    kwargs: dict[str, Any] = {}
    for name in ("username", "password"):
        if name in values:
            kwargs[name] = values[name]
    if values.get("ssl"):
        kwargs["ssl"] = True
        kwargs.update((k, v) for k, v in values.items() if k.startswith("ssl_"))
    return kwargs


def host_port(url: str, item: str, default_port: int, what: str = "sentinel") -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, or ``[IPv6]:PORT``) from a list of hosts in a URL."""
    host, sep, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
    if not sep:
        host, port = item, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"In {shown(url)}, {item!r} is not a {what}'s HOST:PORT (for example "
            f"10.0.0.1:{default_port})."
        )
    return host, int(port)


def shown(url: str) -> str:
    """The URL without its query, which may hold passwords."""
    return repr(url.split("?", 1)[0])


class Sentinels(Sentinel):
    """redis-py's ``Sentinel``, asked by one task at a time.

    When a sentinel answers, redis-py moves it to the front of its list by swapping two
    places; two tasks that ask at once during a failover (the reader, a publish, the
    readers' report: every new connection asks) can swap on a list the other has just
    changed, which leaves one sentinel twice in the list and another out of it, its
    connections never closed. A lock keeps the list a permutation; ``aclose`` closes
    every sentinel client this object made."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._asking = asyncio.Lock()
        self._clients = list(self.sentinels)

    async def discover_master(self, service_name: str) -> Any:
        async with self._asking:
            return await super().discover_master(service_name)

    async def aclose(self) -> None:
        self.sentinels = list(self._clients)
        await super().aclose()


class PrimaryPool(SentinelConnectionPool, BlockingConnectionPool):
    """Connections to the server Sentinel names primary (redis-py asks it when a
    connection opens), waiting for a free connection rather than failing under load, like
    the pools of a single server (``ticker.store.connect``).

    A connection that comes back to the pool while the primary is known to be elsewhere
    is dropped: it was opened to the former primary, and would otherwise be reused there
    until a write failed on it (and reads never fail on a demoted primary)."""

    async def release(self, connection: Any) -> None:
        address = self.master_address
        if address is not None and (connection.host, connection.port) != tuple(address):
            await connection.disconnect()
        await super().release(connection)

    async def aclose(self) -> None:
        """Close the connections, then the ones to the sentinels (this pool's own)."""
        await super().aclose()
        await self.sentinel_manager.aclose()


def client(
    url: SentinelURL, *, pool_size: int, pool_timeout: float, socket_timeout: float | None,
    connect_timeout: float, single: bool = False,
) -> aioredis.Redis:
    """A client of the primary that ``url`` names. ``single``: one connection of its own
    (the stream reader's), kept until an error, then opened again to the primary of the
    moment. Each client has its own connections to the sentinels, closed with it."""
    sentinel_kwargs = {
        "socket_timeout": connect_timeout,
        "socket_connect_timeout": connect_timeout,
        **url.sentinel_kwargs(),
    }
    # (redis-py's Sentinel classes carry no type hints.)
    manager = Sentinels(list(url.sentinels), sentinel_kwargs=sentinel_kwargs)
    pool = cast(Any, PrimaryPool)(
        url.primary_name, manager,
        max_connections=1 if single else pool_size,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        **url.server_kwargs(),
    )
    redis = aioredis.Redis(connection_pool=pool, single_connection_client=single)
    redis.auto_close_connection_pool = True  # the client owns its pool, as from_pool does
    return redis


async def follow_primary(redis: aioredis.Redis) -> tuple[str, int] | None:
    """Ask Sentinel where the primary is now, so that the pool drops its idle
    connections to a former one (and any other as it comes back). The primary's address,
    or None for a client of a single server."""
    pool: Any = redis.connection_pool
    if not isinstance(pool, PrimaryPool):
        return None
    address = await cast(Any, pool).get_master_address()
    return str(address[0]), int(address[1])


async def serves_as_primary(redis: aioredis.Redis) -> bool:
    """Whether the server behind this client is the primary: it says so (``ROLE``) and,
    with Sentinel, it is the one Sentinel names now (a primary cut off from the sentinels
    still says "master" after they promoted another). For a single-connection client the
    check is made on that very connection."""
    role: Any = await redis.role()
    kind = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
    if kind != "master":
        return False
    primary = await follow_primary(redis)
    connection = redis.connection
    if primary is None or connection is None:
        return True
    return (str(connection.host), int(connection.port)) == primary
