"""``GET /v1/keys/self``: what the API key of the request is (its name, role, channels,
what its role may do, when it ends), for any valid key. See docs/api.md.

The editor console (``/console``) asks it once at sign-in, to say in words why a key is
refused and to offer only the channels the key may write: the server still decides every
write (``ticker.auth.require_key``); this only spares the editor a form that would fail.
Never the secret or its digest: a page that shows the answer must not leak the key.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ticker.auth import ACTIONS, ANY_CHANNEL, authenticated
from ticker.errors import ProblemError
from ticker.http import JSONResponse
from ticker.services import Services


async def key_self(request: Request) -> Response:
    services: Services = request.app.state.services
    authorization = request.headers.get("authorization")
    if not authorization:
        raise ProblemError(
            "Send the API key to describe: 'Authorization: Bearer <key>'.",
            status=401, title="Unauthorized", type_suffix="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="ticker"'},
        )
    key = await authenticated(services.keys, authorization)
    body: dict[str, Any] = {
        "name": key.name,
        "role": key.role,
        # An admin may do everything everywhere, whatever its record lists.
        "channels": [ANY_CHANNEL] if key.role == "admin" else sorted(key.channels),
        "actions": [a for a in ACTIONS if key.may(a)],
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        # Set on an old secret that a rotation replaced: it stops working then.
        "valid_until": key.valid_until,
    }
    # It names the key and its rights: no cache keeps it.
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


routes = [Route("/v1/keys/self", key_self, methods=["GET"])]
