"""The `modelpress serve` process: SIGTERM under load drains and exits on time; a busy port is
one clear line; `modelpress loadtest` prints its table header first."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from modelpress.loadtest import HEADER
from modelpress.serving.protocol import binary_request

from .conftest import deploy_tiny, free_port, start_server

REQUEST_TIMEOUT_S = 5


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_under_load_drains_in_flight_requests_and_exits_zero(tmp_path, sig):
    repo = tmp_path / "repo"
    # every batch waits 200 ms for company, so requests are in flight whenever the signal lands
    deploy_tiny(repo, tmp_path, max_batch_size=64, max_queue_delay_us=200_000, preferred_batch_sizes=())
    server = start_server(repo, tmp_path, "--poll-seconds", "0.2", "--request-timeout", str(REQUEST_TIMEOUT_S))
    body, headers = binary_request({"input": np.zeros((1, 1, 8, 8), np.float32)})

    async def load_then_signal():
        import aiohttp

        records, pending, stop = [], {}, asyncio.Event()
        async with aiohttp.ClientSession() as session:
            async def client(n: int):
                while not stop.is_set():
                    sent = pending[n] = time.monotonic()
                    try:
                        async with session.post(server.url + "/v2/models/tiny/infer", data=body,
                                                headers=headers) as r:
                            await r.read()
                            status = r.status
                    except (aiohttp.ClientError, OSError):  # the listener is closed: expected after the signal
                        status = 0
                        await asyncio.sleep(0.01)
                    del pending[n]
                    records.append((sent, time.monotonic(), status))

            clients = [asyncio.get_running_loop().create_task(client(n)) for n in range(16)]
            await asyncio.sleep(0.5)
            # signal while a request sent 50 ms ago waits for its batch: surely accepted, not yet answered
            while not any(time.monotonic() - t > 0.05 for t in list(pending.values())):
                await asyncio.sleep(0.002)
            signalled = time.monotonic()
            server.proc.send_signal(sig)
            try:
                code = await asyncio.to_thread(server.proc.wait, REQUEST_TIMEOUT_S + 5)
            finally:
                stop.set()
                await asyncio.gather(*clients)
            return code, time.monotonic() - signalled, signalled, records

    try:
        code, took, signalled, records = asyncio.run(load_then_signal())
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    log = server.log.read_text()
    assert code == 0, log
    assert took < REQUEST_TIMEOUT_S + 2, (took, log)
    # sent well before the signal, still waiting for its batch when it came: answered, not dropped
    in_flight = [status for sent, done, status in records if sent < signalled - 0.05 and done > signalled]
    assert in_flight and set(in_flight) == {200}, in_flight
    assert {status for _, _, status in records} <= {200, 0}  # never a 5xx while stopping
    assert "Traceback" not in log


def _serve(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelpress", "serve", *args], capture_output=True, text=True,
                          timeout=60, **kw)


@pytest.mark.parametrize("which", ["--http-port", "--metrics-port"])
def test_a_busy_port_is_one_clear_line(tmp_path, which):
    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"--http-port": str(free_port()), "--metrics-port": str(free_port()), which: str(port)}
        proc = _serve("--repository", str(repo), *[x for kv in ports.items() for x in kv], "--poll-seconds", "0")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"port {port}" in lines[0] and "already in use" in lines[0] and which in lines[0]
    assert "Traceback" not in proc.stderr


def test_loadtest_prints_the_header_before_the_rows(server):
    proc = subprocess.run([sys.executable, "-m", "modelpress", "loadtest", server.url, "--model", "tiny",
                           "--concurrency", "1,2", "--duration", "0.3", "--warmup", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == HEADER and lines[1].startswith("|---")
    rows = lines[2:]
    assert [r.split("|")[1:3] for r in rows] == [[" concurrency ", " 1 "], [" concurrency ", " 2 "]]
    assert proc.stdout.count(HEADER) == 1
    assert "closed loop: concurrency 1" in proc.stderr  # progress goes to stderr, beside the table
