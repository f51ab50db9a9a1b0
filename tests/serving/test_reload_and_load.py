"""Under load: batches form, a new version is picked up with zero failed requests, a broken
version is reported while the old one keeps serving, the queue bound answers 503."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from modelpress import loadtest
from modelpress.serving.protocol import binary_request, decode_infer_response

from .conftest import deploy_tiny, expected_logits, load_across_a_deploy, start_server, stop_server, wait_for


def _metric(text: str, name: str, version: str) -> float:
    return float(text.split(f'{name}{{model="tiny",version="{version}"}} ')[1].split()[0])


def test_new_version_under_load_then_a_broken_one(tmp_path):
    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path, seed=0, max_batch_size=32, max_queue_delay_us=1000, instances=2)
    server = start_server(repo, tmp_path, "--poll-seconds", "0.2")
    try:
        result = load_across_a_deploy(repo, tmp_path, loadtest.Target(server.url, "tiny"))
        assert result.requests == 10_000 and result.ok == 10_000 and result.errors == {}
        assert wait_for(lambda: json.loads(server.get("/v2/models/tiny")[1])["versions"] == ["2"])
        text = server.metrics()
        count = _metric(text, "nv_inference_count", "1") + _metric(text, "nv_inference_count", "2")
        execs = _metric(text, "nv_inference_exec_count", "1") + _metric(text, "nv_inference_exec_count", "2")
        assert count >= 10_000 and count / execs > 1.5, (count, execs)  # batches formed
        assert _metric(text, "nv_inference_count", "2") > 0  # the new version served part of the run
        assert _metric(text, "nv_inference_request_failure", "1") == 0

        x = np.random.default_rng(3).random((2, 1, 8, 8), dtype=np.float32)
        body, headers = binary_request({"input": x})
        code, hdrs, raw = server.post("/v2/models/tiny/infer", body, headers)
        assert code == 200
        got = decode_infer_response(raw, hdrs.get("inference-header-content-length"))["logits"]
        np.testing.assert_allclose(got, expected_logits(x, seed=1), rtol=1e-5, atol=1e-5)  # v2's weights

        broken = repo / "tiny" / "3"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"not an onnx model")
        assert wait_for(lambda: any(e["state"] == "UNAVAILABLE" for e in json.loads(
            server.post("/v2/repository/index", b"")[2])))
        index = json.loads(server.post("/v2/repository/index", b"")[2])
        assert {"name": "tiny", "version": "2", "state": "READY", "reason": ""} in index
        failed = [e for e in index if e["state"] == "UNAVAILABLE"]
        assert failed[0]["version"] == "3" and "failed to load" in failed[0]["reason"]
        code, hdrs, raw = server.post("/v2/models/tiny/infer", json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}]}).encode())
        assert code == 200 and json.loads(raw)["model_version"] == "2"
        assert "failed to load" in server.log.read_text()

        # batching settings change without a restart: edit config.pbtxt, the model reloads
        config = repo / "tiny" / "config.pbtxt"
        config.write_text(config.read_text().replace("max_batch_size: 32", "max_batch_size: 8"))
        assert wait_for(lambda: json.loads(server.get("/v2/models/tiny/config")[1])["max_batch_size"] == 8)
        code, _, raw = server.post("/v2/models/tiny/infer", binary_request({"input": np.zeros((9, 1, 8, 8),
                                                                                          np.float32)})[0],
                                   binary_request({"input": np.zeros((9, 1, 8, 8), np.float32)})[1])
        assert code == 400 and "exceeds max_batch_size 8" in json.loads(raw)["error"]
    finally:
        stop_server(server)


def test_a_full_queue_answers_503_with_retry_after(tmp_path):
    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path, max_batch_size=8, max_queue_delay_us=200_000, instances=1)
    server = start_server(repo, tmp_path, "--poll-seconds", "0", "--max-queue-rows", "8")
    try:
        async def burst():
            import aiohttp
            body, headers = binary_request({"input": np.zeros((4, 1, 8, 8), np.float32)})
            async with aiohttp.ClientSession() as session:
                async def one():
                    async with session.post(server.url + "/v2/models/tiny/infer", data=body, headers=headers) as r:
                        return r.status, r.headers.get("Retry-After"), await r.read()
                return await asyncio.gather(*[one() for _ in range(12)])

        results = asyncio.run(burst())
        codes = sorted(c for c, _, _ in results)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
        rejected = [r for r in results if r[0] == 503]
        assert all(r[1] == "1" and b"overloaded" in r[2] for r in rejected)
        assert server.get("/v2/health/ready")[0] == 200
    finally:
        stop_server(server)


def test_a_fixed_config_is_applied_after_a_broken_one(tmp_path):
    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path, max_batch_size=4)
    server = start_server(repo, tmp_path, "--poll-seconds", "0.2")
    try:
        config = repo / "tiny" / "config.pbtxt"
        good = config.read_text()
        config.write_text(good.replace('name: "input"', 'name: "wrong_input_name"'))
        assert wait_for(lambda: any(e["state"] == "UNAVAILABLE" for e in json.loads(
            server.post("/v2/repository/index", b"")[2])))
        assert json.loads(server.get("/v2/models/tiny/config")[1])["input"][0]["name"] == "input"  # old serves
        config.write_text(good.replace("max_batch_size: 4", "max_batch_size: 2"))
        assert wait_for(lambda: json.loads(server.get("/v2/models/tiny/config")[1])["max_batch_size"] == 2)
        assert json.loads(server.post("/v2/repository/index", b"")[2]) == [
            {"name": "tiny", "version": "1", "state": "READY", "reason": ""}]
    finally:
        stop_server(server)
