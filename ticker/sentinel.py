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
_SERVER_OPTIONS = {
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
URL_OPTIONS = {**_SERVER_OPTIONS, **_SENTINEL_OPTIONS}
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
        options = dict(self.options)
        kwargs: dict[str, Any] = {"db": self.db}
        for name in ("username", "password"):
            if name in options:
                kwargs[name] = options[name]
        if options.get("ssl"):
            kwargs["ssl"] = True
            kwargs.update((k, v) for k, v in options.items() if k.startswith("ssl_"))
        return kwargs

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
        raise ConfigError(f"{_shown(url)} is not a Sentinel URL: use {URL_FORMAT}.")
    parts = urlsplit(url)
    netloc = url[len(SCHEME):].split("/", 1)[0].split("?", 1)[0]
    if "@" in netloc:
        raise ConfigError(
            f"In {_shown(url)}, put credentials in query parameters (?password=..., "
            "?sentinel_password=...), not before the hosts: it must be clear which servers "
            "they are for."
        )
    sentinels = tuple(_host_port(url, item) for item in netloc.split(","))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ConfigError(
            f"{_shown(url)} must name the primary as Sentinel monitors it, after the hosts "
            f"(and optionally a database number): {URL_FORMAT}."
        )
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ConfigError(f"In {_shown(url)}, the database {path[1]!r} must be a number.")
        db = int(path[1])
    options: list[tuple[str, Any]] = []
    for name, values in parse_qs(parts.query, keep_blank_values=True, strict_parsing=False).items():
        if name not in URL_OPTIONS:
            known = ", ".join(URL_OPTIONS)
            raise ConfigError(
                f"Unknown option {name!r} in the Sentinel URL; known options are: {known}."
            )
        value: Any = values[-1]
        if name in _BOOLEAN:
            if value.lower() not in _TRUE | _FALSE:
                raise ConfigError(
                    f"Option {name!r} of the Sentinel URL must be true or false, not {value!r}."
                )
            value = value.lower() in _TRUE
        elif name == "ssl_cert_reqs" and value not in ("required", "optional", "none"):
            raise ConfigError(
                f"Option 'ssl_cert_reqs' of the Sentinel URL must be required, optional or "
                f"none, not {value!r}."
            )
        options.append((name, value))
    return SentinelURL(sentinels, path[0], db, tuple(options))


def _host_port(url: str, item: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
    if not sep:
        host, port = item, str(DEFAULT_SENTINEL_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"In {_shown(url)}, {item!r} is not a sentinel's HOST:PORT (for example "
            "10.0.0.1:26379)."
        )
    return host, int(port)


def _shown(url: str) -> str:
    """The URL without its query, which may hold passwords."""
    return repr(url.split("?", 1)[0])


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
    manager = cast(Any, Sentinel)(list(url.sentinels), sentinel_kwargs=sentinel_kwargs)
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
