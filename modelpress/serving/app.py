"""The HTTP application: KServe v2 routes as Triton serves them, plus Vertex AI's routes.

Client mistakes are answered 4xx with {"error": message}; overload 503 with Retry-After;
a request that waits past its timeout 504; a model that fails on a batch 500 with the
reason. Nothing a client sends produces a 5xx. Class names, probabilities and top-k classes
beside the logits come from postprocess.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from modelpress import __version__
from modelpress.serving import postprocess
from modelpress.serving.batching import SchedulerClosed, ServerError
from modelpress.serving.protocol import BINARY_HEADER, DATATYPES, ClientError, encode_infer, parse_infer
from modelpress.serving.store import ModelStore, ModelVersion

log = logging.getLogger("modelpress.serve")
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics", "model_repository",
              "schedule_policy"]
_INT64_FIELDS = {"dims", "max_queue_delay_microseconds", "versions", "default_queue_policy_timeout_microseconds"}


@dataclass(frozen=True)
class ServeSettings:
    max_body_bytes: int = 16 * 1024 * 1024
    request_timeout_s: float = 30.0
    poll_seconds: float = 0.0                 # 0: load once at start
    vertex_health_route: str | None = None    # set in Vertex mode
    vertex_predict_route: str | None = None
    vertex_model: str | None = None           # the model the predict route serves


def _json(doc, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, headers=headers, media_type="application/json")


def _error(message: str, status: int, headers: dict | None = None) -> Response:
    return _json({"error": message}, status, headers)


def _ints(doc):
    """protobuf's JSON writes int64 as strings; Triton's /config writes numbers."""
    if isinstance(doc, dict):
        return {k: ([int(x) for x in v] if k in _INT64_FIELDS and isinstance(v, list) else
                    int(v) if k in _INT64_FIELDS and isinstance(v, str) else _ints(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_ints(x) for x in doc]
    return doc


def _stats(mv: ModelVersion) -> dict:
    s = mv.scheduler.stats
    pair = lambda count, ns: {"count": count, "ns": ns}  # noqa: E731
    return {"name": mv.name, "version": str(mv.version), "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count, "execution_count": s.execution_count,
            "inference_stats": {"success": pair(s.success_count, s.success_ns), "fail": pair(s.fail_count, s.fail_ns),
                                "queue": pair(s.queue_count, s.queue_ns),
                                "compute_input": pair(s.compute_count, 0),
                                "compute_infer": pair(s.compute_count, s.compute_ns),
                                "compute_output": pair(s.compute_count, 0),
                                "cache_hit": pair(0, 0), "cache_miss": pair(0, 0)},
            "batch_stats": [{"batch_size": b, "compute_infer": pair(c, ns)} for b, (c, ns) in sorted(s.batches.items())]}


class InferenceApp:
    def __init__(self, store: ModelStore, settings: ServeSettings, metrics=None):
        self.store, self.settings, self.metrics = store, settings, metrics
        self._poller: asyncio.Task | None = None

    # -- plumbing ----------------------------------------------------------------------
    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
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

    async def _run(self, mv: ModelVersion, inputs: dict[str, np.ndarray], outputs: list[str] | None,
                   version: str | None = None, post=None):
        """Validate, queue, execute, then `post(mv, result)`; count the outcome in the version's
        stats. Returns the outputs and the version that produced them."""
        start = time.perf_counter_ns()
        for _ in range(3):
            try:
                rows = mv.check(inputs, outputs)
                result = await mv.scheduler.infer(inputs, rows, self.settings.request_timeout_s)
                result = result if outputs is None else {k: result[k] for k in outputs}
                if post:
                    result = post(mv, result)
                break
            except SchedulerClosed:  # swapped out while this request was being read: use the new one
                mv = self.store.get(mv.name, version)
            except (ClientError, ServerError):
                self._count_failure(mv, start)
                raise
        else:
            self._count_failure(mv, start)
            raise ServerError(f"model {mv.name} is being reloaded; retry", status=503, headers={"Retry-After": "1"})
        stats = mv.scheduler.stats
        elapsed = time.perf_counter_ns() - start
        stats.success_count += 1
        stats.success_ns += elapsed
        if self.metrics:
            self.metrics.observe(mv, "request", elapsed / 1e9)
        return result, mv

    @staticmethod
    def _count_failure(mv: ModelVersion, start_ns: int) -> None:
        mv.scheduler.stats.fail_count += 1
        mv.scheduler.stats.fail_ns += time.perf_counter_ns() - start_ns

    # -- KServe v2 -------------------------------------------------------------------
    async def live(self, request):
        return Response(status_code=200)

    async def ready(self, request):
        if self.store.ready:
            return Response(status_code=200)
        why = [f"{mv.name}/{mv.version}: {mv.scheduler.failure}" for mv in self.store.all_versions() if not mv.ready]
        why += [f"{key}: {reason}" for key, reason in sorted(self.store.errors.items())]
        return _error("; ".join(why) or "no model is loaded yet", 503)

    async def server_metadata(self, request):
        return _json({"name": "modelpress", "version": __version__, "extensions": EXTENSIONS})

    def _model(self, request) -> ModelVersion:
        return self.store.get(request.path_params["model"], request.path_params.get("version"))

    async def model_metadata(self, request):
        mv = self._model(request)
        return _json(mv.metadata(self.store.versions(mv.name)))

    async def model_ready(self, request):
        mv = self._model(request)
        return Response(status_code=200) if mv.ready else _error(f"model {mv.name} version {mv.version} is not "
                                                                 f"ready: {mv.scheduler.failure}", 503)

    async def model_config(self, request):
        from google.protobuf import json_format
        mv = self._model(request)
        return _json(_ints(json_format.MessageToDict(mv.config, preserving_proto_field_name=True)))

    async def model_stats(self, request):
        if request.path_params.get("version"):
            mvs = [self._model(request)]
        elif "model" in request.path_params:
            name = self._model(request).name
            mvs = [self.store.get(name, str(v)) for v in self.store.versions(name)]
        else:
            mvs = self.store.all_versions()
        return _json({"model_stats": [_stats(mv) for mv in mvs]})

    async def repository_index(self, request):
        index = [{"name": mv.name, "version": str(mv.version), "state": "READY" if mv.ready else "UNAVAILABLE",
                  "reason": mv.scheduler.failure or ""} for mv in self.store.all_versions()]
        for key, why in sorted(self.store.errors.items()):
            name, _, version = key.partition("/")
            index.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": why})
        return _json(index)

    async def infer(self, request):
        mv = self._model(request)
        body = await self._body(request)
        return await self._infer_v2(mv, body, request.headers.get(BINARY_HEADER), request.path_params.get("version"))

    async def _infer_v2(self, mv: ModelVersion, body: bytes, header: str | None, version: str | None = None):
        req = parse_infer(body, header)
        plan = postprocess.plan(mv, req.outputs, req.classification, req.parameters)  # 4xx before compute

        def post(final: ModelVersion, result):  # the version may have been swapped meanwhile: plan for it
            p = plan if final is mv else postprocess.plan(final, req.outputs, req.classification, req.parameters)
            return postprocess.apply(final, p, result)

        outputs, mv = await self._run(mv, req.inputs, plan.model_outputs, version, post)
        binary = set(outputs) if req.binary_default else req.binary_outputs
        payload, headers = encode_infer(mv.name, str(mv.version), req.id, outputs, binary)
        return Response(payload, headers=headers)

    # -- Vertex AI ---------------------------------------------------------------------
    async def vertex_health(self, request):
        return Response(status_code=200 if self.store.ready else 503)

    async def vertex_predict(self, request):
        name = self.settings.vertex_model or self._only_model()
        mv = self.store.get(name)
        body = await self._body(request)
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
            return await self._infer_v2(mv, body, header)
        params = doc.get("parameters") or {}
        if not isinstance(params, dict):
            raise ClientError("'parameters' must be a JSON object, e.g. {\"probabilities\": true}")
        postprocess.wants_probabilities(params)  # a 4xx before any compute
        inputs = self._instances(mv, doc["instances"])
        limit = mv.policy.max_batch_size or 1
        rows = len(next(iter(inputs.values())))
        # Vertex clients send many instances at once: split them into batches the model accepts
        parts = await asyncio.gather(*[self._run(mv, {k: v[i:i + limit] for k, v in inputs.items()}, None)
                                       for i in range(0, rows, limit)])
        merged = {k: np.concatenate([p[k] for p, _ in parts]) for k in parts[0][0]}
        mv = parts[-1][1]
        predictions = postprocess.predictions(mv, merged, params)
        return _json({"predictions": predictions, "deployedModelId": None, "model": mv.name,
                      "modelVersionId": str(mv.version)})

    def _only_model(self) -> str:
        names = sorted(self.store.models)
        if len(names) != 1:
            raise ServerError(f"the predict route needs one model; the repository has {names}: start the server "
                              "with --model NAME", status=503)
        return names[0]

    @staticmethod
    def _instances(mv: ModelVersion, instances) -> dict[str, np.ndarray]:
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

    # -- errors and lifecycle ------------------------------------------------------------
    async def _client_error(self, request, exc):
        return _error(str(exc), exc.status, exc.headers)

    async def _http_error(self, request, exc: HTTPException):
        message = {404: f"no route {request.method} {request.url.path}; see GET /v2 and the KServe v2 protocol",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
        return _error(message, exc.status_code)

    async def _disconnect(self, request, exc):
        return Response(status_code=499)

    async def _unexpected(self, request, exc):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(f"internal error: {type(exc).__name__}: {exc}", 500)

    async def _poll(self):
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.store.refresh()
            except Exception:  # keep polling; a broken repository state is reported, not fatal
                log.exception("repository poll failed")

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        await self.store.refresh()
        if self.settings.poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            yield
        finally:
            if self._poller:
                self._poller.cancel()
            # uvicorn has already waited (up to the request timeout) for in-flight requests; what
            # is left is abandoned work, so a stuck batch cannot keep the process from exiting
            await self.store.close(timeout_s=1.0)

    def build(self) -> Starlette:
        routes = [
            Route("/v2/health/live", self.live), Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/models/stats", self.model_stats),
        ]
        for prefix in ("/v2/models/{model}/versions/{version}", "/v2/models/{model}"):
            routes += [Route(prefix, self.model_metadata), Route(prefix + "/ready", self.model_ready),
                       Route(prefix + "/config", self.model_config), Route(prefix + "/stats", self.model_stats),
                       Route(prefix + "/infer", self.infer, methods=["POST"])]
        s = self.settings
        if s.vertex_health_route:
            routes.append(Route(s.vertex_health_route, self.vertex_health))
        if s.vertex_predict_route:
            routes.append(Route(s.vertex_predict_route, self.vertex_predict, methods=["POST"]))
        handlers = {ClientError: self._client_error, ServerError: self._client_error, HTTPException: self._http_error,
                    ClientDisconnect: self._disconnect, Exception: self._unexpected}
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self.lifespan)
