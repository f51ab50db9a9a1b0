"""gRPC under load and across the server's life: 10,000 requests at concurrency 64 while a new
version is deployed (zero errors, batches forming), `modelpress loadtest --protocol grpc` in both
modes, a busy gRPC port as one clear line, and SIGTERM draining in-flight gRPC calls."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from modelpress import loadtest
from tests.serving.conftest import (deploy_tiny, expected_logits, free_port, load_across_a_deploy, stop_server,
                                   wait_for)

from .conftest import grpc_input, start_grpc_server


def _metric(text: str, name: str, version: str) -> float:
    line = f'{name}{{model="tiny",version="{version}"}} '
    return float(text.split(line)[1].split()[0]) if line in text else 0.0


def test_10k_requests_at_concurrency_64_across_a_new_version(tmp_path):
    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path, seed=0, max_batch_size=32, max_queue_delay_us=1000, instances=2)
    server = start_grpc_server(repo, tmp_path, "--poll-seconds", "0.2")
    try:
        result = load_across_a_deploy(repo, tmp_path, loadtest.GrpcTarget(server.target, "tiny"))
        assert result.requests == 10_000 and result.ok == 10_000 and result.errors == {}, result
        client = grpcclient.InferenceServerClient(server.target)
        assert wait_for(lambda: list(client.get_model_metadata("tiny").versions) == ["2"])
        with urllib.request.urlopen(server.http.metrics_url, timeout=5) as r:
            text = r.read().decode()  # counters of the retired version 1 included
        count = sum(_metric(text, "nv_inference_count", v) for v in ("1", "2"))
        assert count >= 10_000 and _metric(text, "nv_inference_request_failure", "1") == 0
        stats = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
        assert stats["version"] == "2" and int(stats["inference_count"]) == _metric(text, "nv_inference_count", "2")
        assert int(stats["inference_count"]) > 0  # the new version served part of the run
        assert int(stats["execution_count"]) < int(stats["inference_count"])  # in batches
        execs = sum(_metric(text, "nv_inference_exec_count", v) for v in ("1", "2"))
        assert count / execs > 1.5, (count, execs)

        x = np.random.default_rng(3).random((2, 1, 8, 8), dtype=np.float32)
        got = client.infer("tiny", [grpc_input("input", x)])
        assert got.get_response().model_version == "2"
        np.testing.assert_allclose(got.as_numpy("logits"), expected_logits(x, seed=1), rtol=1e-5, atol=1e-5)
        client.close()

        # the command: closed and open loop in one run, the same table as for HTTP
        out = tmp_path / "grpc.json"
        proc = subprocess.run([sys.executable, "-m", "modelpress", "loadtest", server.target, "--protocol", "grpc",
                               "--model", "tiny", "--rate", "100", "--concurrency", "4", "--duration", "0.5",
                               "--warmup", "0", "--batch", "2", "--output", str(out)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.strip().splitlines()
        assert lines[0] == loadtest.HEADER
        assert [r.split("|")[1:4] for r in lines[2:4]] == [[" rate ", " 100 ", " 2 "], [" concurrency ", " 4 ", " 2 "]]
        doc = json.loads(out.read_text())
        assert doc["protocol"] == "grpc" and all(r["ok"] > 0 and not r["errors"] for r in doc["results"])
    finally:
        stop_server(server.http)


def test_loadtest_against_no_grpc_server_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "modelpress", "loadtest", f"127.0.0.1:{free_port()}",
                           "--protocol", "grpc", "--model", "tiny", "--concurrency", "1", "--duration", "0.1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "UNAVAILABLE" in proc.stderr and "Traceback" not in proc.stderr


def test_a_busy_grpc_port_is_one_clear_line(tmp_path):
    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "modelpress", "serve", "--repository", str(repo),
                               "--http-port", str(free_port()), "--metrics-port", "0", "--grpc-port", str(port),
                               "--poll-seconds", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"gRPC port {port}" in lines[0] and "already in use" in lines[0] and "--grpc-port" in lines[0]


REQUEST_TIMEOUT_S = 5


def test_sigterm_drains_in_flight_grpc_calls_and_exits_zero(tmp_path):
    repo = tmp_path / "repo"
    # every batch waits 200 ms for company, so calls are in flight whenever the signal lands
    deploy_tiny(repo, tmp_path, max_batch_size=64, max_queue_delay_us=200_000, preferred_batch_sizes=())
    server = start_grpc_server(repo, tmp_path, "--poll-seconds", "0", "--request-timeout", str(REQUEST_TIMEOUT_S))
    proc = server.http.proc
    x = np.zeros((1, 1, 8, 8), np.float32)

    async def load_then_signal():
        client = aioclient.InferenceServerClient(server.target)
        records, pending, stop = [], {}, asyncio.Event()

        async def one(n: int):
            while not stop.is_set():
                sent = pending[n] = time.monotonic()
                try:
                    await client.infer("tiny", [grpc_input("input", x)], client_timeout=REQUEST_TIMEOUT_S + 5)
                    status = "OK"
                except InferenceServerException as exc:  # refused once the server stops taking calls
                    status = exc.status()
                    await asyncio.sleep(0.01)
                del pending[n]
                records.append((sent, time.monotonic(), status))

        try:
            clients = [asyncio.get_running_loop().create_task(one(n)) for n in range(16)]
            await asyncio.sleep(0.5)
            while not any(time.monotonic() - t > 0.05 for t in list(pending.values())):
                await asyncio.sleep(0.002)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(proc.wait, REQUEST_TIMEOUT_S + 5)
            finally:
                stop.set()
                await asyncio.gather(*clients)
            return code, time.monotonic() - signalled, signalled, records
        finally:
            await client.close()

    try:
        code, took, signalled, records = asyncio.run(load_then_signal())
    finally:
        if proc.poll() is None:
            proc.kill()
    log = server.http.log.read_text()
    assert code == 0 and took < REQUEST_TIMEOUT_S + 2, (code, took, log)
    in_flight = [s for sent, done, s in records if sent < signalled - 0.05 and done > signalled]
    assert in_flight and set(in_flight) == {"OK"}, in_flight
    assert {s for _, _, s in records} <= {"OK", "StatusCode.UNAVAILABLE"}  # refused, never failed
    assert "Traceback" not in log


@pytest.mark.parametrize("value", ["-1", "70000"])
def test_grpc_port_must_be_a_port_number(value):
    proc = subprocess.run([sys.executable, "-m", "modelpress", "serve", "--grpc-port", value],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--grpc-port: must be a port number" in proc.stderr


def test_an_open_stream_does_not_hold_the_shutdown_open(tmp_path):
    import queue

    from .conftest import in_process_grpc_server

    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path, max_batch_size=8)
    answers: queue.Queue = queue.Queue()
    with in_process_grpc_server(repo, request_timeout_s=20) as server:
        client = grpcclient.InferenceServerClient(server.target)
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(5):
            client.async_stream_infer("tiny", [grpc_input("input", np.zeros((1, 1, 8, 8), np.float32))],
                                      request_id=str(i))
        got = [answers.get(timeout=10) for _ in range(5)]
        assert all(error is None for _, error in got)
        stopping = time.monotonic()  # leaving the block stops the server, the stream still open
    took = time.monotonic() - stopping
    client.stop_stream()
    client.close()
    assert took < 5, took  # not the 20 s grace: the stream ended once its requests were answered
