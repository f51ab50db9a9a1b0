"""Requests of different shapes are batched apart; a failing batch fails only itself; a dying
scheduler fails loudly and turns the model not ready. Real ONNX models, real clients."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from modelpress.export import runtime
from modelpress.serving.batching import BatchPolicy, Scheduler
from modelpress.serving.errors import ServerError

from .conftest import VOCAB, deploy_seq, in_process_server, make_seq_onnx, seq_request, start_server, stop_server


def _inputs(ids: np.ndarray, mask: np.ndarray) -> list:
    out = []
    for name, value in (("input_ids", ids), ("attention_mask", mask)):
        i = aioclient.InferInput(name, list(value.shape), "INT64")
        i.set_data_from_numpy(value)
        out.append(i)
    return out


async def _infer(client, ids, mask):
    """(status, total or error message) for one request, the way a tritonclient user sees it."""
    try:
        result = await client.infer("seq", _inputs(ids, mask))
        return 200, result.as_numpy("total")
    except InferenceServerException as exc:
        return int(exc.status()), exc.message()


@pytest.fixture(scope="module")
def seq_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seq")
    repo = tmp / "repo"
    # a 20 ms queue delay makes batches form even on a fast model, so shapes do meet in the queue
    deploy_seq(repo, tmp, max_batch_size=32, max_queue_delay_us=20_000, instances=2)
    server = start_server(repo, tmp, "--poll-seconds", "0")
    yield server
    stop_server(server)


def test_mixed_lengths_under_concurrency_all_succeed_with_their_own_results(seq_server):
    requests = [seq_request(rows=1 + i % 2, length=(8, 16, 32)[i % 3], seed=i) for i in range(64)]

    async def go():
        client = aioclient.InferenceServerClient(seq_server.host)
        try:
            answers = await asyncio.gather(*[_infer(client, ids, mask) for ids, mask, _ in requests])
            later = await _infer(client, *requests[0][:2])
            stats = await client.get_inference_statistics("seq")
            return answers, later, stats["model_stats"][0]
        finally:
            await client.close()

    answers, later, stats = asyncio.run(go())
    for (status, total), (_, _, expected) in zip(answers, requests):
        assert status == 200, total
        np.testing.assert_array_equal(total, expected)
    assert later[0] == 200 and np.array_equal(later[1], requests[0][2])
    assert stats["execution_count"] < 65  # batches of several requests formed
    assert seq_server.get("/v2/models/seq/ready")[0] == 200


def test_a_batch_that_fails_in_the_model_fails_alone_with_the_reason(seq_server):
    good16 = [seq_request(1, 16, seed=100 + i) for i in range(16)]
    good8 = [seq_request(1, 8, seed=200 + i) for i in range(8)]
    bad_ids, bad_mask, _ = seq_request(1, 8, seed=300)
    bad_ids[0, 3] = VOCAB + 5  # an id outside the model's vocabulary: ONNX Runtime's Gather refuses it

    async def go():
        client = aioclient.InferenceServerClient(seq_server.host)
        try:
            answers = await asyncio.gather(_infer(client, bad_ids, bad_mask),
                                           *[_infer(client, ids, mask) for ids, mask, _ in good16 + good8])
            later = [await _infer(client, ids, mask) for ids, mask, _ in (good8[0], good16[0])]
            return answers, later
        finally:
            await client.close()

    answers, later = asyncio.run(go())
    (status, message), rest = answers[0], answers[1:]
    assert status == 500 and "failed to execute" in message and "out of data bounds" in message, message
    for (status, total), (_, _, expected) in zip(rest[:16], good16):  # another length: another batch
        assert status == 200, total
        np.testing.assert_array_equal(total, expected)
    for (status, total), (_, _, expected) in zip(rest[16:], good8):
        if status == 200:
            np.testing.assert_array_equal(total, expected)
        else:  # it shared the poisoned request's batch: same failure, same reason
            assert status == 500 and total == message
    for (status, total), (_, _, expected) in zip(later, (good8[0], good16[0])):
        assert status == 200 and np.array_equal(total, expected)
    assert seq_server.get("/v2/health/ready")[0] == 200
    assert "out of data bounds" in seq_server.log.read_text()  # the operator sees it too


@pytest.fixture(scope="module")
def seq_session(tmp_path_factory):
    return runtime.session(make_seq_onnx(tmp_path_factory.mktemp("seqm")), threads=1)


def _feed(length: int, seed: int, poison: bool = False) -> dict:
    ids, mask, _ = seq_request(1, length, seed)
    if poison:
        ids[0, 0] = VOCAB
    return {"input_ids": ids, "attention_mask": mask}


def test_only_matching_shapes_share_a_batch_and_the_oldest_goes_first(seq_session):
    async def go():
        scheduler = Scheduler([seq_session], BatchPolicy(max_batch_size=16, dynamic=True, max_queue_delay_us=50_000),
                              max_queue_rows=100)
        lengths = [8, 32, 8, 32, 8]
        feeds = [_feed(n, i) for i, n in enumerate(lengths)]
        done = []

        async def one(i):
            out = await scheduler.infer(feeds[i], 1, 10.0)
            done.append(i)
            return out

        outs = await asyncio.gather(*[one(i) for i in range(len(feeds))])
        await scheduler.drain_and_close()
        return scheduler.stats, feeds, outs, done

    stats, feeds, outs, done = asyncio.run(go())
    assert {size: count for size, (count, _) in stats.batches.items()} == {3: 1, 2: 1}
    assert sorted(done[:3]) == [0, 2, 4]  # the oldest request's shape was served first
    for feed, out in zip(feeds, outs):
        np.testing.assert_array_equal(out["total"], (feed["input_ids"] * feed["attention_mask"]).sum(1, keepdims=True))


def test_a_failing_batch_fails_its_own_requests_and_the_next_batch_runs(seq_session):
    async def go():
        scheduler = Scheduler([seq_session], BatchPolicy(max_batch_size=4, dynamic=True, max_queue_delay_us=50_000),
                              max_queue_rows=100)
        feeds = [_feed(8, i, poison=(i == 1)) for i in range(8)]  # batch one: 0-3 (1 is poisoned); two: 4-7
        outs = await asyncio.gather(*[scheduler.infer(f, 1, 10.0) for f in feeds], return_exceptions=True)
        after = await scheduler.infer(_feed(8, 99), 1, 10.0)
        await scheduler.drain_and_close()
        return outs, after, scheduler

    outs, after, scheduler = asyncio.run(go())
    assert all(isinstance(o, ServerError) and o.status == 500 and "out of data bounds" in str(o) for o in outs[:4])
    assert all(isinstance(o, dict) for o in outs[4:]) and "total" in after
    assert scheduler.failure is None and scheduler.stats.execution_count == 2


def test_a_dying_scheduler_fails_its_queue_and_turns_the_model_not_ready(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="modelpress.serve")
    repo = tmp_path / "repo"
    deploy_seq(repo, tmp_path, max_batch_size=8, instances=1)
    with in_process_server(repo, request_timeout_s=10) as server:
        client = httpclient.InferenceServerClient(server.host)
        scheduler = server.store.get("seq").scheduler

        collect, calls = scheduler._collect, []

        async def broken_collect():  # a bug in batch forming: the first batch forms, the next one fails
            calls.append(1)
            if len(calls) == 1:
                return await collect()
            while not scheduler._queue:
                await asyncio.sleep(0.005)
            raise RuntimeError("injected fault in batch forming")

        ids, mask, expected = seq_request(1, 8, seed=1)
        inputs = [httpclient.InferInput(n, [1, 8], "INT64") for n in ("input_ids", "attention_mask")]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(mask)
        scheduler._collect = broken_collect
        assert np.array_equal(client.infer("seq", inputs).as_numpy("total"), expected)
        start = time.perf_counter()
        with pytest.raises(InferenceServerException) as queued:
            client.infer("seq", inputs)
        assert queued.value.status() == "500" and "injected fault in batch forming" in queued.value.message()
        assert time.perf_counter() - start < 5  # failed at once, not left to time out
        assert not client.is_model_ready("seq") and not client.is_server_ready()
        code, body = server.get("/v2/models/seq/ready")
        assert code == 503 and b"injected fault in batch forming" in body
        with pytest.raises(InferenceServerException) as later:
            client.infer("seq", inputs)
        assert later.value.status() == "503" and "not ready" in later.value.message()
    crash = [r for r in caplog.records if "injected fault in batch forming" in r.getMessage()]
    assert crash and crash[0].levelno == logging.ERROR and "not ready" in crash[0].getMessage()
