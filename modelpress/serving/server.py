"""Start the server: uvicorn (uvloop + httptools) for the API, prometheus_client for /metrics.

Vertex AI custom-container mode turns on when AIP_HTTP_PORT is set: bind 0.0.0.0 on that
port, serve AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE, load the repository at
AIP_STORAGE_URI (gs:// is copied to local disk first).

gRPC (Triton's GRPCInferenceService, `serving.grpc`) listens on its own port in the same event
loop, over the same data plane: it starts answering when HTTP does (once the models are loaded)
and stops with it.

Every port is bound before any model loads, so a busy port is one line naming it and its flag.
SIGTERM and SIGINT stop accepting connections and calls (HTTP and gRPC at once), let in-flight
requests finish (at most the request timeout), close the models and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from modelpress.core.errors import ModelpressError
from modelpress.serving.dataplane import DataPlane
from modelpress.serving.metrics import ServerMetrics
from modelpress.serving.rest.app import build_app
from modelpress.serving.settings import ServeSettings
from modelpress.serving.store import ModelStore

log = logging.getLogger("modelpress.serve")


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    http_port: int = 8000
    metrics_port: int = 8002      # 0: no metrics endpoint
    grpc_port: int = 8001         # 0: no gRPC


def vertex_environment(env=os.environ) -> dict | None:
    """Vertex's contract for custom serving containers, or None outside Vertex."""
    if "AIP_HTTP_PORT" not in env:
        return None
    port = env["AIP_HTTP_PORT"]
    if not port.isdigit():
        raise ModelpressError(f"AIP_HTTP_PORT must be a port number, got {port!r}")
    return {"port": int(port), "health_route": env.get("AIP_HEALTH_ROUTE", "/health"),
            "predict_route": env.get("AIP_PREDICT_ROUTE", "/predict"), "storage_uri": env.get("AIP_STORAGE_URI")}


def fetch_repository(uri: str, dest: Path | None = None) -> Path:
    """A local copy of the repository at `uri` (a path, or gs://bucket/prefix)."""
    if not uri.startswith("gs://"):
        path = Path(uri)
        if not path.is_dir():
            raise ModelpressError(f"model repository {uri} is not a directory; point --repository (or "
                                  "AIP_STORAGE_URI) at the folder the deploy step wrote")
        return path
    from modelpress.deploy.vertex.storage import download_prefix

    dest = dest or Path(tempfile.mkdtemp(prefix="modelpress-repository-"))
    try:
        count = download_prefix(uri, dest)
    except ModelpressError as exc:
        raise ModelpressError(f"{exc}; is AIP_STORAGE_URI the model repository the deploy wrote?") from None
    log.info("copied %d files from %s to %s", count, uri, dest)
    return dest


def _check_vertex_model(root: Path, model: str | None) -> None:
    """The predict route serves one model: know which before reporting healthy."""
    from modelpress.deploy.repository import CONFIG_FILE

    names = sorted(d.name for d in root.iterdir() if (d / CONFIG_FILE).exists())
    if model is None and len(names) != 1:
        raise ModelpressError(f"the repository at {root} holds models {names}; the Vertex predict route serves "
                              "one: pass --model NAME")
    if model is not None and model not in names:
        raise ModelpressError(f"--model {model!r} is not in the repository at {root}; it holds {names}")


def _bind_error(host: str, port: int, exc: OSError, what: str, fix: str) -> ModelpressError:
    if exc.errno == errno.EADDRINUSE:
        return ModelpressError(f"{what} port {port} on {host} is already in use (is another server running?); "
                               f"stop it or choose a free port with {fix}")
    return ModelpressError(f"cannot listen on {host}:{port} for the {what}: {exc.strerror or exc}; "
                           f"choose another address or port with --host / {fix}")


def bind_api_socket(host: str, port: int, fix: str = "--http-port", what: str = "API") -> socket.socket:
    """The API's listening socket, bound the way uvicorn binds it, but failing with one clear line."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _bind_error(host, port, exc, what, fix) from None
    return sock


def _with_transports(app, transports: list) -> None:
    """Run the other transports (gRPC) inside the app's lifespan: they start answering once the
    models are loaded, and the models close only after their in-flight calls have finished."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:
            for t in transports:
                await t.start()
            try:
                yield state
            finally:
                await asyncio.gather(*(t.stop() for t in transports))

    app.router.lifespan_context = lifespan


def build_server(app, settings: ServeSettings, *, transports=(), **config):
    """A uvicorn server for `app` whose graceful shutdown is bounded by the request timeout.
    `transports` (a GrpcTransport) bind before the models load and stop with HTTP."""
    import uvicorn

    transports = list(transports)
    if transports:
        _with_transports(app, transports)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises the stopping signal once it has shut down gracefully, which would
            # end the process as "killed by SIGTERM" (or a KeyboardInterrupt); a drained server exits 0
            with super().capture_signals():
                yield
                getattr(self, "_captured_signals", []).clear()

        async def startup(self, sockets=None):
            try:
                for t in transports:  # in this event loop, before the lifespan loads the models
                    t.bind()
                await super().startup(sockets)
            except BaseException:  # a port or the models failed (uvicorn exits): release the ports
                await asyncio.gather(*(t.stop() for t in transports), return_exceptions=True)
                raise

        async def shutdown(self, sockets=None):
            for t in transports:  # refuse new calls now, beside HTTP; the lifespan awaits their drain
                t.stop()
            await super().shutdown(sockets)

    # in-flight requests end within the request timeout (answered, or 504): wait no longer
    return Server(uvicorn.Config(app, lifespan="on", access_log=False,
                                 timeout_graceful_shutdown=max(1, int(settings.request_timeout_s + 0.999)),
                                 **config))


def serve(repository: str | None, listen: Listen, settings: ServeSettings, *, max_queue_rows: int = 1024,
          threads: int | None = None) -> None:
    from prometheus_client import start_http_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    vertex = vertex_environment()
    if vertex:
        listen = replace(listen, host="0.0.0.0", http_port=vertex["port"])
        settings = replace(settings, vertex_health_route=vertex["health_route"],
                           vertex_predict_route=vertex["predict_route"])
        repository = repository or vertex["storage_uri"]
    if not repository:
        raise ModelpressError("no model repository: pass --repository DIR (or set AIP_STORAGE_URI in Vertex mode)")
    root = fetch_repository(repository)
    if vertex:
        _check_vertex_model(root, settings.vertex_model)
    sock = bind_api_socket(listen.host, listen.http_port, "AIP_HTTP_PORT" if vertex else "--http-port")
    metrics = ServerMetrics()
    store = ModelStore(root, max_queue_rows=max_queue_rows, threads=threads, observe=metrics.observe)
    metrics.watch(store)
    plane = DataPlane(store, settings, metrics)
    if listen.metrics_port:
        try:
            start_http_server(listen.metrics_port, addr=listen.host, registry=metrics.registry)
        except OSError as exc:
            sock.close()
            raise _bind_error(listen.host, listen.metrics_port, exc, "metrics",
                              "--metrics-port (0 turns metrics off)") from None
    transports = []
    if listen.grpc_port:
        from modelpress.serving.grpc.transport import FLAG, GrpcTransport

        try:  # grpc reports a busy port with a native log line and a vague error: check it plainly first
            if listen.grpc_port in (listen.http_port, listen.metrics_port):
                raise ModelpressError(f"gRPC port {listen.grpc_port} is also the HTTP or metrics port; give gRPC "
                                      f"its own with {FLAG}")
            bind_api_socket(listen.host, listen.grpc_port, FLAG, what="gRPC").close()
        except ModelpressError:
            sock.close()
            raise
        transports.append(GrpcTransport(plane, listen.host, listen.grpc_port))
    log.info("serving %s on http://%s:%d%s%s%s", root, listen.host, listen.http_port,
             f" and gRPC :{listen.grpc_port}" if listen.grpc_port else "",
             f" (metrics on :{listen.metrics_port}/metrics)" if listen.metrics_port else "",
             f" (Vertex mode: {settings.vertex_predict_route})" if vertex else "")
    server = build_server(build_app(plane), settings, transports=transports, loop="uvloop", http="httptools",
                          log_level="warning", backlog=2048, timeout_keep_alive=30)
    server.run(sockets=[sock])
