"""A real server on 127.0.0.1 (a subprocess, or in-process in a thread), serving small real ONNX
models: a tiny image classifier and a two-input INT64 sequence model with a dynamic length."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from modelpress.deploy import repository


def make_onnx(folder: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """input [N,1,8,8] FP32 -> Flatten -> Gemm -> logits [N,10]; weights from `seed`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((64, 10)) * scale).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def expected_logits(x: np.ndarray, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((64, 10)) * scale).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    return x.reshape(len(x), -1) @ w + b


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    """Poll `predicate` every 0.1 s until it holds (True) or `timeout_s` passes (False)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Server:
    url: str
    host: str
    metrics_url: str
    repo: Path
    proc: subprocess.Popen
    log: Path
    grpc_port: int = 0

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.url + path)

    def post(self, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()


def start_server(repo: Path | None, tmp: Path, *extra: str, env: dict | None = None, port: int | None = None) -> Server:
    port = port or free_port()
    mport, gport = free_port(), free_port()  # a caller's own --grpc-port (in extra) wins
    log = tmp / f"serve-{port}.log"
    where = ["--repository", str(repo)] if repo else []
    proc = subprocess.Popen([sys.executable, "-m", "modelpress", "serve", *where,
                             "--http-port", str(port), "--metrics-port", str(mport),
                             "--grpc-port", str(gport), *extra],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/v2/health/live", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError(f"server did not start:\n{log.read_text()}")
    return Server(url, f"127.0.0.1:{port}", f"http://127.0.0.1:{mport}/metrics", repo, proc, log, gport)


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        pytest.fail(f"server did not shut down within 15 s of SIGTERM:\n{server.log.read_text()}")


def deploy_tiny(repo: Path, tmp: Path, name: str = "tiny", seed: int = 0, **kwargs) -> int:
    return repository.deploy(make_onnx(tmp / f"src-{name}-{seed}", seed=seed), repo, name, **kwargs)


def load_across_a_deploy(repo: Path, tmp: Path, target, requests: int = 10_000, concurrency: int = 64):
    """`requests` at `concurrency` through `target` (a loadtest target of model tiny), with tiny's
    version 2 (seed 1) deployed 0.3 s in; returns the load generator's result."""
    import asyncio

    from modelpress import loadtest

    async def go():
        async def deploy_midway():
            await asyncio.sleep(0.3)
            await asyncio.to_thread(deploy_tiny, repo, tmp, seed=1, max_batch_size=32, max_queue_delay_us=1000,
                                    instances=2)
        deployer = asyncio.get_running_loop().create_task(deploy_midway())
        result = await loadtest.closed_loop(target, concurrency, duration_s=600, warmup_s=0, max_requests=requests)
        await deployer
        return result

    return asyncio.run(go())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    repo = tmp / "repo"
    deploy_tiny(repo, tmp, max_batch_size=16, max_queue_delay_us=2000, instances=2)
    s = start_server(repo, tmp, "--poll-seconds", "0", "--max-body-mb", "0.05")
    yield s
    stop_server(s)


VOCAB = 100


def make_seq_onnx(folder: Path) -> Path:
    """Two INT64 inputs `input_ids`, `attention_mask` [N, L] (L dynamic) -> `total` [N, 1], the
    sum over L of input_ids * attention_mask. The ids go through a Gather over a table of
    0..VOCAB-1, so an id >= VOCAB fails inside ONNX Runtime: a model that fails on some inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    seq = ["batch", "seq"]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["ids"], axis=0),
         helper.make_node("Mul", ["ids", "attention_mask"], ["masked"]),
         helper.make_node("ReduceSum", ["masked", "axes"], ["total"], keepdims=1)],
        "seq",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, seq),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, seq)],
        [helper.make_tensor_value_info("total", TensorProto.INT64, ["batch", 1])],
        [numpy_helper.from_array(np.arange(VOCAB, dtype=np.int64), "table"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def seq_request(rows: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask and the expected total for one request."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (rows, length), dtype=np.int64)
    mask = rng.integers(0, 2, (rows, length), dtype=np.int64)
    return ids, mask, (ids * mask).sum(axis=1, keepdims=True)


def deploy_seq(repo: Path, tmp: Path, name: str = "seq", **kwargs) -> int:
    return repository.deploy(make_seq_onnx(tmp / f"src-{name}"), repo, name, **kwargs)


@dataclass
class InProcess:
    url: str
    host: str
    store: object
    loop: object

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.url + path)


@contextlib.contextmanager
def in_process_server(repo: Path, **settings):
    """The real app under uvicorn on 127.0.0.1, in a thread of this process, so a test can reach
    into its objects (to inject a fault) while a real client talks to it over HTTP."""
    import asyncio

    from modelpress.serving.dataplane import DataPlane
    from modelpress.serving.rest.app import build_app
    from modelpress.serving.server import bind_api_socket, build_server
    from modelpress.serving.settings import ServeSettings
    from modelpress.serving.store import ModelStore

    store = ModelStore(repo)
    config = ServeSettings(poll_seconds=0, **settings)
    sock = bind_api_socket("127.0.0.1", 0)
    host = f"127.0.0.1:{sock.getsockname()[1]}"
    server = build_server(build_app(DataPlane(store, config)), config, log_config=None, log_level="warning")
    with serving_in_thread(server, sock) as loop:
        yield InProcess(f"http://{host}", host, store, loop)


@contextlib.contextmanager
def serving_in_thread(server, sock):
    """Run a built uvicorn server on `sock` in a thread of this process; yields its event loop."""
    import asyncio

    loops = []

    def run():
        async def main():
            loops.append(asyncio.get_running_loop())
            await server.serve(sockets=[sock])
        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "the in-process server did not start"
    try:
        yield loops[0]
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "the in-process server did not stop"
