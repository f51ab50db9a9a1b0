"""Triton's `inference.GRPCInferenceService` over the data plane (the same one HTTP uses).

Each RPC decodes its message (``codec``), calls one data plane method and encodes the answer, so
the batcher, the model store, the statistics and the Prometheus metrics see gRPC requests exactly
as they see HTTP ones. Failures become gRPC status codes through one table (``status_code``):

    400 (a ClientError)        INVALID_ARGUMENT     the request is wrong; the message says how
    404 (unknown model/version) NOT_FOUND
    413, and a full queue      RESOURCE_EXHAUSTED   (grpc itself refuses a message over the size limit)
    504 (request timeout)      DEADLINE_EXCEEDED
    503 otherwise              UNAVAILABLE          not ready, being reloaded, shutting down
    500                        INTERNAL             a model that fails on valid input, as HTTP's 500

ModelStreamInfer (tritonclient's ``start_stream`` / ``async_stream_infer``) runs the requests of
a stream concurrently, so they batch with each other, and answers each as it completes (the
client matches answers by request id); a request that fails is answered with its message in
``error_message`` and the stream goes on. When the server stops, an open stream takes no more
requests, answers those it took and ends (status OK), so it cannot hold the shutdown open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from modelpress.serving.dataplane import DataPlane
from modelpress.serving.errors import ClientError, RequestError, answer
from modelpress.serving.grpc import codec

log = logging.getLogger("modelpress.serve")
STREAM_IN_FLIGHT = 256   # requests of one stream running at once; the stream's reader waits beyond that
_STOP_READING = object()  # in a stream's answer queue: no more requests will be taken
_CODES = {404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          429: grpc.StatusCode.RESOURCE_EXHAUSTED, 501: grpc.StatusCode.UNIMPLEMENTED,
          503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}


def queue_full(exc: BaseException) -> bool:
    """The batcher's "queue is full" 503 (HTTP answers it 503 + Retry-After, like other 503s; gRPC
    has a code of its own for it). Told apart by the batcher's message, which names the queued rows."""
    return isinstance(exc, RequestError) and exc.status == 503 and "rows already queued" in str(exc)


def status_code(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple]:
    """(code, message, trailing metadata) for any exception a request raised."""
    status, message, headers = answer(exc)
    if queue_full(exc):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    elif status in _CODES:
        code = _CODES[status]
    elif 400 <= status < 500:
        code = grpc.StatusCode.INVALID_ARGUMENT
    else:
        code = grpc.StatusCode.INTERNAL
    return code, message, tuple((k.lower(), str(v)) for k, v in headers.items())


def _answers(method):
    """Turn what an RPC raises into its status; anything unexpected is logged, then INTERNAL."""
    @functools.wraps(method)
    async def rpc(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as exc:
            if not isinstance(exc, RequestError):
                log.exception("unexpected error in gRPC %s", method.__name__)
            code, message, metadata = status_code(exc)
            await context.abort(code, message, trailing_metadata=metadata)
    return rpc


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane):
        self.plane = plane
        self.closing = False
        self._streams: set[asyncio.Queue] = set()  # the answer queues of open streams

    # -- health and metadata ----------------------------------------------------------------
    @_answers
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @_answers
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.not_ready_reason() is None)

    @_answers
    async def ModelReady(self, request, context):
        try:  # an unknown model is simply not ready (tritonclient's is_model_ready answers False)
            why = self.plane.model_not_ready_reason(request.name, request.version or None)
        except ClientError as exc:
            if exc.status != 404:
                raise
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=why is None)

    @_answers
    async def ServerMetadata(self, request, context):
        doc = self.plane.server_metadata()
        return pb.ServerMetadataResponse(name=doc["name"], version=doc["version"], extensions=doc["extensions"])

    @_answers
    async def ModelMetadata(self, request, context):
        return codec.metadata_response(self.plane.model_metadata(request.name, request.version or None))

    @_answers
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=self.plane.model_config(request.name, request.version or None))

    @_answers
    async def ModelStatistics(self, request, context):
        return codec.statistics_response(self.plane.statistics(request.name or None, request.version or None))

    @_answers
    async def RepositoryIndex(self, request, context):
        return codec.index_response(self.plane.repository_index(), ready_only=request.ready)

    # -- inference --------------------------------------------------------------------------
    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        version = request.model_version or None
        mv = self.plane.model(request.model_name, version)  # an unknown model is NOT_FOUND before decoding
        req = codec.decode_infer(request, bytes_inputs=mv.text is not None)  # texts only for a text model
        result = await self.plane.infer(mv, req, version)
        return codec.encode_infer(result.model.name, str(result.model.version), result.id, result.outputs,
                                  result.parameters)

    @_answers
    async def ModelInfer(self, request, context):
        return await self.infer(request)

    def close(self) -> None:
        """The server is stopping: every open stream stops reading, answers what it took, and ends."""
        self.closing = True
        for answers in list(self._streams):
            answers.put_nowait(_STOP_READING)

    async def ModelStreamInfer(self, request_iterator, context):
        answers: asyncio.Queue = asyncio.Queue()  # responses, and _STOP_READING once no more requests come
        room = asyncio.Semaphore(STREAM_IN_FLIGHT)
        running: set[asyncio.Task] = set()
        taken = 0  # requests read and not yet answered on the stream
        loop = asyncio.get_running_loop()

        async def one(request):
            try:
                response = pb.ModelStreamInferResponse(infer_response=await self.infer(request))
            except Exception as exc:  # the stream goes on; this request's answer is its error
                if not isinstance(exc, RequestError):
                    log.exception("unexpected error in a gRPC stream request")
                response = pb.ModelStreamInferResponse(error_message=status_code(exc)[1], infer_response=(
                    pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                          id=request.id)))
            finally:
                room.release()
            answers.put_nowait(response)

        async def read():
            nonlocal taken
            try:
                async for request in request_iterator:
                    await room.acquire()
                    if self.closing:
                        break
                    taken += 1
                    task = loop.create_task(one(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
            finally:
                answers.put_nowait(_STOP_READING)  # the client closed its side, or the server stops

        self._streams.add(answers)
        reader = loop.create_task(read())
        reading = not self.closing
        try:
            while reading or taken:
                response = await answers.get()
                if response is _STOP_READING:
                    reading = False
                    reader.cancel()
                    continue
                taken -= 1
                yield response
        finally:  # the client went away (or every answer is out): drop what nobody will read
            self._streams.discard(answers)
            reader.cancel()
            for task in list(running):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
