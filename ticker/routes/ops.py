"""Endpoints for operators and tools: ``GET /openapi.json`` and ``GET /metrics``."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ticker import openapi
from ticker.http import JSONResponse
from ticker.metrics import CONTENT_TYPE
from ticker.services import Services


async def openapi_json(request: Request) -> Response:
    services: Services = request.app.state.services
    state = request.app.state
    document: Any = getattr(state, "openapi_document", None)
    if document is None:
        document = state.openapi_document = orjson.dumps(openapi.build(services.settings))
    return JSONResponse(document)


async def metrics_endpoint(request: Request) -> Response:
    services: Services = request.app.state.services
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE)


routes = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
