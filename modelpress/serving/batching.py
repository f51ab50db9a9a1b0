"""Dynamic batching for one model version, with Triton's semantics.

Requests join a queue in arrival order. When a model instance (an ONNX Runtime session)
is free, the scheduler takes the oldest request and adds the queued requests that can share
its batch (same input names, dtypes and non-batch dimensions: only those concatenate, as in
Triton without ragged batching) while the batch fits `max_batch_size` ROWS (a batch-8
request uses 8), until a preferred size is reached with nothing compatible waiting, or
`max_queue_delay_microseconds` after the oldest request arrived. Requests of other shapes
stay queued in order for the next free instance. `instance_group.count` sessions execute
concurrently, each in its own thread (ONNX Runtime releases the GIL). Because batches form
only when an instance is free, batches grow with load on their own.

A batch that fails (to concatenate, or to run) fails only its own requests, with a 500
naming the reason. Should the scheduler loop itself fail, it fails what is queued, logs why
and marks the version not ready instead of leaving requests to time out.

Without `dynamic_batching` in the config each request executes alone.

What may share a batch, and how requests become one feed, is pluggable (`key`, `merge`): by
default equal keys and concatenation along the batch dimension; a text model's scheduler
ignores the sequence length in its key and pads each batch to its longest real row
(`text.text_batch_key`, `text.merge_token_batches`). The queue discipline is the same either
way, so no request of any length is overtaken by a later one of a compatible key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from modelpress.serving.errors import ClientError, SchedulerClosed, ServerError

log = logging.getLogger("modelpress.serve")


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
    future: asyncio.Future   # cancelled when the caller stops waiting (timeout, disconnect)
    enqueued_ns: int
    key: tuple               # requests with equal keys can share a batch


def batch_key(inputs: dict[str, np.ndarray]) -> tuple:
    """Names, dtypes and every dimension but the batch one: what must agree to concatenate."""
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items()))


def concatenate(batches: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[slice]]:
    """The default merge: requests of one key stacked along the batch dimension; each one's rows."""
    names = list(batches[0])
    if len(batches) == 1:
        return batches[0], [slice(None)]
    feed = {n: np.concatenate([b[n] for b in batches]) for n in names}
    slices, at = [], 0
    for b in batches:
        rows = len(b[names[0]])
        slices.append(slice(at, at + rows))
        at += rows
    return feed, slices


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
                 observe=None, label: str = "model", key=batch_key, merge=concatenate):
        self.policy = policy
        self._key, self._merge = key, merge  # what may share a batch; requests -> (feed, row slices)
        self.max_queue_rows = max_queue_rows
        self.stats = Stats()
        self._observe = observe or (lambda kind, value: None)  # histogram hook: (kind, value)
        self._label = label
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._forming: list[_Item] = []   # the batch being collected: failed too if the loop dies
        self._wakeup = asyncio.Event()
        self._free: asyncio.Queue = asyncio.LifoQueue()
        for s in sessions:
            self._free.put_nowait(s)
        self._executing = 0
        self._batches: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self._output_names = [o.name for o in sessions[0].get_outputs()]
        self.closed = False
        self.failure: str | None = None   # why the scheduler stopped; the version is then not ready
        self._executor = ThreadPoolExecutor(max_workers=len(sessions), thread_name_prefix=f"infer-{label}")
        self._task = asyncio.get_running_loop().create_task(self._run())

    # -- requests -------------------------------------------------------------------
    async def infer(self, inputs: dict[str, np.ndarray], rows: int, timeout_s: float) -> dict[str, np.ndarray]:
        if self.closed:
            raise SchedulerClosed()
        if self.failure:
            raise ServerError(f"model {self._label} is not ready: {self.failure}", status=503)
        if self._queued_rows + rows > self.max_queue_rows:
            raise ServerError(f"model {self._label} is overloaded: {self._queued_rows} rows already queued "
                              f"(limit {self.max_queue_rows}); retry shortly", status=503,
                              headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        item = _Item(inputs, rows, loop.create_future(), time.perf_counter_ns(), self._key(inputs))
        self._queue.append(item)
        self._queued_rows += rows
        self.stats.pending += 1
        self._wakeup.set()
        try:
            # no shield: a caller that stops waiting cancels the future, so the scheduler drops it
            return await asyncio.wait_for(item.future, timeout_s)
        except TimeoutError:
            raise ServerError(f"request timed out after {timeout_s:g} s waiting for model {self._label}; "
                              "the server is overloaded or the timeout too short", status=504) from None
        finally:
            self.stats.pending -= 1

    # -- the scheduler loop ---------------------------------------------------------
    def _take(self, index: int) -> _Item:
        item = self._queue[index]
        del self._queue[index]
        self._queued_rows -= item.rows
        return item

    async def _next_item(self) -> _Item:
        while True:
            while self._queue:
                item = self._take(0)
                if not item.future.done():
                    return item
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _collect(self) -> tuple[list[_Item], int]:
        """The oldest request plus the queued ones that can share its batch, in arrival order."""
        policy = self.policy
        first = await self._next_item()
        batch, rows = [first], first.rows
        self._forming = batch
        if not policy.dynamic:
            return batch, rows
        deadline = first.enqueued_ns + policy.max_queue_delay_us * 1000
        scanned = 0  # queue positions before this one hold requests of other shapes; they keep their place
        while rows < policy.max_batch_size:
            full = False
            while scanned < len(self._queue):
                item = self._queue[scanned]
                if item.future.done():        # its caller gave up
                    self._take(scanned)
                elif item.key != first.key:   # another shape: the next free instance takes it
                    scanned += 1
                elif rows + item.rows > policy.max_batch_size:
                    full = True               # stop here: a later, smaller one must not overtake it
                    break
                else:
                    batch.append(self._take(scanned))
                    rows += item.rows
            if full or rows >= policy.max_batch_size:
                break
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
        return batch, rows

    async def _run(self):
        loop = asyncio.get_running_loop()
        try:
            while True:
                # Work first, then the instance: idle, the loop holds none, so the one freed last (LIFO,
                # its weights still in cache) takes the next request instead of instances alternating.
                while not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                session = await self._free.get()
                batch, rows = await self._collect()
                self._forming = []
                self._executing += 1
                task = loop.create_task(self._execute(session, batch, rows))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not leave every later request waiting for its timeout
            self._stop(f"its batch scheduler stopped: {type(exc).__name__}: {exc}", exc)

    def _stop(self, reason: str, exc: BaseException) -> None:
        self.failure = reason
        log.error("model %s is not ready: %s; queued requests fail with 500; restart the server to recover",
                  self._label, reason, exc_info=exc)
        error = ServerError(f"model {self._label} failed: {reason}")
        waiting = self._forming + list(self._queue)
        self._forming, self._queued_rows = [], 0
        self._queue.clear()
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(error)

    async def _execute(self, session, batch: list[_Item], rows: int):
        loop = asyncio.get_running_loop()
        try:  # everything up to the results: whatever fails, fails this batch's requests and no others
            start = time.perf_counter_ns()
            for item in batch:
                self.stats.queue_count += 1
                self.stats.queue_ns += start - item.enqueued_ns
                self._observe("queue", (start - item.enqueued_ns) / 1e9)
            feed, slices = self._merge([it.inputs for it in batch])
            outputs = await loop.run_in_executor(self._executor, _run_session, session, self._output_names, feed)
            results = [outputs]  # one request: its outputs as they are (a model without a batch dimension too)
            if len(batch) > 1:
                for name, value in outputs.items():
                    if value.ndim == 0 or len(value) != rows:
                        raise ValueError(f"output {name!r} has shape {list(value.shape)}, not {rows} rows; "
                                         "a batched model must keep the batch dimension first")
                results = [{k: v[s] for k, v in outputs.items()} for s in slices]
            self._record(rows, time.perf_counter_ns() - start)
        except Exception as exc:  # a model that fails on valid input: the server's problem, this batch's alone
            reason = f"{type(exc).__name__}: {exc}".strip()
            log.error("model %s failed on a batch of %d request(s), %d row(s): %s", self._label, len(batch), rows,
                      reason)
            error = ServerError(f"model {self._label} failed to execute: {reason}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        finally:
            self._free.put_nowait(session)
            self._executing -= 1
        for item, result in zip(batch, results):
            if not item.future.done():
                item.future.set_result(result)

    def _record(self, rows: int, elapsed: int) -> None:
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

    # -- lifecycle -----------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self._queue and not self._executing and self.stats.pending == 0

    async def drain_and_close(self, poll_s: float = 0.01, timeout_s: float | None = None):
        """Finish every request already accepted (for at most `timeout_s`), then stop; used when
        a version is retired and at shutdown."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.idle and not self.failure:
            if deadline is not None and time.monotonic() > deadline:
                log.warning("model %s: closing with %d request(s) still queued or executing", self._label,
                            self.stats.pending)
                break
            await asyncio.sleep(poll_s)
        self.closed = True  # from here on, infer() sends callers back to the store
        self._task.cancel()
        error = ServerError(f"model {self._label} was unloaded before this request ran; retry", status=503,
                            headers={"Retry-After": "1"})
        for item in self._forming + list(self._queue):
            if not item.future.done():
                item.future.set_exception(error)
        self._queue.clear()
        self._executor.shutdown(wait=False)
        while not self._free.empty():  # release the sessions' memory; the stats stay for metrics
            self._free.get_nowait()


def _run_session(session, names: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip(names, session.run(names, feed)))


def check_rows(rows: int, policy: BatchPolicy, model: str) -> None:
    if policy.max_batch_size and rows > policy.max_batch_size:
        raise ClientError(f"a batch of {rows} rows exceeds max_batch_size {policy.max_batch_size} of model "
                          f"{model}; split the request into batches of at most {policy.max_batch_size}")
    if rows < 1:
        raise ClientError(f"the batch dimension is 0: send at least one row to model {model}")
