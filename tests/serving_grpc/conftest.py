"""gRPC servers for the tests: `modelpress serve` as a subprocess with a free --grpc-port (the HTTP
suite's `start_server`, which waits until the models are loaded), or the real server objects in a
thread of this process (HTTP and gRPC in one event loop, as `serve` runs them), so a test can reach
into the store while tritonclient.grpc talks to it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.serving.conftest import (Server, deploy_seq, deploy_tiny, free_port, serving_in_thread, start_server,
                                   stop_server)


@dataclass
class GrpcServer:
    http: Server          # the subprocess, its HTTP url, log and repository
    target: str           # host:port of its gRPC listener


def start_grpc_server(repo: Path | None, tmp: Path, *extra: str, env: dict | None = None) -> GrpcServer:
    port = free_port()
    return GrpcServer(start_server(repo, tmp, "--grpc-port", str(port), *extra, env=env), f"127.0.0.1:{port}")


@dataclass
class InProcess:
    target: str
    http: str
    store: object
    plane: object
    loop: object


@contextlib.contextmanager
def in_process_grpc_server(repo: Path, max_queue_rows: int = 1024, **settings):
    """HTTP (uvicorn) and gRPC on 127.0.0.1, free ports, one event loop in a thread of this process."""
    from modelpress.serving.dataplane import DataPlane
    from modelpress.serving.grpc.transport import GrpcTransport
    from modelpress.serving.rest.app import build_app
    from modelpress.serving.server import bind_api_socket, build_server
    from modelpress.serving.settings import ServeSettings
    from modelpress.serving.store import ModelStore

    store = ModelStore(repo, max_queue_rows=max_queue_rows)
    config = ServeSettings(**{"poll_seconds": 0, **settings})
    plane = DataPlane(store, config)
    sock = bind_api_socket("127.0.0.1", 0)
    transport = GrpcTransport(plane, "127.0.0.1", 0)
    server = build_server(build_app(plane), config, transports=[transport], log_config=None, log_level="warning")
    with serving_in_thread(server, sock) as loop:
        yield InProcess(transport.target, f"http://127.0.0.1:{sock.getsockname()[1]}", store, plane, loop)


def grpc_input(name: str, array: np.ndarray, datatype: str | None = None) -> grpcclient.InferInput:
    """tritonclient.grpc's InferInput, sent as raw_input_contents (its default)."""
    from tritonclient.utils import np_to_triton_dtype

    i = grpcclient.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
    i.set_data_from_numpy(array)
    return i


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory):
    """tiny (image classifier, max_batch_size 16) and seq (two INT64 inputs), a 50 KB message limit."""
    tmp = tmp_path_factory.mktemp("grpc")
    repo = tmp / "repo"
    deploy_tiny(repo, tmp, max_batch_size=16, max_queue_delay_us=2000, instances=2)
    deploy_seq(repo, tmp, max_batch_size=16, max_queue_delay_us=2000, instances=1)
    s = start_grpc_server(repo, tmp, "--poll-seconds", "0", "--max-body-mb", "0.05")
    yield s
    stop_server(s.http)


@pytest.fixture(scope="module")
def client(grpc_server):
    c = grpcclient.InferenceServerClient(grpc_server.target)
    yield c
    c.close()


# the text classifier the text-serving suite builds (a tiny BERT and its tokenizer), for gRPC's text test
from tests.text_serving.conftest import text_build  # noqa: E402,F401  (a fixture: imported to register it)
