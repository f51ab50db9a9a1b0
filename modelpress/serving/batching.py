"""Dynamic batching for one model version, with Triton's semantics.

Requests join a queue in arrival order. When a model instance (an ONNX Runtime session)
is free, the scheduler takes the oldest request and keeps adding requests while the batch
fits `max_batch_size` ROWS (a batch-8 request uses 8), until a preferred size is reached
with nothing else waiting, or `max_queue_delay_microseconds` after the oldest request
arrived. `instance_group.count` sessions execute concurrently, each in its own thread
(ONNX Runtime releases the GIL). Because batches form only when an instance is free,
batches grow with load on their own.

Without `dynamic_batching` in the config each request executes alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .protocol import ClientError


class SchedulerClosed(Exception):
    """The version was retired between lookup and submit: look the model up again."""


class ServerError(Exception):
    """Not the client's fault: answered with a 5xx."""

    def __init__(self, message: str, status: int = 500, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Stats:
    """Cumulative counts and durations (ns), the way Triton's /stats reports them."""
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_count: int = 0
    compute_ns: int = 0
    inference_count: int = 0     # rows
    execution_count: int = 0     # batches
    pending: int = 0             # requests queued or executing
    last_inference_ms: int = 0
    batches: dict = field(default_factory=dict)  # batch size -> [count, compute ns]


@dataclass
class _Item:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    enqueued_ns: int
    abandoned: bool = False


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int          # 0: the model has no batch dimension
    dynamic: bool
    max_queue_delay_us: int = 0
    preferred: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config) -> "BatchPolicy":
        dynamic = config.HasField("dynamic_batching") and config.max_batch_size > 0
        db = config.dynamic_batching
        return cls(max_batch_size=config.max_batch_size, dynamic=dynamic,
                   max_queue_delay_us=int(db.max_queue_delay_microseconds) if dynamic else 0,
                   preferred=tuple(sorted(p for p in db.preferred_batch_size if p <= config.max_batch_size))
                   if dynamic else ())


class Scheduler:
    def __init__(self, sessions: list, policy: BatchPolicy, *, max_queue_rows: int,
                 observe=None, label: str = "model"):
        self.policy = policy
        self.max_queue_rows = max_queue_rows
        self.stats = Stats()
        self._observe = observe or (lambda kind, value: None)  # histogram hook: (kind, value)
        self._label = label
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._free: asyncio.Queue = asyncio.Queue()
        for s in sessions:
            self._free.put_nowait(s)
        self._executing = 0
        self._output_names = [o.name for o in sessions[0].get_outputs()]
        self.closed = False
        self._executor = ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix=f"infer-{label}")
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(_report_crash)

    # -- requests -------------------------------------------------------------------
    async def infer(self, inputs: dict[str, np.ndarray], rows: int, timeout_s: float) -> dict[str, np.ndarray]:
        if self.closed:
            raise SchedulerClosed()
        if self._queued_rows + rows > self.max_queue_rows:
            raise ServerError(f"model {self._label} is overloaded: {self._queued_rows} rows already queued "
                              f"(limit {self.max_queue_rows}); retry shortly", status=503,
                              headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        item = _Item(inputs, rows, loop.create_future(), time.perf_counter_ns())
        self._queue.append(item)
        self._queued_rows += rows
        self.stats.pending += 1
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), timeout_s)
        except TimeoutError:
            item.abandoned = True
            raise ServerError(f"request timed out after {timeout_s:g} s waiting for model {self._label}; "
                              "the server is overloaded or the timeout too short", status=504) from None
        finally:
            self.stats.pending -= 1

    # -- the scheduler loop ---------------------------------------------------------
    def _pop(self) -> _Item | None:
        while self._queue:
            item = self._queue.popleft()
            self._queued_rows -= item.rows
            if not item.abandoned:
                return item
        return None

    async def _next_item(self) -> _Item:
        while True:
            item = self._pop()
            if item is not None:
                return item
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _run(self):
        loop = asyncio.get_running_loop()
        policy = self.policy
        while True:
            session = await self._free.get()
            first = await self._next_item()
            batch, rows = [first], first.rows
            if policy.dynamic:
                deadline = first.enqueued_ns + policy.max_queue_delay_us * 1000
                while rows < policy.max_batch_size:
                    if self._queue:
                        nxt = self._queue[0]
                        if nxt.abandoned:
                            self._pop()
                            continue
                        if rows + nxt.rows > policy.max_batch_size:
                            break
                        batch.append(self._pop())
                        rows += nxt.rows
                        continue
                    if rows in policy.preferred or (policy.preferred and rows >= policy.preferred[-1]):
                        break
                    remaining = (deadline - time.perf_counter_ns()) / 1e9
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
            self._executing += 1
            loop.create_task(self._execute(session, batch, rows))

    async def _execute(self, session, batch: list[_Item], rows: int):
        loop = asyncio.get_running_loop()
        start = time.perf_counter_ns()
        for item in batch:
            self.stats.queue_count += 1
            self.stats.queue_ns += start - item.enqueued_ns
            self._observe("queue", (start - item.enqueued_ns) / 1e9)
        names = list(batch[0].inputs)
        feed = ({n: batch[0].inputs[n] for n in names} if len(batch) == 1 else
                {n: np.concatenate([it.inputs[n] for it in batch]) for n in names})
        try:
            outputs = await loop.run_in_executor(self._executor, _run_session, session, self._output_names, feed)
        except Exception as exc:  # a model that fails on valid input: the server's problem
            error = ServerError(f"model {self._label} failed to execute: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self._free.put_nowait(session)
            self._executing -= 1
        elapsed = time.perf_counter_ns() - start
        s = self.stats
        s.compute_count += 1
        s.compute_ns += elapsed
        s.execution_count += 1
        s.inference_count += rows
        s.last_inference_ms = int(time.time() * 1000)
        entry = s.batches.setdefault(rows, [0, 0])
        entry[0] += 1
        entry[1] += elapsed
        self._observe("batch", rows)
        self._observe("compute", elapsed / 1e9)
        offset = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result({k: v[offset:offset + item.rows] for k, v in outputs.items()}
                                       if len(batch) > 1 else outputs)
            offset += item.rows

    # -- lifecycle -----------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self._queue and not self._executing and self.stats.pending == 0

    async def drain_and_close(self, poll_s: float = 0.01):
        """Finish every request already accepted, then stop; used when a version is retired."""
        while not self.idle:
            await asyncio.sleep(poll_s)
        self.closed = True  # from here on, infer() sends callers back to the store
        self._task.cancel()
        self._executor.shutdown(wait=False)
        while not self._free.empty():  # release the sessions' memory; the stats stay for metrics
            self._free.get_nowait()


def _report_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        import logging
        logging.getLogger("modelpress.serve").error("batch scheduler stopped", exc_info=task.exception())


def _run_session(session, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip(names, session.run(names, feed)))


def check_rows(rows: int, policy: BatchPolicy, model: str) -> None:
    if policy.max_batch_size and rows > policy.max_batch_size:
        raise ClientError(f"a batch of {rows} rows exceeds max_batch_size {policy.max_batch_size} of model "
                          f"{model}; split the request into batches of at most {policy.max_batch_size}")
    if rows < 1:
        raise ClientError(f"the batch dimension is 0: send at least one row to model {model}")
