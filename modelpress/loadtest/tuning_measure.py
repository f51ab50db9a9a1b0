"""One point of tune-serving: a real `modelpress serve` subprocess on 127.0.0.1 and a free port,
serving a temporary repository that holds one candidate config and the model's served version,
driven by the load generator in windows until they agree (perf_analyzer's stability rule, as
``modelpress.selection.benchmarking`` applies it), up to a limit."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.deploy.repository import CONFIG_FILE
from modelpress.loadtest.generator import Target, closed_loop, open_loop
from modelpress.loadtest.report import LevelResult, latency_summary
from modelpress.selection.benchmarking import best_run, spread


@dataclass(frozen=True)
class Load:
    """The load every point is measured under."""
    concurrency: int = 16              # closed loop: clients back to back (used when rate is None)
    rate: float | None = None          # open loop: requests per second
    arrivals: str = "constant"         # open loop: "constant" or "poisson" gaps
    duration_s: float = 10.0           # measured seconds per point, split into `windows` windows
    warmup_s: float = 2.0              # unmeasured seconds before the first window
    batch: int = 1                     # rows per request
    windows: int = 3                   # windows that must agree (and the split of duration_s)
    max_windows: int = 6               # windows measured at most while they disagree
    tolerance: float = 0.10            # windows agree within this on p50 and throughput
    seed: int = 0

    def describe(self) -> str:
        if self.rate:
            return f"open loop, {self.rate:g} requests/s ({self.arrivals} arrivals)"
        return f"closed loop, concurrency {self.concurrency}"

    def as_dict(self) -> dict:
        return {"mode": "rate" if self.rate else "concurrency", "level": self.rate or self.concurrency,
                "arrivals": self.arrivals if self.rate else None, "duration_s": self.duration_s,
                "warmup_s": self.warmup_s, "batch": self.batch, "windows": self.windows,
                "max_windows": self.max_windows, "tolerance": self.tolerance}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def candidate_repository(root: Path, model: str, version_dir: Path, config_text: str) -> Path:
    """`root/<model>/config.pbtxt` (the candidate) and `root/<model>/<v>`: a link to the served
    version (a copy where links are not allowed)."""
    folder = root / model
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(config_text)
    try:
        os.symlink(version_dir.resolve(), folder / version_dir.name, target_is_directory=True)
    except OSError:
        shutil.copytree(version_dir, folder / version_dir.name)
    return root


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


class Server:
    """`modelpress serve` on a free port of 127.0.0.1, no metrics port, no polling; `with` waits
    until the model is ready and stops the server (SIGTERM, then SIGKILL) on the way out."""

    def __init__(self, repo: Path, model: str, log_path: Path, ready_timeout_s: float = 180.0):
        self.repo, self.model, self.log_path, self.ready_timeout_s = repo, model, log_path, ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "Server":
        # AIP_* would put the server in Vertex mode (0.0.0.0, another port): a tuning run inside a
        # Vertex container must still serve on its own 127.0.0.1 port
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_")}
        for attempt in range(3):
            port = free_port()
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "modelpress", "serve", "--repository", str(self.repo), "--host",
                     "127.0.0.1", "--http-port", str(port), "--metrics-port", "0", "--grpc-port", "0",
                     "--poll-seconds", "0"],
                    stdout=subprocess.DEVNULL, stderr=log, env=env)
            self.url = f"http://127.0.0.1:{port}"
            try:
                self._wait_ready()
                return self
            except _PortTaken:
                continue
            except BaseException:
                self.stop()
                raise
        raise ModelpressError("could not find a free port for the candidate server after 3 tries")

    def _wait_ready(self) -> None:
        ready = f"{self.url}/v2/models/{self.model}/ready"
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log_path.read_text(errors="replace")
                if "already in use" in text:
                    raise _PortTaken()
                raise ModelpressError(f"the server exited with {self.proc.returncode}: {_tail(self.log_path)}")
            log = self.log_path.read_text(errors="replace")
            if "failed to load" in log or "config not loaded" in log:
                raise ModelpressError(f"the model did not load: {_tail(self.log_path, 3)}")
            if _status(ready) == 200:
                return
            time.sleep(0.1)
        raise ModelpressError(f"the model was not ready within {self.ready_timeout_s:g} s: {_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __exit__(self, *exc) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


async def poisson_loop(target: Target, rate: float, duration_s: float, warmup_s: float, *, seed: int = 0,
                       timeout_s: float = 30.0, max_in_flight: int = 10_000) -> LevelResult:
    """Open loop with exponential gaps (a Poisson process) at `rate` on average; latency counts
    from when each request was due, as in the generator's constant-rate `open_loop`."""
    rng = np.random.default_rng(seed)
    opener = getattr(target, "open", None)  # a target that opens its own connections (gRPC); else HTTP
    if opener:
        session = await opener(0, timeout_s)
    else:
        import aiohttp
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                        timeout=aiohttp.ClientTimeout(total=timeout_s))
    async with session:
        if not target.body:
            await target.prepare(session)
        records: list[tuple[int, float]] = []
        tasks: set = set()
        late = 0
        start = time.perf_counter() + 0.01
        measured_from, end = start + warmup_s, start + warmup_s + duration_s
        due = start

        async def one(when: float, keep: bool):
            status = await target.send(session)
            if keep:
                records.append((status, time.perf_counter() - when))

        while True:
            due += rng.exponential(1.0 / rate)
            if due >= end:
                break
            keep = due >= measured_from
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > 1e-3:
                late += keep
            if len(tasks) >= max_in_flight:
                if keep:
                    records.append((0, 0.0))  # the client gave up on this one: an error
                continue
            task = asyncio.get_running_loop().create_task(one(due, keep))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    ok = [lat for status, lat in records if status == 200]
    errors = Counter(str(status) for status, _ in records if status != 200)
    return LevelResult(mode="rate", level=rate, batch=target.batch, requests=len(records), ok=len(ok),
                       errors=dict(errors), seconds=duration_s, throughput_rps=len(ok) / duration_s,
                       rows_per_s=len(ok) * target.batch / duration_s, latency_ms=latency_summary(ok),
                       late_sends=late)


def _window(target: Target, load: Load, seconds: float, warmup_s: float, index: int) -> LevelResult:
    if load.rate and load.arrivals == "poisson":
        return asyncio.run(poisson_loop(target, load.rate, seconds, warmup_s, seed=load.seed + index))
    if load.rate:
        return asyncio.run(open_loop(target, load.rate, seconds, warmup_s))
    return asyncio.run(closed_loop(target, load.concurrency, seconds, warmup_s))


def _steady(r: LevelResult, load: Load) -> float:
    """The throughput figure windows must agree on. Open loop: the offered rate times the share
    answered, since Poisson arrivals put a window's request count itself off by a few percent."""
    if load.rate:
        return load.rate * r.ok / r.requests if r.requests else 0.0
    return r.throughput_rps


def measure(url: str, model: str, load: Load) -> dict:
    """Windows of duration_s / windows seconds (the first after the warm-up) until `windows`
    consecutive ones agree within `tolerance` on p50 and throughput, or `max_windows` are spent.

    The point's figures come from the latest agreeing run (else the run whose p50s agree best):
    throughput is its requests over its seconds; p50/p90/p95/p99 are its windows' percentiles
    weighted by their request counts; errors count over every window measured. `noise` is the
    run's throughput spread, (max - min) / min (open loop: of the share answered, see `_steady`).
    """
    target = Target(url, model, batch=load.batch, seed=load.seed)
    window_s = load.duration_s / load.windows
    results: list[LevelResult] = []
    first, stable = 0, False
    while len(results) < load.max_windows:
        results.append(_window(target, load, window_s, load.warmup_s if not results else 0.0, len(results)))
        if results[-1].ok == 0:
            break  # nothing answered: more windows will not help
        if len(results) >= load.windows:
            summary = [(r.latency_ms.get("p50", 0.0), _steady(r, load)) for r in results]
            first, stable, _ = best_run(summary, load.windows, load.tolerance)
            if stable:
                break
    if len(results) < load.windows:
        first = 0
    run = results[first:first + load.windows]
    ok, seconds = sum(r.ok for r in run), sum(r.seconds for r in run)
    weights = [r.latency_ms.get("n", 0) for r in run]
    latency = {}
    if sum(weights):
        for key in ("p50", "p90", "p95", "p99", "mean"):
            latency[key] = float(np.average([r.latency_ms.get(key, 0.0) for r in run], weights=weights))
        latency["max"] = max(r.latency_ms.get("max", 0.0) for r in run)
    errors: Counter = Counter()
    for r in results:
        errors.update(r.errors)
    tputs = [_steady(r, load) for r in run]
    per_s = 1 / seconds if seconds else 0.0
    return {"throughput_rps": ok * per_s, "rows_per_s": ok * load.batch * per_s,
            "latency_ms": latency, "ok": ok, "requests": sum(r.requests for r in results),
            "errors": dict(errors), "late_sends": sum(r.late_sends for r in results), "stable": stable,
            "noise": spread(tputs) if tputs and min(tputs) > 0 else None,
            "pooled_windows": [first, first + len(run)],
            "windows": [{"throughput_rps": r.throughput_rps, "p50_ms": r.latency_ms.get("p50"),
                         "p99_ms": r.latency_ms.get("p99"), "ok": r.ok, "errors": r.errors} for r in results]}
