"""Vertex AI's custom-container routes, served only in Vertex mode (AIP_* set).

AIP_HEALTH_ROUTE answers 200 once every model is ready. AIP_PREDICT_ROUTE takes Vertex's
{"instances": [...], "parameters": {...}} and answers {"predictions": [...]}, one per
instance; a v2 infer body sent there (rawPredict) is answered as the v2 infer route would.

A text model takes {"instances": [{"text": "..."}, ...]} or bare strings {"instances": ["..."]}
and answers {"predictions": [{"logits": [...], "label": "...", "truncated": false}, ...],
"parameters": {"truncated": [rows], "max_length": N}}: `truncated` per prediction says whether
that text lost tokens at max_length, and the top-level `parameters` lists the rows as the v2
response does (Vertex's front end may keep only `predictions`, hence both).
"""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
from starlette.responses import Response
from starlette.routing import Route

from modelpress.serving import postprocess
from modelpress.serving.dataplane import DataPlane
from modelpress.serving.errors import ClientError, ServerError
from modelpress.serving.protocol import BINARY_HEADER, DATATYPES
from modelpress.serving.rest.messages import json_response, read_body
from modelpress.serving.rest.v2 import infer_response
from modelpress.serving.store import ModelVersion
from modelpress.serving.text import texts_from_instances
from modelpress.serving.textmodel import text_predictions


def instances_to_inputs(mv: ModelVersion, instances) -> dict[str, np.ndarray]:
    """Vertex instances (rows, or objects keyed by input name) as one array per model input."""
    if not isinstance(instances, list) or not instances:
        raise ClientError("'instances' must be a non-empty list")
    if mv.policy.max_batch_size == 0:
        raise ClientError(f"model {mv.name} has no batch dimension; send a v2 request on this route")
    specs = {t.name: t for t in mv.inputs}
    if all(isinstance(i, dict) for i in instances):
        columns = {n: [i.get(n) for i in instances] for n in specs}
    elif len(specs) == 1:
        columns = {next(iter(specs)): instances}
    else:
        raise ClientError(f"model {mv.name} has inputs {sorted(specs)}: give each instance as an object "
                          "keyed by input name")
    out = {}
    for n, values in columns.items():
        try:
            out[n] = np.asarray(values, dtype=DATATYPES[specs[n].datatype])
        except (ValueError, TypeError, OverflowError):
            raise ClientError(f"instances for input {n!r} are not a regular array of {specs[n].datatype} "
                              f"values shaped {list(specs[n].dims)} each") from None
    return out


class VertexRoutes:
    def __init__(self, plane: DataPlane):
        self.plane, self.settings = plane, plane.settings

    async def health(self, request):
        return Response(status_code=200 if self.plane.ready else 503)

    async def predict(self, request):
        mv = self.plane.model(self.settings.vertex_model or self._only_model())
        body = await read_body(request, self.settings.max_body_bytes)
        header = request.headers.get(BINARY_HEADER)
        if header is None:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise ClientError(f"malformed JSON in the request body: {exc}") from None
            if not isinstance(doc, dict) or ("instances" not in doc and "inputs" not in doc):
                raise ClientError('the body must be {"instances": [...], "parameters": {...}} or a v2 '
                                  'inference request with "inputs"')
        if header is not None or "inputs" in doc:  # a v2 body on the predict route (rawPredict)
            return await infer_response(self.plane, mv, body, header)
        params = doc.get("parameters") or {}
        if not isinstance(params, dict):
            raise ClientError("'parameters' must be a JSON object, e.g. {\"probabilities\": true}")
        postprocess.wants_probabilities(params)  # a 4xx before any compute
        if mv.text is not None:
            return await self._predict_texts(mv, texts_from_instances(doc["instances"]), params)
        inputs = instances_to_inputs(mv, doc["instances"])
        limit = mv.policy.max_batch_size or 1
        rows = len(next(iter(inputs.values())))
        # Vertex clients send many instances at once: split them into batches the model accepts
        parts = await asyncio.gather(*[self.plane.execute(mv, {k: v[i:i + limit] for k, v in inputs.items()}, None)
                                       for i in range(0, rows, limit)])
        merged = {k: np.concatenate([p[k] for p, _ in parts]) for k in parts[0][0]}
        mv = parts[-1][1]
        predictions = postprocess.predictions(mv, merged, params)
        return json_response({"predictions": predictions, "deployedModelId": None, "model": mv.name,
                              "modelVersionId": str(mv.version)})

    async def _predict_texts(self, mv: ModelVersion, texts: list[str], params: dict):
        limit = mv.policy.max_batch_size or 1
        parts = await asyncio.gather(*[self.plane.infer_texts(mv, texts[i:i + limit])
                                       for i in range(0, len(texts), limit)])
        merged = {k: np.concatenate([p[k] for p, _, _ in parts]) for k in parts[0][0]}
        mv, said = parts[-1][1], parts[-1][2]
        truncated = [i * limit + row for i, (_, _, part) in enumerate(parts) for row in part["truncated"]]
        return json_response({"predictions": text_predictions(mv, merged, params, truncated),
                              "parameters": {**said, "truncated": truncated}, "deployedModelId": None,
                              "model": mv.name, "modelVersionId": str(mv.version)})

    def _only_model(self) -> str:
        names = self.plane.model_names()
        if len(names) != 1:
            raise ServerError(f"the predict route needs one model; the repository has {names}: start the server "
                              "with --model NAME", status=503)
        return names[0]

    def routes(self) -> list[Route]:
        """The routes Vertex mode names; none outside it."""
        routes = []
        if self.settings.vertex_health_route:
            routes.append(Route(self.settings.vertex_health_route, self.health))
        if self.settings.vertex_predict_route:
            routes.append(Route(self.settings.vertex_predict_route, self.predict, methods=["POST"]))
        return routes
