"""The brief: validation of what editors send, and the stored shape.

A brief is a JSON object with these fields, in this order::

    id, channel, text, url, time, urgency, tags, lang, version, updated_at, status, pinned,
    author

``id`` is the Redis stream ID of the event that published the brief. Field names follow
IPTC ninjs where one exists (``urgency`` has the IPTC meaning: 1 is most urgent; ``status``
is ninjs ``pubStatus``: ``usable`` or ``canceled`` once retracted). ``author`` is the
public byline (ninjs ``by``), or null; briefs stored before it existed have none, which
reads as null. Who *wrote* a brief (the API key) is not in it: see ``ticker.history``.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ticker.errors import ProblemError, ValidationError

Brief = dict[str, Any]

# Limits (the contract; see docs/api.md)
MAX_TEXT = 500
MAX_URL = 2048
MAX_TAGS = 10
MAX_TAG = 64
MAX_LANG = 35
MAX_AUTHOR = 100
DEFAULT_URGENCY = 5

CHANNEL_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
# ASCII: in a str pattern \d also matches the digits of other scripts, which int() reads.
STREAM_ID_RE = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?", re.ASCII)
LANG_RE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")

CREATE_FIELDS = frozenset({"text", "url", "time", "urgency", "tags", "lang", "pinned", "author"})
PATCH_FIELDS = CREATE_FIELDS


def check_channel(channel: str) -> str:
    """Return the channel name, or raise a 400 problem naming the rule."""
    if not CHANNEL_RE.fullmatch(channel):
        raise ProblemError(
            f"Channel {channel[:80]!r} is not a valid channel name: use 1 to 64 lowercase "
            "letters, digits and hyphens, starting with a letter or digit.",
            type_suffix="bad-channel",
            field="channel",
        )
    return channel


def parse_stream_id(value: str) -> tuple[int, int] | None:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; ``None`` if it is not a stream ID."""
    m = STREAM_ID_RE.fullmatch(value)
    if m is None:
        return None
    ms, seq = int(m.group(1)), int(m.group(2) or 0)
    if ms >= 2**64 or seq >= 2**64:
        return None
    return ms, seq


def check_brief_id(value: str) -> str:
    key = parse_stream_id(value)
    if key is None or "-" not in value:
        raise ProblemError(
            f"{value[:80]!r} is not a brief id: ids look like '1732850000000-0'.",
            type_suffix="bad-id",
            field="id",
        )
    return f"{key[0]}-{key[1]}"


def now_rfc3339() -> str:
    return _format_time(datetime.now(UTC))


def millis_rfc3339(millis: int) -> str:
    """A time in milliseconds since the epoch (a stream ID's first part), as a brief's."""
    return _format_time(datetime.fromtimestamp(millis / 1000, UTC))


def _format_time(dt: datetime) -> str:
    spec = "seconds" if dt.microsecond == 0 else "milliseconds"
    text = dt.isoformat(timespec=spec)
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class _Errors:
    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.items.append({"field": field, "message": message})

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationError(self.items)


def _clean_text(value: str) -> str:
    return unicodedata.normalize("NFC", value.strip())


# Control characters, and the line and paragraph separators (U+2028, U+2029) that break
# lines as a newline would. Bidi and zero-width format characters stay: RTL text needs them.
_CONTROL = frozenset({"Cc", "Zl", "Zp"})


# The characters of those categories (Cc is closed by Unicode's stability policy; U+2028
# and U+2029 are the only Zl and Zp), as one regular expression: a scan in C, rather than
# a category lookup per character in Python (tests/test_models.py checks they agree).
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _has_control(value: str) -> bool:
    return _CONTROL_RE.search(value) is not None


def _check_fields(
    body: Any, allowed: frozenset[str], errors: _Errors, *, require_text: bool
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError([{"field": "", "message": "The body must be a JSON object."}])
    for name in body:
        if name not in allowed:
            errors.add(
                name,
                f"Unknown field {name[:40]!r}: allowed fields are {', '.join(sorted(allowed))}.",
            )
    out: dict[str, Any] = {}

    if "text" in body or require_text:
        text = body.get("text")
        if not isinstance(text, str):
            errors.add("text", "Field 'text' is required and must be a string.")
        else:
            text = _clean_text(text)
            if not text:
                errors.add("text", "Field 'text' must not be empty.")
            elif len(text) > MAX_TEXT:
                errors.add("text", f"Field 'text' is {len(text)} characters long; the limit is {MAX_TEXT}.")
            elif _has_control(text):
                errors.add(
                    "text",
                    "Field 'text' must not contain control characters such as newlines or tabs.",
                )
            else:
                out["text"] = text

    if "url" in body:
        url = body["url"]
        if url is None:
            out["url"] = None
        elif not isinstance(url, str):
            errors.add("url", "Field 'url' must be a string or null.")
        else:
            problem = _url_problem(url)
            if problem:
                errors.add("url", problem)
            else:
                out["url"] = url

    if "time" in body:
        value = body["time"]
        parsed = _parse_time(value) if isinstance(value, str) else None
        if parsed is None:
            errors.add(
                "time",
                "Field 'time' must be an RFC 3339 date-time with an offset, "
                "such as '2026-02-14T16:30:00+01:00'.",
            )
        else:
            out["time"] = parsed

    if "urgency" in body:
        urgency = body["urgency"]
        if isinstance(urgency, bool) or not isinstance(urgency, int) or not 1 <= urgency <= 9:
            errors.add("urgency", "Field 'urgency' must be an integer from 1 (most urgent) to 9.")
        else:
            out["urgency"] = urgency

    if "tags" in body:
        tags = body["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            errors.add("tags", "Field 'tags' must be a list of strings.")
        elif len(tags) > MAX_TAGS:
            errors.add("tags", f"Field 'tags' holds {len(tags)} tags; the limit is {MAX_TAGS}.")
        else:
            cleaned = [_clean_text(t) for t in tags]
            if any(not t or len(t) > MAX_TAG or _has_control(t) for t in cleaned):
                errors.add(
                    "tags",
                    f"Each tag must be 1 to {MAX_TAG} characters long, without control characters.",
                )
            else:
                out["tags"] = list(dict.fromkeys(cleaned))

    if "lang" in body:
        lang = body["lang"]
        if lang is None:
            out["lang"] = None
        elif not isinstance(lang, str) or len(lang) > MAX_LANG or not LANG_RE.fullmatch(lang):
            errors.add("lang", "Field 'lang' must be a language tag such as 'fr' or 'en-US'.")
        else:
            out["lang"] = lang

    if "pinned" in body:
        if not isinstance(body["pinned"], bool):
            errors.add("pinned", "Field 'pinned' must be true or false.")
        else:
            out["pinned"] = body["pinned"]

    if "author" in body:
        author = body["author"]
        if author is None:
            out["author"] = None
        elif not isinstance(author, str):
            errors.add("author", "Field 'author' must be a string (the byline) or null.")
        else:
            author = _clean_text(author)
            if not 1 <= len(author) <= MAX_AUTHOR or _has_control(author):
                errors.add(
                    "author",
                    f"Field 'author' must be 1 to {MAX_AUTHOR} characters long, without "
                    "control characters.",
                )
            else:
                out["author"] = author
    return out


def _url_problem(url: str) -> str | None:
    if len(url) > MAX_URL:
        return f"Field 'url' is {len(url)} characters long; the limit is {MAX_URL}."
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError unless the port is a number below 65536
    except ValueError:
        return "Field 'url' is not a valid URL."
    if parts.scheme not in ("http", "https"):
        return "Field 'url' must be an http or https URL."
    if not parts.hostname or any(ch.isspace() for ch in url) or _has_control(url):
        return "Field 'url' must be an absolute http or https URL with a host and no spaces."
    return None


def _parse_time(value: str) -> str | None:
    # RFC 3339 requires the 'T' (or space) separator, seconds and an offset.
    if len(value) > 40 or not re.fullmatch(
        r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", value
    ):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("z", "Z").replace("t", "T"))
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None or dt.year < 1970:
        return None
    return _format_time(dt)


def new_brief(body: Any, channel: str) -> Brief:
    """Validate a publish request and return the brief to store (without its id)."""
    errors = _Errors()
    fields = _check_fields(body, CREATE_FIELDS, errors, require_text=True)
    errors.raise_if_any()
    return {
        "channel": channel,
        "text": fields["text"],
        "url": fields.get("url"),
        "time": fields.get("time") or now_rfc3339(),
        "urgency": fields.get("urgency", DEFAULT_URGENCY),
        "tags": fields.get("tags", []),
        "lang": fields.get("lang"),
        "version": 1,
        "updated_at": None,
        "status": "usable",
        "pinned": fields.get("pinned", False),
        "author": fields.get("author"),
    }


def parse_patch(body: Any) -> dict[str, Any]:
    """Validate a correction request and return the fields it changes."""
    errors = _Errors()
    fields = _check_fields(body, PATCH_FIELDS, errors, require_text=False)
    if isinstance(body, dict) and not body:
        errors.add("", "The correction changes nothing: send at least one field.")
    errors.raise_if_any()
    return fields


def corrected(current: Brief, changes: dict[str, Any]) -> Brief:
    """The brief after a correction: fields replaced, version incremented, updated_at set."""
    brief = {**current, **changes}
    brief["version"] = int(current["version"]) + 1
    brief["updated_at"] = now_rfc3339()
    return brief


def retracted(current: Brief) -> Brief:
    brief = dict(current)
    brief["status"] = "canceled"
    brief["version"] = int(current["version"]) + 1
    brief["updated_at"] = now_rfc3339()
    return brief
