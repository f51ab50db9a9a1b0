"""What every REST route shares: the bounded request body and JSON answers."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from modelpress.serving.errors import ClientError


def json_response(doc, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, headers=headers, media_type="application/json")


def error_response(message: str, status: int, headers: dict | None = None) -> Response:
    return json_response({"error": message}, status, headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it passes `limit` bytes rather than after."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ClientError(f"request body of {int(length)} bytes exceeds the {limit}-byte limit; "
                          "send fewer rows per request", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientError(f"request body exceeds the {limit}-byte limit; send fewer rows per request",
                              status=413)
        chunks.append(chunk)
    if length and length.isdigit() and size != int(length):
        raise ClientError(f"the body has {size} bytes but Content-Length says {length}: truncated body")
    return b"".join(chunks)
