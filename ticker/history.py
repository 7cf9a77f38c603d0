"""The history of a brief: every version, who wrote it and when, and what it changed.

Newsrooms must be able to say who published or changed a brief, and to what (issue 13):
each write (publish, correction, retraction) records one *version* in the same Lua
script that makes the write (``record`` in ``ticker/lua/append.lua``), so a brief is
never changed without its version, and a publish stays one round trip to Redis. A
version as stored::

    {"event": "1732850000000-0", "version": 2, "kind": "correction", "by": "desk",
     "changes": {"text": "..."}}

``event`` is the ID of the write's event in the channel's log (spliced in by the script,
which is the only one to know it): its first part is the time of the write on the Redis
server, given to readers as ``at``. ``by`` is the *name* of the API key that wrote it
(never the key): an internal name, kept only here, never in the brief that readers get.
``changes`` is, for a publish, the brief as published; for a correction, the fields
whose value it changed, with their new values; for a retraction, ``{"status":
"canceled"}``.

A channel's histories are one hash (``Layout.history``: brief id -> its versions, one
JSON object per line, oldest first), in the channel's slot. Retention trims a brief's
history with the brief (``forget`` in append.lua). A brief keeps at most
``MAX_VERSIONS`` versions: past it, the oldest version after the first is dropped, so
the brief as published and the newest corrections stay (the version numbers show the
gap).
"""

from __future__ import annotations

from typing import Any

import orjson

from ticker.models import Brief, millis_rfc3339

# Versions kept per brief (the first one and the newest MAX_VERSIONS - 1): at most this
# many times the largest version (a brief is at most a few kilobytes).
MAX_VERSIONS = 100
PUBLISH = "publish"
# Set on every change by the server: in the version's own fields, not in its changes.
_BOOKKEEPING = ("version", "updated_at")


def first_version(body: bytes, writer: str | None) -> bytes:
    """The version a publish records: the brief JSON (without its id) as published."""
    return (
        b'{"version":1,"kind":"publish","by":' + orjson.dumps(writer)
        + b',"changes":' + body + b"}"
    )


def next_version(kind: str, current: Brief, new: Brief, writer: str | None) -> bytes:
    """The version a correction or retraction (``kind``, as the store's events name
    them) records: the fields it changed."""
    changes = {
        name: value for name, value in new.items()
        if name not in _BOOKKEEPING and current.get(name) != value
    }
    return orjson.dumps({
        "version": new["version"], "kind": kind, "by": writer, "changes": changes,
    })


def versions(stored: bytes) -> list[dict[str, Any]]:
    """The versions of a brief as readers of its history get them, oldest first, each
    with ``at``: the time of its event (RFC 3339, Redis's clock)."""
    out: list[dict[str, Any]] = []
    for line in stored.split(b"\n"):
        version = orjson.loads(line)
        event = version.pop("event")
        out.append({
            "version": version["version"], "kind": version["kind"], "by": version["by"],
            "at": millis_rfc3339(int(event.partition("-")[0])), "event": event,
            "changes": version["changes"],
        })
    return out
