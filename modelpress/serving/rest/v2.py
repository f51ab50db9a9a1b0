"""The KServe v2 (Open Inference Protocol) HTTP routes, as Triton serves them.

Each route decodes the request, calls the data plane and encodes its answer: JSON documents,
and infer responses in JSON or the binary tensor extension. A text model's infer takes a BYTES
input `text` (or its token inputs) and answers with response `parameters` saying which rows
were truncated (see `serving.textmodel`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelpress.serving.dataplane import DataPlane
from modelpress.serving.errors import ClientError
from modelpress.serving.protocol import BINARY_HEADER, encode_infer, parse_infer
from modelpress.serving.rest.messages import error_response, json_response, read_body
from modelpress.serving.store import ModelVersion

CARD_FORMATS = {"json": "json", "markdown": "markdown", "md": "markdown"}
_INT64_FIELDS = {"dims", "max_queue_delay_microseconds", "versions", "default_queue_policy_timeout_microseconds"}


def _ints(doc):
    """protobuf's JSON writes int64 as strings; Triton's /config writes numbers."""
    if isinstance(doc, dict):
        return {k: ([int(x) for x in v] if k in _INT64_FIELDS and isinstance(v, list) else
                    int(v) if k in _INT64_FIELDS and isinstance(v, str) else _ints(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_ints(x) for x in doc]
    return doc


def card_format(request: Request) -> str:
    """`?format=json|markdown` wins; else JSON when the client accepts application/json; else Markdown."""
    asked = request.query_params.get("format")
    if asked is not None:
        if asked.lower() not in CARD_FORMATS:
            raise ClientError(f"format must be json or markdown, got {asked!r}")
        return CARD_FORMATS[asked.lower()]
    return "json" if "application/json" in request.headers.get("accept", "") else "markdown"


def _named(request: Request) -> tuple[str | None, str | None]:
    return request.path_params.get("model"), request.path_params.get("version")


async def infer_response(plane: DataPlane, mv: ModelVersion, body: bytes, header: str | None,
                         version: str | None = None) -> Response:
    """Answer a v2 infer body (JSON, or JSON header + binary tensors) on `mv`."""
    req = parse_infer(body, header, bytes_inputs=mv.text is not None)  # texts only for a text model
    result = await plane.infer(mv, req, version)
    binary = set(result.outputs) if req.binary_default else req.binary_outputs
    payload, headers = encode_infer(result.model.name, str(result.model.version), result.id, result.outputs, binary,
                                    result.parameters)
    return Response(payload, headers=headers)


class V2Routes:
    def __init__(self, plane: DataPlane):
        self.plane = plane

    async def live(self, request):
        return Response(status_code=200)

    async def ready(self, request):
        why = self.plane.not_ready_reason()
        return Response(status_code=200) if why is None else error_response(why, 503)

    async def server_metadata(self, request):
        return json_response(self.plane.server_metadata())

    async def model_metadata(self, request):
        return json_response(self.plane.model_metadata(*_named(request)))

    async def model_ready(self, request):
        why = self.plane.model_not_ready_reason(*_named(request))
        return Response(status_code=200) if why is None else error_response(why, 503)

    async def model_config(self, request):
        from google.protobuf import json_format
        config = self.plane.model_config(*_named(request))
        return json_response(_ints(json_format.MessageToDict(config, preserving_proto_field_name=True)))

    async def model_stats(self, request):
        return json_response(self.plane.statistics(*_named(request)))

    async def model_card(self, request):
        fmt = card_format(request)
        card = self.plane.model_card(*_named(request), fmt=fmt)
        if fmt == "json":
            return json_response(card, headers={"Vary": "Accept"})
        return Response(card, media_type="text/markdown; charset=utf-8", headers={"Vary": "Accept"})

    async def repository_index(self, request):
        return json_response(self.plane.repository_index())

    async def infer(self, request):
        name, version = _named(request)
        mv = self.plane.model(name, version)  # an unknown model is a 404 before the body is read
        body = await read_body(request, self.plane.settings.max_body_bytes)
        return await infer_response(self.plane, mv, body, request.headers.get(BINARY_HEADER), version)

    def routes(self) -> list[Route]:
        routes = [
            Route("/v2/health/live", self.live), Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/models/stats", self.model_stats),  # before /v2/models/{model}, which would match it
        ]
        for prefix in ("/v2/models/{model}/versions/{version}", "/v2/models/{model}"):
            routes += [Route(prefix, self.model_metadata), Route(prefix + "/ready", self.model_ready),
                       Route(prefix + "/config", self.model_config), Route(prefix + "/stats", self.model_stats),
                       Route(prefix + "/card", self.model_card),
                       Route(prefix + "/infer", self.infer, methods=["POST"])]
        return routes
