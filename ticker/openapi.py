"""The OpenAPI 3.1 description of every HTTP endpoint, served at ``GET /openapi.json``.

Written by hand (the routes are plain Starlette functions) and checked in the tests by
``openapi-spec-validator`` and by a bounded schemathesis run against the live service,
which fails on any 5xx and on any answer that contradicts this document. Limits that
are settings (``list_max_limit``) come from the running settings.
"""

from __future__ import annotations

from typing import Any

from ticker.audit import MAX_LIMIT as AUDIT_MAX_LIMIT
from ticker.channels import MAX_TITLE
from ticker.config import Settings
from ticker.history import MAX_VERSIONS
from ticker.models import MAX_AUTHOR, MAX_TAG, MAX_TAGS, MAX_TEXT, MAX_URL

PROBLEM = "application/problem+json"
JSON = "application/json"
NINJS = "application/ninjs+json"
CHANNEL_PATTERN = "^[a-z0-9][a-z0-9-]{0,63}$"
ID_PATTERN = "^[0-9]{1,20}-[0-9]{1,20}$"
# Plain text: no control characters, and something left after trimming.
_CC = "\\u0000-\\u001f\\u007f-\\u009f"
TEXT_PATTERN = f"^[^{_CC}]*[^\\s{_CC}][^{_CC}]*$"
URL_PATTERN = f"^https?://[A-Za-z0-9.-]+(:[0-9]{{1,5}})?([/?#][^\\s{_CC}]*)?$"
LANG_PATTERN = "^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problems(*statuses: int) -> dict[str, Any]:
    text = {
        400: "A malformed path, query, header or body.",
        401: "No API key, a malformed Authorization header, or an unknown, revoked or "
             "expired key, or a rotated secret past its grace.",
        403: "The key may not write to this channel, its role cannot write (a reader key), "
             "or the Origin is not allowed.",
        404: "No such brief, channel, channel feed or route.",
        405: "Method not allowed on this path.",
        409: "A conflict: the brief was retracted, or changed by many writers at once; a "
             "publish to a channel never created (auto_create_channels off); a channel "
             "deleted while it retains briefs without force.",
        413: "The body is larger than max_body_bytes.",
        415: "The body is not JSON.",
        422: "A field breaks a rule; `errors` lists every offending field.",
        503: (
            "Redis is unreachable, or the server is shutting down: retry after Retry-After. "
            "For a write, also `not-replicated`: on the primary, but not yet on "
            "publish_min_replicas replicas; retry with the same Idempotency-Key."
        ),
    }
    return {
        str(s): {"description": text[s], "content": {PROBLEM: {"schema": _ref("Problem")}}}
        for s in statuses
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def build(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of a service running with ``settings``."""
    channel = {"name": "channel", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": CHANNEL_PATTERN}}
    brief_id = {"name": "id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": ID_PATTERN}}
    limit = {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": settings.list_max_limit}}
    auth: list[dict[str, list[str]]] = [{"bearer": []}]
    # A private channel's reads need a reader token (or a key that may read it): 401/403.
    read_errors = _problems(400, 401, 403, 404, 503)
    token = {"name": "token", "in": "query", "required": False,
             "description": "A reader token of a private channel, where a header cannot be "
                            "sent (EventSource, an iframe); else Authorization: Bearer.",
             "schema": {"type": "string", "maxLength": 4096}}
    reader: list[dict[str, list[str]]] = [{}, {"bearer": []}]
    write_errors = _problems(400, 401, 403, 404, 409, 413, 415, 422, 503)
    brief_or_ninjs = {
        JSON: {"schema": _ref("Brief")},
        NINJS: {"schema": _ref("Ninjs")},
    }
    feed_params = [channel, limit, token]

    paths: dict[str, Any] = {
        "/healthz": {"get": {
            "summary": "The process is alive and can recover by itself.",
            "responses": {"200": _json({"type": "object"}, "Alive."), **_problems(503)},
        }},
        "/readyz": {"get": {
            "summary": "Ready: Redis answers and the stream reader is connected.",
            "responses": {"200": _json({"type": "object"}, "Ready."), **_problems(503)},
        }},
        "/v1/channels": {"get": {
            "summary": "The channels ever published to.",
            "responses": {"200": _json(_ref("ChannelList"), "The channels."), **_problems(503)},
        }},
        "/v1/channels/{channel}": {
            "parameters": [channel],
            "get": {
                "summary": "A channel and its defaults (title, lang, time zone: what the "
                           "widget, /embed and the feeds use when a request does not say).",
                "responses": {"200": _json(_ref("Channel"), "The channel."),
                              **_problems(400, 404, 503)},
            },
            "put": {
                "summary": "Create the channel, or replace its defaults (a field left out "
                           "is unset). Admin keys only; audited.",
                "security": auth,
                "requestBody": {"required": True, "content": {JSON: {
                    "schema": _ref("ChannelDefaults")}}},
                "responses": {
                    "200": _json(_ref("ChannelObject"), "Replaced."),
                    "201": _json(_ref("ChannelObject"), "Created."),
                    **_problems(400, 401, 403, 409, 413, 415, 422, 503),
                },
            },
            "patch": {
                "summary": "Set the defaults given (null unsets one). Admin keys only; "
                           "audited.",
                "security": auth,
                "requestBody": {"required": True, "content": {JSON: {
                    "schema": _ref("ChannelDefaults")}}},
                "responses": {
                    "200": _json(_ref("ChannelObject"), "Updated."),
                    **_problems(400, 401, 403, 404, 409, 413, 415, 422, 503),
                },
            },
            "delete": {
                "summary": "Delete the channel: refused (409) while it retains briefs, "
                           "unless force=true, which deletes them. Subscribers get an error "
                           "channel_deleted. Admin keys only; audited.",
                "security": auth,
                "parameters": [{"name": "force", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": ["true", "false", "1", "0"]}}],
                "responses": {"204": {"description": "Deleted."},
                              **_problems(400, 401, 403, 404, 409, 503)},
            },
        },
        "/v1/audit": {"get": {
            "summary": "The audit stream of key and channel management, newest first. Admin "
                       "keys only.",
            "security": auth,
            "parameters": [
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": AUDIT_MAX_LIMIT}},
                {"name": "before", "in": "query", "required": False,
                 "description": "The next of an earlier page: entries older than it.",
                 "schema": {"type": "string", "pattern": ID_PATTERN}},
            ],
            "responses": {
                "200": {**_json(_ref("Audit"), "The entries."),
                        "headers": {"Cache-Control": {"schema": {"const": "no-store"}}}},
                **_problems(400, 401, 403, 503),
            },
        }},
        "/v1/channels/{channel}/briefs": {
            "parameters": [channel],
            "get": {
                "summary": "The newest live briefs, newest first, and their cursor; with "
                           "since, only what happened after that cursor.",
                "security": reader,
                "parameters": [
                    limit, token,
                    {"name": "since", "in": "query", "required": False,
                     "description": "A cursor: answer only the events after it "
                                    "(recovered: true), or the briefs and recovered: "
                                    "false when they are no longer all kept.",
                     "schema": {"type": "string", "pattern": ID_PATTERN}},
                    {"name": "epoch", "in": "query", "required": False,
                     "description": "The epoch that came with the cursor.",
                     "schema": {"type": "string", "maxLength": 64}},
                    {"name": "format", "in": "query", "required": False,
                     "description": "ninjs: the list as one ninjs composite object whose "
                                    "associations are the briefs (also for Accept: "
                                    "application/ninjs+json); not with since.",
                     "schema": {"type": "string", "enum": ["json", "ninjs"]}},
                    {"name": "If-None-Match", "in": "header", "required": False,
                     "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "The briefs, or (with since) the events after the "
                                       "cursor; as ninjs on request.",
                        "content": {
                            JSON: {"schema": {"oneOf": [_ref("BriefList"), _ref("Changes")]}},
                            NINJS: {"schema": _ref("Ninjs")},
                        },
                    },
                    "304": {"description": "Nothing changed since the ETag sent."},
                    **read_errors,
                },
            },
            "post": {
                "summary": "Publish a brief (JSON, or ninjs as application/ninjs+json).",
                "security": auth,
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
                "requestBody": {"required": True, "content": {
                    JSON: {"schema": _ref("NewBrief")},
                    NINJS: {"schema": _ref("Ninjs")},
                }},
                "responses": {
                    "201": {"description": "Published (or the original, for a retried key).",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": brief_or_ninjs},
                    **write_errors,
                },
            },
        },
        "/v1/channels/{channel}/briefs/{id}": {
            "parameters": [channel, brief_id],
            "get": {
                "summary": "One brief in its current state (as ninjs on request).",
                "security": reader,
                "parameters": [{"name": "format", "in": "query", "required": False,
                                "schema": {"type": "string", "enum": ["json", "ninjs"]}},
                               token],
                "responses": {"200": {"description": "The brief.", "content": brief_or_ninjs},
                              **read_errors},
            },
            "patch": {
                "summary": "Correct a brief: version + 1, updated_at set.",
                "security": auth,
                "requestBody": {"required": True,
                                "content": {JSON: {"schema": _ref("BriefChanges")}}},
                "responses": {"200": _json(_ref("Brief"), "The corrected brief."),
                              **write_errors},
            },
            "delete": {
                "summary": "Retract a brief (status canceled); again is a no-op.",
                "security": auth,
                "responses": {"204": {"description": "Retracted."},
                              **_problems(400, 401, 403, 404, 409, 503)},
            },
        },
        "/v1/channels/{channel}/briefs/{id}/history": {
            "parameters": [channel, brief_id],
            "get": {
                "summary": "Every version of a brief, oldest first: who wrote it (the API "
                           "key's name), when, and what changed. For the channel's keys; "
                           "kept as long as the brief is (docs/api.md).",
                "security": auth,
                "responses": {
                    "200": {**_json(_ref("History"), "The versions."),
                            "headers": {"Cache-Control": {"schema": {"const": "no-store"}}}},
                    **_problems(400, 401, 403, 404, 503),
                },
            },
        },
        "/v1/channels/{channel}/events": {"get": {
            "summary": "Server-Sent Events: the WebSocket messages of one channel.",
            "security": reader,
            "parameters": [
                channel, token,
                {"name": "since", "in": "query", "required": False,
                 "schema": {"type": "string", "pattern": ID_PATTERN}},
                {"name": "epoch", "in": "query", "required": False,
                 "schema": {"type": "string", "maxLength": 64}},
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": {"type": "string", "pattern": ID_PATTERN}},
            ],
            "responses": {"200": _text("text/event-stream", "An endless event stream."),
                          **_problems(400, 401, 403, 404, 503)},
        }},
        "/v1/channels/{channel}/tokens": {"post": {
            "summary": "Mint a reader token for a private channel (a reader key of the "
                       "channel, or an admin key): what a site's backend hands to a "
                       "logged-in reader. Never cached.",
            "security": auth,
            "parameters": [channel],
            "requestBody": {"required": False, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "ttl": {"type": "integer", "minimum": 1, "maximum": 86_400,
                            "description": "Seconds the token is valid (default 3600)."},
                    "sub": {"type": "string", "minLength": 1, "maxLength": 200,
                            "description": "Who the reader is on your site (optional)."},
                }}}}},
            "responses": {
                "201": {**_json({
                    "type": "object", "required": ["token", "expires_at", "channel"],
                    "properties": {"token": {"type": "string"},
                                   "expires_at": {"type": "string", "format": "date-time"},
                                   "channel": {"type": "string"}},
                }, "The token."), "headers": {"Cache-Control": {"schema": {"const": "no-store"}}}},
                **_problems(400, 401, 403, 413, 415, 422, 503),
            },
        }},
        "/v1/channels/{channel}/feed.rss": {"get": {
            "summary": "RSS 2.0 feed of the latest briefs.", "parameters": feed_params,
            "responses": {"200": _text("application/rss+xml", "The feed."),
                          "304": {"description": "Not modified (If-None-Match)."},
                          **read_errors},
        }},
        "/v1/channels/{channel}/feed.atom": {"get": {
            "summary": "Atom feed of the latest briefs.", "parameters": feed_params,
            "responses": {"200": _text("application/atom+xml", "The feed."),
                          "304": {"description": "Not modified (If-None-Match)."},
                          **read_errors},
        }},
        "/v1/channels/{channel}/feed.json": {"get": {
            "summary": "JSON Feed 1.1 of the latest briefs.", "parameters": feed_params,
            "responses": {"200": {"description": "The feed.", "content": {
                              "application/feed+json": {"schema": {"type": "object"}}}},
                          "304": {"description": "Not modified (If-None-Match)."},
                          **read_errors},
        }},
        "/widget.js": {"get": {
            "summary": "The <news-ticker> widget (docs/widget.md).",
            "responses": {"200": _text("text/javascript", "The widget.")},
        }},
        "/embed/{channel}": {"get": {
            "summary": "The channel's briefs rendered as HTML, with JSON-LD.",
            "security": reader,
            "parameters": [channel, token],
            "responses": {"200": _text("text/html", "The page."), **read_errors},
        }},
        "/demo": {"get": {
            "summary": "A demo page of the widget.",
            "responses": {"200": _text("text/html", "The page.")},
        }},
        "/v1/keys/self": {"get": {
            "summary": "The API key of the request: its name, role, channels, what its role "
                       "may do and when it ends (never the secret). For any valid key; the "
                       "editor console signs in with it.",
            "security": auth,
            "responses": {
                "200": {**_json(_ref("KeySelf"), "The key."),
                        "headers": {"Cache-Control": {"schema": {"const": "no-store"}}}},
                **_problems(401, 503),
            },
        }},
        "/console": {"get": {
            "summary": "The editor console: publish, correct, retract and pin briefs "
                       "(docs/console.md).",
            "responses": {"200": _text("text/html", "The page.")},
        }},
        "/openapi.json": {"get": {
            "summary": "This document.",
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics of this process.",
            "responses": {"200": _text("text/plain", "Prometheus text format.")},
        }},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ticker",
            "version": "1",
            "description": (
                "A live news-ticker service. Live updates: the WebSocket GET /v1/ws "
                "(subprotocol ticker.v1, docs/protocol.md) and Server-Sent Events. "
                "Errors are RFC 9457 problem details."
            ),
        },
        "paths": paths,
        "components": {"schemas": _schemas(), "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "An API key from 'ticker keys create': a "
                                      "publisher or admin key to write; on the reads of a "
                                      "private channel, a reader token or a key that may "
                                      "read it."},
        }},
    }


def _schemas() -> dict[str, Any]:
    fields: dict[str, Any] = {
        "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT,
                 "pattern": TEXT_PATTERN},
        "url": {"type": ["string", "null"], "maxLength": MAX_URL,
                "pattern": URL_PATTERN},
        "time": {"type": "string", "format": "date-time"},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 9},
        "tags": {"type": "array", "maxItems": MAX_TAGS, "items": {
            "type": "string", "minLength": 1, "maxLength": MAX_TAG, "pattern": TEXT_PATTERN}},
        "lang": {"type": ["string", "null"], "maxLength": 35, "pattern": LANG_PATTERN},
        "pinned": {"type": "boolean"},
        "author": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_AUTHOR,
                   "pattern": TEXT_PATTERN,
                   "description": "The public byline (trimmed); null for none."},
    }
    brief = {
        "type": "object",
        "required": ["id", "channel", "text", "url", "time", "urgency", "tags", "lang",
                     "version", "updated_at", "status", "pinned"],
        "properties": {
            "id": {"type": "string", "pattern": ID_PATTERN},
            "channel": {"type": "string", "pattern": CHANNEL_PATTERN},
            **fields,
            "version": {"type": "integer", "minimum": 1},
            "updated_at": {"type": ["string", "null"], "format": "date-time"},
            "status": {"type": "string", "enum": ["usable", "canceled"]},
        },
    }
    return {
        "Brief": brief,
        "NewBrief": {"type": "object", "required": ["text"], "properties": fields,
                     "additionalProperties": False},
        "BriefChanges": {"type": "object", "minProperties": 1, "properties": fields,
                         "additionalProperties": False},
        "History": {
            "type": "object", "required": ["channel", "id", "versions"],
            "properties": {
                "channel": {"type": "string", "pattern": CHANNEL_PATTERN},
                "id": {"type": "string", "pattern": ID_PATTERN},
                "versions": {"type": "array", "maxItems": MAX_VERSIONS, "items": {
                    "type": "object",
                    "required": ["version", "kind", "by", "at", "event", "changes"],
                    "properties": {
                        "version": {"type": "integer", "minimum": 1},
                        "kind": {"enum": ["publish", "correction", "retraction"]},
                        "by": {"type": ["string", "null"],
                               "description": "The name of the API key that wrote it."},
                        "at": {"type": "string", "format": "date-time"},
                        "event": {"type": "string", "pattern": ID_PATTERN},
                        "changes": {"type": "object",
                                    "description": "The brief as published, or the fields "
                                                   "changed with their new values."},
                    },
                }},
            },
        },
        "BriefList": {
            "type": "object", "required": ["briefs", "cursor", "epoch"],
            "properties": {"briefs": {"type": "array", "items": _ref("Brief")},
                           "cursor": {"type": "string"}, "epoch": {"type": "string"},
                           "recovered": {"const": False}},
        },
        "Changes": {
            "type": "object", "required": ["recovered", "events", "cursor", "epoch"],
            "properties": {
                "recovered": {"const": True},
                "events": {"type": "array", "items": {
                    "type": "object", "required": ["type", "channel", "cursor"],
                    "properties": {
                        "type": {"enum": ["brief", "correction", "retraction"]},
                        "channel": {"type": "string"}, "cursor": {"type": "string"},
                        "brief": _ref("Brief"), "id": {"type": "string"},
                    },
                }},
                "cursor": {"type": "string"}, "epoch": {"type": "string"},
            },
        },
        "ChannelDefaults": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "title": {"type": ["string", "null"], "minLength": 1,
                          "maxLength": MAX_TITLE, "pattern": TEXT_PATTERN},
                "lang": {"type": ["string", "null"], "maxLength": 35,
                         "pattern": LANG_PATTERN},
                "time_zone": {"type": ["string", "null"], "maxLength": 64,
                              "description": "An IANA time zone, e.g. Europe/Paris."},
                "private": {"type": ["boolean", "null"],
                            "description": "Its briefs reach only reader tokens and reader "
                                           "keys (docs/security.md)."},
            },
        },
        "Channel": {
            "type": "object", "required": ["name", "title", "lang", "time_zone", "readers"],
            "properties": {
                "name": {"type": "string"},
                "title": {"type": ["string", "null"]},
                "lang": {"type": ["string", "null"]},
                "time_zone": {"type": ["string", "null"]},
                "private": {"type": "boolean"},
                "readers": {"type": "integer", "minimum": 0},
            },
        },
        "ChannelObject": {
            "type": "object",
            "required": ["name", "title", "lang", "time_zone", "created_at", "updated_at"],
            "properties": {
                "name": {"type": "string"},
                "title": {"type": ["string", "null"]},
                "lang": {"type": ["string", "null"]},
                "time_zone": {"type": ["string", "null"]},
                "private": {"type": "boolean"},
                "created_at": {"type": ["string", "null"], "format": "date-time"},
                "updated_at": {"type": ["string", "null"], "format": "date-time"},
            },
        },
        "Audit": {
            "type": "object", "required": ["entries", "next"],
            "properties": {
                "entries": {"type": "array", "items": {
                    "type": "object",
                    "required": ["id", "at", "action", "target", "by", "details"],
                    "properties": {
                        "id": {"type": "string"},
                        "at": {"type": "string", "format": "date-time"},
                        "action": {"type": "string", "enum": [
                            "key.create", "key.rotate", "key.revoke", "channel.create",
                            "channel.update", "channel.delete", "token-secret.rotate",
                            "token-secret.revoke"]},
                        "target": {"type": "string"},
                        "by": {"type": "string"},
                        "details": {"type": "object"},
                    }}},
                "next": {"type": ["string", "null"],
                         "description": "The before of the next page; null at the end."},
            },
        },
        "KeySelf": {
            "type": "object",
            "required": ["name", "role", "channels", "actions", "created_at", "expires_at",
                         "valid_until"],
            "properties": {
                "name": {"type": "string"},
                "role": {"type": "string", "description": "publisher, reader or admin."},
                "channels": {"type": "array", "items": {"type": "string"},
                             "description": "The channels it is for; ['*'] for every one."},
                "actions": {"type": "array", "items": {"type": "string"},
                            "description": "What its role may do on those channels."},
                "created_at": {"type": "string", "format": "date-time"},
                "expires_at": {"type": ["string", "null"], "format": "date-time"},
                "valid_until": {"type": ["string", "null"], "format": "date-time",
                                "description": "Set on an old secret that a rotation "
                                               "replaced: it stops working then."},
            },
        },
        "ChannelList": {
            "type": "object", "required": ["channels"],
            "properties": {"channels": {"type": "array", "items": {
                "type": "object", "required": ["name", "readers"],
                "properties": {
                    "name": {"type": "string"},
                    "readers": {"type": "integer", "minimum": 0,
                                "description": "Live subscribers, summed over every process."},
                }}}},
        },
        "Ninjs": {
            "type": "object", "required": ["uri"],
            "description": "IPTC ninjs 3.1 (http://www.iptc.org/std/ninjs/ninjs-schema_3.1.json); "
                           "see docs/api.md for the mapping.",
            "properties": {
                "uri": {"type": "string"},
                "by": {"type": "string", "description": "The byline (a brief's author)."},
                "headlines": {"type": "array", "items": {
                    "type": "object", "required": ["value"],
                    "properties": {"value": {"type": "string"}}}},
            },
        },
        "Problem": {
            "type": "object", "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string", "description": "for a refused reader token: the "
                         "WebSocket protocol's code (token_required, token_expired ...)."},
                "errors": {"type": "array", "items": {
                    "type": "object", "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
            },
        },
    }
