"""A load generator for any KServe v2 server (modelpress, Triton, others), over HTTP (`Target`)
or gRPC (`grpc_target.GrpcTarget`, Triton's GRPCInferenceService).

Two modes:
- closed loop: N concurrent clients, each sending its next request when the last one
  answered (what perf_analyzer's concurrency mode does). It under-reports tail latency
  when the server stalls, because stalled clients stop sending.
- open loop: requests sent at a fixed rate whatever the server does; latency counts from
  when each request was DUE, so a stall shows up in the tail (no coordinated omission).

The request body (binary tensors by default, like tritonclient; raw contents over gRPC) is built
once from the model's metadata, so the client spends its CPU on the transport, not on encoding.
A target gives the loops its connections (`open`), builds its body (`prepare`) and sends it
(`send`, returning 200 for success, else the HTTP status or gRPC code, 0 for no answer).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.loadtest.report import LevelResult, format_row, latency_summary, table
from modelpress.serving.protocol import DATATYPES, binary_request, decode_infer_response, json_request


class Target:
    """One model endpoint and the request body sent to it."""

    def __init__(self, url: str, model: str, version: str | None = None, batch: int = 1,
                 binary: bool = True, seed: int = 0):
        self.base = url.rstrip("/")
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        self.metadata_url = self.base + path
        self.infer_url = self.base + path + "/infer"
        self.model, self.batch, self.binary, self.seed = model, batch, binary, seed
        self.body: bytes = b""
        self.headers: dict = {}

    async def open(self, limit: int, timeout_s: float):
        return await _session(limit, timeout_s)

    async def prepare(self, session) -> None:
        import aiohttp

        try:
            async with session.get(self.metadata_url) as r:
                if r.status != 200:
                    raise ModelpressError(f"{self.metadata_url} answered {r.status}: {await r.text()}")
                meta = await r.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise ModelpressError(f"cannot reach {self.metadata_url}: {exc}; is the server running?") from None
        rng = np.random.default_rng(self.seed)
        inputs = {}
        for t in meta["inputs"]:
            if t["datatype"] not in DATATYPES:
                raise ModelpressError(f"input {t['name']!r} of {self.model!r} is {t['datatype']}; the load generator "
                                      "makes numeric tensors only")
            shape = [self.batch if d == -1 and i == 0 else (1 if d == -1 else d) for i, d in enumerate(t["shape"])]
            dtype = DATATYPES[t["datatype"]]
            inputs[t["name"]] = (rng.random(shape).astype(dtype) if dtype.kind == "f"
                                 else rng.integers(0, 2, shape).astype(dtype))
        if self.binary:
            self.body, self.headers = binary_request(inputs)
        else:
            self.body, self.headers = json_request(inputs), {"Content-Type": "application/json"}
        async with session.post(self.infer_url, data=self.body, headers=self.headers) as r:  # sanity check
            payload = await r.read()
            if r.status != 200:
                raise ModelpressError(f"a test request to {self.infer_url} failed with {r.status}: {payload[:500]!r}")
            decode_infer_response(payload, r.headers.get("Inference-Header-Content-Length"))

    async def send(self, session) -> int:
        import aiohttp

        try:
            async with session.post(self.infer_url, data=self.body, headers=self.headers) as r:
                await r.read()
                return r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return 0


async def _session(limit: int, timeout_s: float):
    import aiohttp
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def _open(target, limit: int, timeout_s: float):
    """The target's connections (an aiohttp session, gRPC channels); a target without `open` is HTTP."""
    opener = getattr(target, "open", None)
    return await (opener(limit, timeout_s) if opener else _session(limit, timeout_s))


def _result(mode, level, target, records, seconds, late=0) -> LevelResult:
    ok = [lat for status, lat in records if status == 200]  # HTTP 200, or gRPC OK (GrpcTarget says 200)
    errors = Counter(str(status) for status, _ in records if status != 200)
    return LevelResult(mode=mode, level=level, batch=target.batch, requests=len(records), ok=len(ok),
                       errors=dict(errors), seconds=seconds, throughput_rps=len(ok) / seconds,
                       rows_per_s=len(ok) * target.batch / seconds, latency_ms=latency_summary(ok), late_sends=late)


async def closed_loop(target: Target, concurrency: int, duration_s: float, warmup_s: float,
                      timeout_s: float = 30.0, max_requests: int | None = None) -> LevelResult:
    """`concurrency` clients back to back; with `max_requests`, stop after that many (all measured)."""
    session = await _open(target, concurrency, timeout_s)
    async with session:
        if not target.body:
            await target.prepare(session)
        start = time.perf_counter()
        window = (start + warmup_s, start + warmup_s + duration_s)
        records: list[tuple[int, float]] = []
        budget = [max_requests if max_requests is not None else float("inf")]

        async def client():
            while budget[0] > 0:
                budget[0] -= 1
                t0 = time.perf_counter()
                if t0 >= window[1]:
                    return
                status = await target.send(session)
                if t0 >= window[0]:  # every request started in the window, however long it took
                    records.append((status, time.perf_counter() - t0))

        await asyncio.gather(*[client() for _ in range(concurrency)])
        seconds = duration_s if max_requests is None else time.perf_counter() - window[0]
    return _result("concurrency", concurrency, target, records, seconds)


async def open_loop(target: Target, rate: float, duration_s: float, warmup_s: float,
                    timeout_s: float = 30.0, max_in_flight: int = 10_000) -> LevelResult:
    session = await _open(target, 0, timeout_s)
    async with session:
        if not target.body:
            await target.prepare(session)
        records: list[tuple[int, float]] = []
        tasks, late = set(), 0
        start = time.perf_counter() + 0.01
        total = int(rate * (warmup_s + duration_s))
        measured_from = int(rate * warmup_s)

        async def one(due: float, keep: bool):
            status = await target.send(session)
            if keep:
                records.append((status, time.perf_counter() - due))  # from when it was due

        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > 1e-3:
                late += i >= measured_from
            if len(tasks) >= max_in_flight:
                records.append((0, 0.0))  # the client gave up on this one: counted as an error
                continue
            task = asyncio.get_running_loop().create_task(one(due, i >= measured_from))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    return _result("rate", rate, target, records, duration_s, late)


def run(url: str, model: str, *, concurrency: list[int] | None = None, rate: float | None = None,
        duration_s: float = 10.0, warmup_s: float = 2.0, batch: int = 1, binary: bool = True,
        version: str | None = None, progress=print, emit=None, protocol: str = "http") -> list[LevelResult]:
    """Measure each level in turn. `emit` gets the results table line by line, the header
    first and then a row as each level finishes; `progress` gets what is being measured
    (`emit` defaults to it). `protocol`: "http" (KServe v2 REST) or "grpc" (`url` is host:port)."""
    emit = emit or progress
    if protocol == "grpc":
        from modelpress.loadtest.grpc_target import GrpcTarget
        target = GrpcTarget(url, model, version=version, batch=batch)
    elif protocol == "http":
        target = Target(url, model, version=version, batch=batch, binary=binary)
    else:
        raise ModelpressError(f"unknown protocol {protocol!r}; use http or grpc")
    results = []
    levels = [("rate", rate)] if rate else []
    levels += [("concurrency", c) for c in concurrency or ([] if rate else [1, 4, 16, 64])]
    for mode, level in levels:
        if mode == "rate":
            progress(f"open loop: {level:g} requests/s for {duration_s:g} s (+{warmup_s:g} s warm-up)")
            results.append(asyncio.run(open_loop(target, level, duration_s, warmup_s)))
        else:
            progress(f"closed loop: concurrency {level} for {duration_s:g} s (+{warmup_s:g} s warm-up)")
            results.append(asyncio.run(closed_loop(target, level, duration_s, warmup_s)))
        if len(results) == 1:  # the header once, before the first row (not before a failed first level)
            for line in table([]).splitlines():
                emit(line)
        emit(format_row(results[-1]))
    return results
