"""Who may hold a connection: limits per process and per client address.

Every connection ``ticker serve`` accepts is counted here from ``connection_made`` to
``connection_lost``, whichever protocol owns the socket by then (``ticker.wsproto``).

* **Per process** (``max_connections``): a process must never reach its open-file limit,
  where ``accept()`` fails and asyncio stops accepting for a second at a time, and Redis
  connections, log files and the embedded store's socket can no longer be opened. By
  default it is the limit less a reserve of a tenth (at least 256 descriptors).
* **Per client address** (``max_connections_per_address``): one machine must not take a
  process's connections. IPv6 addresses count per /64, the block one subscriber line or
  host is given (an attacker has all 2**64 addresses of it). The address is the TCP
  peer's, or for a peer in ``forwarded_allow_ips`` (a proxy) the one it forwards in
  ``X-Forwarded-For`` or ``Forwarded`` (RFC 7239), read from the right as uvicorn reads
  it: the first address that is not itself a trusted proxy.

A connection over a limit is not dropped unanswered while there is room to say why: it
becomes a *refusal*, its request head is read (under the same limits and timeouts) and
answered 429 or 503 (a WebSocket upgrade gets its 101 and then close code 1013
with a reason), so that a browser or a client library can tell its user. Refusals take
descriptors too, so at most ``refusal_slots`` are in flight; past that, or past the
process limit plus those slots, a new connection is closed at once.

A connection through a trusted proxy is counted against the proxy for the process limit
only; its WebSocket handshake names the client, and from then on the subscriber counts
against the client's address. Plain HTTP requests through a proxy are not counted per
client: a proxy carries many clients' requests on one kept-alive connection (limit them
at the proxy, nginx's ``limit_conn``).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import resource
from collections.abc import Iterable

from uvicorn.middleware.proxy_headers import _TrustedHosts

log = logging.getLogger("ticker.admission")

MIN_RESERVE = 256  # descriptors kept for Redis, files and refusals at least


class Verdict(enum.Enum):
    ADMIT = "admit"
    BUSY = "busy"  # the process is full: 503, close 1013
    CROWDED = "crowded"  # the client's address holds its share: 429, close 1013
    DROP = "drop"  # no room even to refuse: close at once


def open_file_limit() -> int:
    """The soft limit on open files, raised to the hard limit first where allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def address_key(host: str) -> str:
    """What one client address counts as: itself, or its /64 for IPv6 (an IPv4 address
    mapped into IPv6 counts as the IPv4 address)."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host  # a unix socket peer, or a forwarded value that is no address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def forwarded_for(values: Iterable[str]) -> list[str]:
    """The ``for=`` nodes of ``Forwarded`` header values (RFC 7239 section 4), in order,
    without quotes, brackets or ports; an obfuscated or ``unknown`` node as it is."""
    nodes: list[str] = []
    for value in values:
        for element in value.split(","):
            for pair in element.split(";"):
                name, _, node = pair.strip().partition("=")
                if name.strip().lower() != "for":
                    continue
                node = node.strip().strip('"')
                if node.startswith("["):
                    node = node[1:].partition("]")[0]
                elif node.count(":") == 1:
                    node = node.partition(":")[0]
                nodes.append(node)
    return nodes


class Admission:
    """The connection counts of one process."""

    def __init__(
        self,
        max_connections: int,
        per_address: int,
        trusted: Iterable[str],
        refusal_slots: int | None = None,
    ) -> None:
        limit = open_file_limit()
        reserve = max(MIN_RESERVE, limit // 10)
        ceiling = max(1, limit - reserve)
        if max_connections > ceiling:
            log.warning(
                "max_connections = %d is above what %d open files allow; using %d "
                "(raise the open-file limit, e.g. LimitNOFILE= in systemd, to allow more)",
                max_connections, limit, ceiling,
            )
        self.max_connections = min(max_connections, ceiling) if max_connections else ceiling
        self.per_address = per_address
        self.refusal_slots = refusal_slots if refusal_slots is not None else reserve // 4
        self.trusted = _TrustedHosts(list(trusted))
        self.open = 0  # admitted connections
        self.refusing = 0  # refusals in flight
        self.by_address: dict[str, int] = {}

    def arrive(self, peer: str | None) -> tuple[Verdict, str | None]:
        """A new TCP connection from ``peer``: the verdict, and the address key it counts
        against (None for a trusted proxy, whose clients count at their handshake)."""
        key = None if peer is None or peer in self.trusted else address_key(peer)
        if self.open >= self.max_connections:
            verdict = Verdict.BUSY
        elif key is not None and self.per_address and self.by_address.get(key, 0) >= self.per_address:
            verdict = Verdict.CROWDED
        else:
            self.open += 1
            if key is not None:
                self.by_address[key] = self.by_address.get(key, 0) + 1
            return Verdict.ADMIT, key
        if self.refusing >= self.refusal_slots:
            return Verdict.DROP, None
        self.refusing += 1
        return verdict, None

    def leave(self, verdict: Verdict, key: str | None) -> None:
        """The end of a connection that ``arrive`` answered with ``verdict``."""
        if verdict is Verdict.ADMIT:
            self.open -= 1
            if key is not None:
                self.release(key)
        elif verdict is not Verdict.DROP:
            self.refusing -= 1

    def client_of(self, peer: str | None, forwarded: list[str], x_forwarded_for: list[str]) -> str | None:
        """The client behind a trusted proxy, from the headers it forwards; None when the
        peer is not a trusted proxy or names no client."""
        if peer is None or peer not in self.trusted:
            return None
        if x_forwarded_for:
            host, _ = self.trusted.get_trusted_client_address(", ".join(x_forwarded_for))
            return host or None
        nodes = forwarded_for(forwarded)
        if not nodes:
            return None
        for node in reversed(nodes):
            if node not in self.trusted:
                return node
        return nodes[0]

    def claim(self, client: str) -> str | None:
        """Count a subscriber behind a proxy against its client's address: the key to
        release when it ends, or None when that address already holds its share."""
        key = address_key(client)
        count = self.by_address.get(key, 0)
        if self.per_address and count >= self.per_address:
            return None
        self.by_address[key] = count + 1
        return key

    def release(self, key: str) -> None:
        """The end of a subscriber that ``claim`` counted."""
        count = self.by_address[key] - 1
        if count:
            self.by_address[key] = count
        else:
            del self.by_address[key]
