"""Settings: read once at start from a TOML file and the environment, then validated.

Precedence, lowest first: the defaults below, the TOML file (``TICKER_CONFIG``, else
``config/ticker.toml`` in the working directory when it exists), then environment
variables: ``TICKER_<NAME>`` for every setting, plus the conventional ``PORT`` and
``REDIS_URL``. Every setting and its default is documented in ``config/ticker.toml``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ticker import cluster, jwks, sentinel
from ticker.errors import ConfigError
from ticker.keys import MAX_PARTITIONS, is_cluster_url

DEFAULT_CONFIG_FILE = Path("config/ticker.toml")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    # Server
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # Processes serving host:port, each with its own hub and stream reader (ticker.supervisor).
    # "auto" in the file or the environment: the CPUs this process may run on.
    workers: int = 1

    # Storage: an empty redis_url starts the embedded server inside data_dir.
    redis_url: str = ""
    data_dir: str = "./var"
    redis_partitions: int = 16  # Redis Cluster only: partitions of the channels (ticker.keys)
    redis_pool_size: int = 64  # writes (publish, correct, retract) and key lookups
    redis_read_pool_size: int = 16  # anonymous reads: channel opens, catch-ups, GET lists
    redis_timeout: float = 5.0

    # Redis high availability (docs/deployment.md, "Redis Sentinel").
    # A publish, correction or retraction is answered only once this many replicas have
    # it (WAIT); 0: as soon as the primary has it.
    publish_min_replicas: int = 0
    publish_replica_timeout_ms: int = 1000  # how long it waits for them (else 503)
    failover_check_interval: float = 2.0  # seconds between checks that the reader's server is the primary

    # Retention of each channel's event log, and the idempotency window.
    retention_max_events: int = 1000
    retention_max_age: int = 7 * 24 * 3600
    idempotency_window: int = 24 * 3600

    # Reads
    snapshot_size: int = 50
    list_max_limit: int = 200
    replay_window: int = 1000  # newest events per followed channel kept in memory
    # HTTP reads of a channel (lists, pages, feeds) make this process follow it this long
    # (renewed by each read), answering them from memory: ticker.views.
    http_follow_seconds: float = 60.0
    http_follow_max_channels: int = 512

    # Limits
    max_body_bytes: int = 16 * 1024
    ws_max_message_bytes: int = 4 * 1024
    max_subscriptions: int = 32
    outbox_max_messages: int = 1000
    outbox_max_bytes: int = 1024 * 1024
    allowed_origins: tuple[str, ...] = ("*",)
    publish_rate_per_minute: int = 600
    # A first publish to a channel that has no object creates it (ticker.channels); when
    # false, channels are made by an operator or an admin key only.
    auto_create_channels: bool = True
    # Seconds an API key that authenticated is kept in the process (a revoke reaches
    # every process through the doorbell at once; this bounds it whatever happens); 0: off.
    api_key_cache_seconds: float = 60.0
    # The secret that signs reader tokens (ticker.tokens), the same on every node; empty:
    # secrets are made and kept in the store ('ticker tokens rotate-secret' / 'revoke-secret').
    reader_token_secret: str = dataclasses.field(default="", repr=False)  # never logged
    # The public keys of a CMS that signs reader tokens itself (ES256, RS256): a JWK Set,
    # or the path of a file holding one (ticker.jwks); empty: only ticker's own tokens.
    reader_token_public_keys: str = ""

    # Limits for the open internet (docs/security.md)
    max_head_bytes: int = 32 * 1024  # one request head (431 above)
    max_header_count: int = 100  # header fields of one request (431 above)
    max_connections: int = 0  # per process; 0: the open-file limit less a reserve
    max_connections_per_address: int = 1000  # 0: no limit
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    ws_max_fragments: int = 64  # frames of one inbound WebSocket message (close 1009 above)
    ws_message_rate: float = 10.0  # inbound WebSocket messages per second, sustained ...
    ws_message_burst: int = 100  # ... and in a burst (close 1008 above)
    public_url: str = ""  # e.g. https://ticker.example.org: absolute links in feeds and pages

    # Timeouts (seconds)
    idle_timeout: float = 10.0  # a new connection that sends nothing is closed
    head_timeout: float = 10.0  # from the first byte of a request head to its end (408)
    body_timeout: float = 15.0  # from the end of the head to the end of the body (408)
    keepalive_timeout: float = 5.0  # idle between two requests on one connection
    readyz_timeout: float = 1.0  # GET /readyz answers 503 when Redis is slower than this
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    shutdown_drain: float = 2.0
    reader_block_ms: int = 5000
    reconnect_max_delay: float = 5.0
    readers_report_interval: float = 5.0

    # Server-Sent Events
    sse_heartbeat: float = 15.0  # seconds of silence before a ": ping" comment
    sse_retry_ms: int = 3000  # the "retry:" reconnection delay advised to clients

    # reader_token_public_keys parsed (not a setting: made by the validation, once per
    # load, so that no request parses a key).
    _public_keys: jwks.PublicKeys | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some settings changed, validated like the original."""
        return _validated(dataclasses.replace(self, **changes))

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    @property
    def public_keys(self) -> jwks.PublicKeys:
        """The CMS keys of ``reader_token_public_keys``, parsed when the settings were
        validated (ConfigError here only for settings that never were)."""
        if self._public_keys is None:
            object.__setattr__(self, "_public_keys", jwks.load(self.reader_token_public_keys))
        assert self._public_keys is not None
        return self._public_keys


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.init}
_POSITIVE = {
    "workers",
    "redis_pool_size",
    "redis_partitions",
    "redis_read_pool_size",
    "max_head_bytes",
    "max_header_count",
    "ws_max_fragments",
    "ws_message_rate",
    "ws_message_burst",
    "idle_timeout",
    "head_timeout",
    "body_timeout",
    "keepalive_timeout",
    "readyz_timeout",
    "redis_timeout",
    "publish_replica_timeout_ms",
    "failover_check_interval",
    "retention_max_events",
    "idempotency_window",
    "snapshot_size",
    "http_follow_seconds",
    "http_follow_max_channels",
    "replay_window",
    "list_max_limit",
    "max_body_bytes",
    "ws_max_message_bytes",
    "max_subscriptions",
    "outbox_max_messages",
    "outbox_max_bytes",
    "ping_interval",
    "ping_timeout",
    "reader_block_ms",
    "reconnect_max_delay",
    "readers_report_interval",
    "sse_heartbeat",
    "sse_retry_ms",
}
_NON_NEGATIVE = {
    "retention_max_age", "shutdown_drain", "publish_rate_per_minute", "max_connections",
    "max_connections_per_address", "publish_min_replicas", "api_key_cache_seconds",
}
# Integer settings that also take the word "auto" (workers: one per CPU), resolved when read.
_AUTO = {"workers"}
_LOG_LEVELS = {"critical", "error", "warning", "info", "debug", "trace"}


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Read the TOML file and the environment once, and validate the result."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}

    path = Path(config_file or env.get("TICKER_CONFIG") or DEFAULT_CONFIG_FILE)
    if config_file or env.get("TICKER_CONFIG") or path.exists():
        values.update(_read_toml(path))

    for name, field in _FIELDS.items():
        raw = env.get(f"TICKER_{name.upper()}")
        if raw is not None:
            values[name] = _cast_env(name, field.type, raw)
    if "PORT" in env and "TICKER_PORT" not in env:
        values["port"] = _cast_env("port", "int", env["PORT"], variable="PORT")
    if "REDIS_URL" in env and "TICKER_REDIS_URL" not in env:
        values["redis_url"] = env["REDIS_URL"]

    return _validated(Settings(**values))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"The configuration file {path} does not exist. "
            "Point TICKER_CONFIG at an existing file, or unset it to use the defaults."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The configuration file {path} is not valid TOML: {exc}.") from None
    # Settings may sit at the top level or under a [ticker] table (then nothing else may).
    table = raw.get("ticker", raw)
    if not isinstance(table, dict):
        raise ConfigError(f"In {path}, 'ticker' must be a table: put the settings under [ticker].")
    if table is not raw and len(raw) > 1:
        other = next(name for name in raw if name != "ticker")
        raise ConfigError(
            f"Unknown setting {other!r} in {path}: with a [ticker] table, every setting "
            "goes inside it."
        )
    values: dict[str, Any] = {}
    for name, value in table.items():
        if name not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise ConfigError(
                f"Unknown setting {name!r} in {path}. Known settings are: {known}."
            )
        values[name] = _cast_toml(name, _FIELDS[name].type, value, path)
    return values


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask: taskset and cpusets count; a
    container's CPU quota does not), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


def _cast_toml(name: str, kind: Any, value: Any, path: Path) -> Any:
    if name in _AUTO and value == "auto":
        return cpu_count()
    expected: dict[str, type | tuple[type, ...]] = {
        "int": int, "float": (int, float), "str": str, "bool": bool,
    }
    if kind == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"Setting {name!r} in {path} must be a list of strings.")
        return tuple(value)
    want = expected[str(kind)]
    if (isinstance(value, bool) and kind != "bool") or not isinstance(value, want):
        also = ' or "auto"' if name in _AUTO else ""
        raise ConfigError(
            f"Setting {name!r} in {path} must be of type {kind}{also}, not {value!r}."
        )
    number: Any = value
    return float(number) if kind == "float" else value


def _cast_env(name: str, kind: Any, raw: str, variable: str | None = None) -> Any:
    variable = variable or f"TICKER_{name.upper()}"
    kind = str(kind)
    if name in _AUTO and raw.strip() == "auto":
        return cpu_count()
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"Environment variable {variable}={raw!r} must be "
            f"{'an integer' if kind == 'int' else 'a number'}"
            f"{' or auto' if name in _AUTO else ''}."
        ) from None
    if kind == "tuple[str, ...]":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind == "bool":
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"Environment variable {variable}={raw!r} must be true or false.")
    return raw


def _validated(settings: Settings) -> Settings:
    for name, field in _FIELDS.items():
        value = getattr(settings, name)
        if field.type == "float" and not math.isfinite(value):
            raise ConfigError(
                f"Setting {name!r} must be a finite number, not {value!r} "
                f"(set it in the configuration file or TICKER_{name.upper()})."
            )
    for name in _POSITIVE:
        if getattr(settings, name) <= 0:
            raise ConfigError(
                f"Setting {name!r} must be greater than zero, not {getattr(settings, name)!r} "
                f"(set it in the configuration file or TICKER_{name.upper()})."
            )
    for name in _NON_NEGATIVE:
        if getattr(settings, name) < 0:
            raise ConfigError(f"Setting {name!r} must be zero or more, not {getattr(settings, name)!r}.")
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"Setting 'port' must be between 0 and 65535, not {settings.port}.")
    if settings.log_level not in _LOG_LEVELS:
        raise ConfigError(
            f"Setting 'log_level' must be one of {', '.join(sorted(_LOG_LEVELS))}, "
            f"not {settings.log_level!r}."
        )
    if sentinel.is_sentinel_url(settings.redis_url):
        sentinel.parse_url(settings.redis_url)  # ConfigError says what is wrong
    elif is_cluster_url(settings.redis_url):
        cluster.parse_url(settings.redis_url)
    elif settings.redis_url and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError(
            f"Setting 'redis_url' must start with redis://, rediss:// or unix://, or be "
            f"{sentinel.URL_FORMAT}, or {cluster.URL_FORMAT}; not "
            f"{settings.redis_url.split('?', 1)[0]!r}. Leave it empty to use the embedded server."
        )
    if settings.redis_partitions > MAX_PARTITIONS:
        raise ConfigError(
            f"Setting 'redis_partitions' must be at most {MAX_PARTITIONS}, not "
            f"{settings.redis_partitions}: each partition is a blocking read per process."
        )
    if (
        settings.publish_min_replicas
        and settings.publish_replica_timeout_ms >= settings.redis_timeout * 1000
    ):
        raise ConfigError(
            "Setting 'publish_replica_timeout_ms' must be shorter than 'redis_timeout' "
            f"({settings.redis_timeout:g} s): a publish waits for the replicas on a "
            "connection that gives up after redis_timeout."
        )
    for origin in settings.allowed_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ConfigError(
                f"Setting 'allowed_origins' holds {origin!r}: each entry must be '*' or an "
                "origin such as 'https://news.example.org'."
            )
    if settings.public_url and (
        not settings.public_url.startswith(("http://", "https://"))
        or urlsplit(settings.public_url).path not in ("", "/")
        or urlsplit(settings.public_url).query
    ):
        raise ConfigError(
            f"Setting 'public_url' must be the service's address as readers reach it, such "
            f"as 'https://ticker.example.org', not {settings.public_url!r}."
        )
    for entry in settings.forwarded_allow_ips:
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"Setting 'forwarded_allow_ips' holds {entry!r}: each entry must be an IP "
                    "address or network (such as '10.0.0.0/8'), or '*' to trust every peer."
                ) from None
    if settings.reader_token_secret and len(settings.reader_token_secret.encode()) < 32:
        raise ConfigError(
            "Setting 'reader_token_secret' must be at least 32 bytes of random text (such as "
            "the output of 'openssl rand -base64 32'), or empty to keep secrets in the store."
        )
    # The CMS's keys, read (from the file it names) and checked once, here.
    object.__setattr__(settings, "_public_keys", jwks.load(settings.reader_token_public_keys))
    if settings.list_max_limit < settings.snapshot_size:
        raise ConfigError("Setting 'list_max_limit' must be at least 'snapshot_size'.")
    return settings
