"""The load generator's gRPC target: Triton's GRPCInferenceService (modelpress serve, Triton, ...).

It plays the part `generator.Target` plays for HTTP under `closed_loop` and `open_loop`: `open`
gives the "session" (here a few grpc.aio channels), `prepare` reads the model's metadata and builds
the request once, `send` makes one ModelInfer call and returns 200 for OK, else the gRPC status
code's name (RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED, ...), which the report counts as
errors the way it counts HTTP statuses.

The request is serialised once (raw_input_contents, as tritonclient.grpc sends it) and each call
sends those bytes as they are, and reads the answer as bytes, so the client spends its CPU on
gRPC, not on protobuf.
"""

from __future__ import annotations

import itertools

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.serving.protocol import DATATYPES

SERVICE = "/inference.GRPCInferenceService/"
STREAMS_PER_CHANNEL = 128  # concurrent calls per HTTP/2 connection before another channel is opened


def grpc_address(url: str) -> str:
    """host:port from "grpc://host:port", "host:port" (or an http:// URL someone passed by habit)."""
    for prefix in ("grpc://", "http://", "https://"):
        if url.startswith(prefix):
            url = url[len(prefix):]
    return url.rstrip("/")


class _Channels:
    """A few channels (each its own connection), used in turn; closed together."""

    def __init__(self, address: str, count: int, timeout_s: float):
        import grpc

        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                   ("grpc.use_local_subchannel_pool", 1)]  # separate connections, not one shared
        self.channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(count)]
        self.timeout_s = timeout_s
        self._infer = [c.unary_unary(SERVICE + "ModelInfer") for c in self.channels]  # bytes in, bytes out
        self._turn = itertools.cycle(range(count))

    def infer(self, payload: bytes):
        return self._infer[next(self._turn)](payload, timeout=self.timeout_s)

    def call(self, method: str, request, response_type):
        return self.channels[0].unary_unary(SERVICE + method, request_serializer=type(request).SerializeToString,
                                            response_deserializer=response_type.FromString)(
            request, timeout=self.timeout_s)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for c in self.channels:
            await c.close()


class GrpcTarget:
    """One model behind a GRPCInferenceService at `url` (host:port or grpc://host:port)."""

    protocol = "grpc"

    def __init__(self, url: str, model: str, version: str | None = None, batch: int = 1, seed: int = 0):
        self.address = grpc_address(url)
        self.model, self.version, self.batch, self.seed = model, version or "", batch, seed
        self.body: bytes = b""   # the serialised ModelInferRequest, built by prepare()

    async def open(self, limit: int, timeout_s: float) -> _Channels:
        count = 4 if limit <= 0 else max(1, min(8, -(-limit // STREAMS_PER_CHANNEL)))
        return _Channels(self.address, count, timeout_s)

    async def prepare(self, session: _Channels) -> None:
        import grpc
        from tritonclient.grpc import service_pb2 as pb

        from modelpress.serving.grpc.codec import infer_request

        try:
            meta = await session.call("ModelMetadata", pb.ModelMetadataRequest(name=self.model, version=self.version),
                                      pb.ModelMetadataResponse)
        except grpc.aio.AioRpcError as exc:
            raise ModelpressError(f"gRPC ModelMetadata for {self.model!r} at {self.address} failed: "
                                  f"{exc.code().name}: {exc.details()}; is the server running with gRPC on that "
                                  "port?") from None
        rng = np.random.default_rng(self.seed)
        inputs = {}
        for t in meta.inputs:
            if t.datatype not in DATATYPES:
                raise ModelpressError(f"input {t.name!r} of {self.model!r} is {t.datatype}; the load generator "
                                      "makes numeric tensors only")
            shape = [self.batch if d == -1 and i == 0 else (1 if d == -1 else d) for i, d in enumerate(t.shape)]
            dtype = DATATYPES[t.datatype]
            inputs[t.name] = (rng.random(shape).astype(dtype) if dtype.kind == "f"
                              else rng.integers(0, 2, shape).astype(dtype))
        body = infer_request(self.model, inputs, version=self.version).SerializeToString()
        try:  # a sanity check: the request must work before it is measured
            pb.ModelInferResponse.FromString(await session.infer(body))
        except grpc.aio.AioRpcError as exc:
            raise ModelpressError(f"a test request to {self.model!r} at {self.address} failed with "
                                  f"{exc.code().name}: {exc.details()}") from None
        self.body = body

    async def send(self, session: _Channels) -> int | str:
        import grpc

        try:
            await session.infer(self.body)
            return 200
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
