"""The Starlette app: the v2 routes, Vertex's routes in Vertex mode, and how errors are answered.

Client mistakes are answered 4xx with {"error": message}; overload 503 with Retry-After;
a request that waits past its timeout 504; a model that fails on a batch 500 with the
reason. Nothing a client sends produces a 5xx.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from modelpress.serving.dataplane import DataPlane
from modelpress.serving.errors import RequestError, answer
from modelpress.serving.rest.messages import error_response
from modelpress.serving.rest.v2 import V2Routes
from modelpress.serving.rest.vertex import VertexRoutes

log = logging.getLogger("modelpress.serve")


def _answer(exc: BaseException) -> Response:
    status, message, headers = answer(exc)
    return error_response(message, status, headers)


async def _request_error(request, exc: RequestError):
    return _answer(exc)


async def _http_error(request, exc: HTTPException):
    message = {404: f"no route {request.method} {request.url.path}; see GET /v2 and the KServe v2 protocol",
               405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    return error_response(message, exc.status_code)


async def _disconnect(request, exc):
    return Response(status_code=499)


async def _unexpected(request, exc):
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return _answer(exc)


def build_app(plane: DataPlane) -> Starlette:
    routes = V2Routes(plane).routes()
    if plane.settings.vertex:
        routes += VertexRoutes(plane).routes()
    handlers = {RequestError: _request_error, HTTPException: _http_error, ClientDisconnect: _disconnect,
                Exception: _unexpected}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lambda app: plane.running())
