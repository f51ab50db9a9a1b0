"""The dynamic batcher in-process, with real ONNX Runtime sessions: rows, not requests."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from modelpress.export import runtime
from modelpress.serving.batching import BatchPolicy, Scheduler
from modelpress.serving.errors import ServerError

from .conftest import expected_logits, make_onnx


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return runtime.session(make_onnx(tmp_path_factory.mktemp("m")), threads=1)


def _run(session, policy, requests, max_queue_rows=1000, timeout_s=10.0):
    async def go():
        scheduler = Scheduler([session], policy, max_queue_rows=max_queue_rows)
        xs = [np.full((rows, 1, 8, 8), i, np.float32) for i, rows in enumerate(requests)]
        outs = await asyncio.gather(*[scheduler.infer({"input": x}, len(x), timeout_s) for x in xs],
                                    return_exceptions=True)
        await scheduler.drain_and_close()
        return scheduler.stats, xs, outs
    return asyncio.run(go())


def test_capacity_is_counted_in_rows_and_each_request_gets_its_own_rows(session):
    policy = BatchPolicy(max_batch_size=16, dynamic=True, max_queue_delay_us=50_000)
    stats, xs, outs = _run(session, policy, [5] * 6)
    assert {size: count for size, (count, _) in stats.batches.items()} == {15: 2}  # 3 requests of 5, never 4
    assert stats.inference_count == 30 and stats.execution_count == 2
    for x, out in zip(xs, outs):
        np.testing.assert_allclose(out["logits"], expected_logits(x), rtol=1e-5, atol=1e-4)


def test_without_dynamic_batching_each_request_runs_alone(session):
    stats, _, outs = _run(session, BatchPolicy(max_batch_size=16, dynamic=False), [5, 3, 8])
    assert {size: count for size, (count, _) in stats.batches.items()} == {5: 1, 3: 1, 8: 1}
    assert [o["logits"].shape[0] for o in outs] == [5, 3, 8]


def test_a_preferred_size_goes_at_once_instead_of_waiting_out_the_delay(session):
    policy = BatchPolicy(max_batch_size=16, dynamic=True, max_queue_delay_us=5_000_000, preferred=(8,))
    start = time.perf_counter()
    stats, _, _ = _run(session, policy, [8])
    assert time.perf_counter() - start < 2.0 and stats.execution_count == 1


def test_the_queue_bound_refuses_rows_beyond_it(session):
    policy = BatchPolicy(max_batch_size=16, dynamic=True, max_queue_delay_us=100_000)
    stats, _, outs = _run(session, policy, [4, 4, 4], max_queue_rows=8)
    refused = [o for o in outs if isinstance(o, ServerError)]
    assert len(refused) == 1 and refused[0].status == 503 and refused[0].headers == {"Retry-After": "1"}
    assert stats.inference_count == 8


def test_a_retired_scheduler_sends_late_callers_back_to_the_store(session):
    from modelpress.serving.errors import SchedulerClosed

    async def go():
        scheduler = Scheduler([session], BatchPolicy(max_batch_size=4, dynamic=True), max_queue_rows=100)
        await scheduler.drain_and_close()
        with pytest.raises(SchedulerClosed):
            await scheduler.infer({"input": np.zeros((1, 1, 8, 8), np.float32)}, 1, 1.0)
    asyncio.run(go())


def test_a_request_waiting_past_its_timeout_gets_504(session):
    policy = BatchPolicy(max_batch_size=16, dynamic=True, max_queue_delay_us=3_000_000)
    start = time.perf_counter()
    stats, _, outs = _run(session, policy, [1], timeout_s=0.2)
    assert isinstance(outs[0], ServerError) and outs[0].status == 504 and "timed out" in str(outs[0])
    assert time.perf_counter() - start < 5


def test_one_request_at_a_time_reuses_the_session_that_ran_last(session, tmp_path):
    """Sequential requests stay on one warm instance (its weights in cache) instead of alternating;
    concurrent ones still spread over every instance."""
    other = runtime.session(make_onnx(tmp_path), threads=1)
    used = []

    class Recording:  # a real session that notes which instance ran each batch
        def __init__(self, inner):
            self.inner = inner

        def get_outputs(self):
            return self.inner.get_outputs()

        def run(self, names, feed):
            used.append(self)
            time.sleep(0.02)  # long enough for concurrent requests to need the second instance
            return self.inner.run(names, feed)

    first, second = Recording(session), Recording(other)

    async def go():
        scheduler = Scheduler([first, second], BatchPolicy(max_batch_size=1, dynamic=False), max_queue_rows=100)
        x = np.zeros((1, 1, 8, 8), np.float32)
        for _ in range(6):
            await scheduler.infer({"input": x}, 1, 10.0)
        sequential = list(used)
        used.clear()
        await asyncio.gather(*[scheduler.infer({"input": x}, 1, 10.0) for _ in range(4)])
        await scheduler.drain_and_close()
        return sequential, list(used)

    sequential, concurrent = asyncio.run(go())
    assert len(sequential) == 6 and len(set(map(id, sequential))) == 1
    assert {id(first), id(second)} == set(map(id, concurrent))
