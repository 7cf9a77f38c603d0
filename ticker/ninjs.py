"""IPTC ninjs 3.1 (News in JSON): each brief as a ninjs object, and ninjs accepted on publish.

A brief maps onto ninjs like this (ninjs objects allow no other field)::

    brief                 ninjs
    -----                 -----
    id, channel           uri: the brief's URL in this API; altIds: [{"role": "ticker-id"}]
    text                  headlines: [{"value": text, "contentType": "text/plain"}]
    url                   associations: [{"name": "link", "rel": "related", "uri": url}]
    time                  firstCreated
    updated_at or time    versionCreated
    version               version (a string)
    urgency               urgency (same IPTC meaning: 1 is most urgent)
    status                pubStatus: "usable", or "canceled" once retracted
    tags                  subjects: [{"name": tag}]
    lang                  language
    author                by (the byline, a string; left out when none)
    pinned                (no ninjs field: left out)

``GET /v1/channels/{channel}/briefs/{id}`` answers ninjs for ``Accept:
application/ninjs+json`` or ``?format=ninjs``; ``POST .../briefs`` reads a ninjs body when
its ``Content-Type`` is ``application/ninjs+json`` (and answers ninjs when asked to).

``GET /v1/channels/{channel}/briefs`` answers the same way with the channel's newest
briefs as one ninjs object (``list_item``): ninjs describes one news object and has no
list of them, but a ``composite`` object whose ``associations`` are other objects is its
way to carry several (a package), so the briefs are its associations, newest first.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ticker.errors import ProblemError, ValidationError
from ticker.http import JSONResponse, base_url
from ticker.models import Brief, millis_rfc3339, new_brief

MEDIA_TYPE = "application/ninjs+json"
SCHEMA = "http://www.iptc.org/std/ninjs/ninjs-schema_3.1.json#"
STANDARD = {"name": "ninjs", "version": "3.1", "schema": SCHEMA}
PROFILE = "ticker-brief"
LIST_PROFILE = "ticker-list"
ID_ROLE = "ticker-id"
CURSOR_ROLE = "ticker-cursor"  # the list's cursor and epoch, as in the native list
EPOCH_ROLE = "ticker-epoch"
LINK = "link"

# ninjs fields a publish may carry: those that map onto a brief, and descriptive ones
# that a brief has no use for (the server sets its own uri, version and dates).
_MAPPED = {
    "headlines": "text", "associations": "url", "firstCreated": "time", "urgency": "urgency",
    "subjects": "tags", "language": "lang", "by": "author",
}
_IGNORED = frozenset({
    "uri", "type", "representationType", "profile", "version", "standard", "altIds",
    "versionCreated", "contentCreated", "pubStatus",
})


def to_ninjs(brief: Brief, base_url: str) -> dict[str, Any]:
    """The ninjs object of a brief; ``base_url`` makes its ``uri`` absolute."""
    uri = f"{base_url.rstrip('/')}/v1/channels/{brief['channel']}/briefs/{brief['id']}"
    item: dict[str, Any] = {
        "uri": uri,
        "standard": STANDARD,
        "type": "text",
        "representationType": "full",
        "profile": PROFILE,
        "version": str(brief["version"]),
        "firstCreated": brief["time"],
        "versionCreated": brief.get("updated_at") or brief["time"],
        "pubStatus": brief["status"],
        "urgency": brief["urgency"],
        "headlines": [{"value": brief["text"], "contentType": "text/plain"}],
        "altIds": [{"role": ID_ROLE, "value": brief["id"]}],
    }
    if brief.get("lang"):
        item["language"] = brief["lang"]
    if brief.get("tags"):
        item["subjects"] = [{"name": tag} for tag in brief["tags"]]
    if brief.get("url"):
        item["associations"] = [{"name": LINK, "rel": "related", "uri": brief["url"]}]
    if brief.get("author"):
        item["by"] = brief["author"]
    return item


def list_item(channel: str, briefs: list[Brief], cursor: str, epoch: str,
              base_url: str) -> dict[str, Any]:
    """The channel's briefs (newest first) as one ninjs ``composite`` object, each brief
    an association (``name: "brief"``, ``rel: "item"``, the IANA relation of a member of
    a collection) carrying its whole ninjs object. Its ``versionCreated`` is the time of
    the channel's last event (the cursor's time), when there is one."""
    base = base_url.rstrip("/")
    item: dict[str, Any] = {
        "uri": f"{base}/v1/channels/{channel}/briefs",
        "standard": STANDARD,
        "type": "composite",
        "representationType": "full",
        "profile": LIST_PROFILE,
        "altIds": [{"role": CURSOR_ROLE, "value": cursor}, {"role": EPOCH_ROLE, "value": epoch}],
        "associations": [
            {"name": "brief", "rel": "item", **to_ninjs(brief, base_url)} for brief in briefs
        ],
    }
    millis = int(cursor.partition("-")[0])
    if millis:
        item["versionCreated"] = millis_rfc3339(millis)
    return item


def wanted(request: Request, default: bool = False) -> bool:
    """True when the client asks for ninjs: ``?format=ninjs``, or an Accept header that
    prefers application/ninjs+json at least as much as any other type it lists.
    ``default`` is the answer without a preference (no Accept, or ``*/*``)."""
    # (No query string, no format: the common case skips parsing one.)
    fmt = request.query_params.get("format") if request.scope.get("query_string") else None
    if fmt is not None:
        if fmt not in ("ninjs", "json"):
            raise ProblemError(
                f"Query parameter 'format' must be 'json' or 'ninjs', not {fmt[:20]!r}.",
                type_suffix="bad-format", field="format",
            )
        return fmt == "ninjs"
    accept = request.headers.get("accept", "").strip()
    if accept in ("", "*/*"):
        return default
    best_other = 0.0
    ninjs = 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media.lower() == MEDIA_TYPE:
            ninjs = max(ninjs, q)
        elif media:
            best_other = max(best_other, q)
    return ninjs > 0 and ninjs >= best_other


def respond(
    request: Request, data: bytes, status: int = 200, headers: dict[str, str] | None = None,
) -> Response:
    """The brief JSON ``data`` as it is, or as ninjs when the client asks for it (by
    default, when it sent ninjs)."""
    headers = {**(headers or {}), "Vary": "Accept"}
    if not wanted(request, default=is_ninjs_body(request)):
        return JSONResponse(data, status, headers=headers)
    public_url: str = request.app.state.services.settings.public_url
    item = to_ninjs(orjson.loads(data), base_url(request, public_url))
    return Response(orjson.dumps(item), status, headers=headers, media_type=MEDIA_TYPE)


def is_ninjs_body(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type == MEDIA_TYPE


def read_brief(request: Request, body: Any, channel: str) -> Brief:
    """The brief of a publish request: ninjs when its Content-Type says so, else native."""
    return brief_from_ninjs(body, channel) if is_ninjs_body(request) else new_brief(body, channel)


def brief_from_ninjs(body: Any, channel: str) -> Brief:
    """Validate a ninjs publish body and return the brief to store (without its id).

    Errors name the ninjs fields (``headlines/0/value`` rather than ``text``)."""
    errors: list[dict[str, str]] = []
    if not isinstance(body, dict):
        raise ValidationError([{"field": "", "message": "The body must be a ninjs JSON object."}])
    for name in body:
        if name not in _MAPPED and name not in _IGNORED:
            errors.append({"field": name, "message": (
                f"ninjs field {name[:40]!r} has no place in a brief: a brief is one headline "
                f"with {', '.join(sorted(_MAPPED))}."
            )})
    fields: dict[str, Any] = {}
    if body.get("pubStatus", "usable") != "usable":
        errors.append({"field": "pubStatus", "message": (
            "Publish a brief with pubStatus 'usable' (or none); retract with DELETE."
        )})
    headlines = body.get("headlines")
    if not isinstance(headlines, list) or not headlines or not isinstance(headlines[0], dict):
        errors.append({"field": "headlines", "message": (
            "A ninjs brief needs 'headlines': [{\"value\": \"the text\"}]."
        )})
    else:
        fields["text"] = headlines[0].get("value")
    associations = body.get("associations")
    if associations is not None:
        links = associations if isinstance(associations, list) else []
        links = [a for a in links if isinstance(a, dict)]
        if len(links) != 1 or not isinstance(links[0].get("uri"), str):
            errors.append({"field": "associations", "message": (
                "A brief has at most one link: 'associations': [{\"name\": \"link\", "
                "\"rel\": \"related\", \"uri\": \"https://...\"}]."
            )})
        else:
            fields["url"] = links[0]["uri"]
    subjects = body.get("subjects")
    if subjects is not None:
        if not isinstance(subjects, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) for s in subjects
        ):
            errors.append({"field": "subjects", "message": (
                "'subjects' must be a list of objects with a 'name' (the brief's tags)."
            )})
        else:
            fields["tags"] = [s["name"] for s in subjects]
    for ninjs_name in ("firstCreated", "urgency", "language", "by"):
        if ninjs_name in body:
            fields[_MAPPED[ninjs_name]] = body[ninjs_name]
    if errors:
        raise ValidationError(errors)
    try:
        return new_brief(fields, channel)
    except ValidationError as exc:
        raise ValidationError([_rename(e) for e in exc.errors]) from None


_NINJS_NAME = {
    "text": "headlines/0/value", "url": "associations/0/uri", "time": "firstCreated",
    "tags": "subjects", "lang": "language", "author": "by",
}


def _rename(error: dict[str, str]) -> dict[str, str]:
    """A brief validation error in ninjs terms."""
    native = error["field"]
    ninjs_name = _NINJS_NAME.get(native, native)
    message = error["message"].replace(f"Field '{native}'", f"Field '{ninjs_name}'")
    return {"field": ninjs_name, "message": message}
