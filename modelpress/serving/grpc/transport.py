"""The gRPC listener: a `grpc.aio` server in the HTTP server's event loop, over the same data plane.

Its life follows the HTTP server's (``serving.server``): the port is bound before any model loads
(``bind``), it starts answering once the models are loaded (``start``, when HTTP does), and on
SIGTERM it stops taking new calls at once, beside HTTP, and lets calls in flight finish within the
request timeout before the models close (``stop``, idempotent: every caller awaits the same drain).

Messages are limited to the HTTP body limit both ways (``grpc.max_receive_message_length`` /
``grpc.max_send_message_length``; grpc answers RESOURCE_EXHAUSTED above it), and SO_REUSEPORT is
off, so a second server on the same port fails to bind instead of sharing it unnoticed.
"""

from __future__ import annotations

import asyncio
import math

import grpc
from tritonclient.grpc import service_pb2_grpc

from modelpress.core.errors import ModelpressError
from modelpress.serving.dataplane import DataPlane
from modelpress.serving.grpc.service import InferenceService

FLAG = "--grpc-port (0 turns gRPC off)"


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0)]


class GrpcTransport:
    """GRPCInferenceService on `host:port` (port 0: any free port; `port` holds the bound one)."""

    def __init__(self, plane: DataPlane, host: str, port: int):
        self.plane, self.host, self.port = plane, host, port
        self.server: grpc.aio.Server | None = None
        self.service = InferenceService(plane)
        self._stopping: asyncio.Future | None = None

    @property
    def target(self) -> str:
        """What a client dials, e.g. tritonclient.grpc.InferenceServerClient(target)."""
        return address(self.host, self.port)

    def bind(self) -> int:
        """Create the server and bind its port (in the running event loop, before models load)."""
        self.server = grpc.aio.server(options=server_options(self.plane.settings.max_body_bytes))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, self.server)
        try:
            self.port = self.server.add_insecure_port(address(self.host, self.port))
        except RuntimeError:
            raise ModelpressError(f"gRPC port {self.port} on {self.host} cannot be bound (already in use, or not an "
                                  f"address of this machine); choose another with {FLAG}") from None
        return self.port

    async def start(self) -> None:
        await self.server.start()

    def stop(self) -> asyncio.Future:
        """Refuse new calls now; the future completes once calls in flight have finished (at most the
        request timeout, as HTTP waits) and the server is down. Every call returns the same future."""
        if self._stopping is None:
            if self.server is None:
                self._stopping = asyncio.get_running_loop().create_future()
                self._stopping.set_result(None)
            else:
                grace = max(1, math.ceil(self.plane.settings.request_timeout_s))
                self.service.close()  # open streams finish what they took and end
                self._stopping = asyncio.ensure_future(self.server.stop(grace))
        return self._stopping
