"""The server against the real Triton client (tritonclient.http), binary and JSON, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import expected_logits


@pytest.fixture(scope="module")
def client(server):
    return httpclient.InferenceServerClient(server.host)


def _input(x: np.ndarray, binary: bool):
    i = httpclient.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    return i


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "modelpress"
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(meta["extensions"])
    model = client.get_model_metadata("tiny")
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]


def test_config_uses_triton_field_names(client):
    config = client.get_model_config("tiny")
    assert config["max_batch_size"] == 16
    assert config["input"][0] == {"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert config["instance_group"][0]["count"] == 2


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("batch", [1, 8])
def test_infer_matches_the_model(client, binary, batch):
    x = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary)
    for version in ("", "1"):
        result = client.infer("tiny", [_input(x, binary)], model_version=version, outputs=[out], request_id="r7")
        np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(x), rtol=1e-5, atol=1e-5)
        response = result.get_response()
        assert response["id"] == "r7" and response["model_version"] == "1"


def test_statistics_count_rows_and_batches(client):
    before = client.get_inference_statistics("tiny")["model_stats"][0]
    x = np.zeros((8, 1, 8, 8), np.float32)
    client.infer("tiny", [_input(x, True)])
    after = client.get_inference_statistics("tiny")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 8
    assert after["execution_count"] - before["execution_count"] == 1
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert any(b["batch_size"] == 8 for b in after["batch_stats"])
    everything = client.get_inference_statistics()
    assert [s["name"] for s in everything["model_stats"]] == ["tiny"]


def test_error_reaches_the_client_with_the_servers_message(client):
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(InferenceServerException, match=r"shape \[1, 1, 4, 4\].*expects \[-1, 1, 8, 8\]"):
        client.infer("tiny", [_input(x, True)])
    too_many = np.zeros((17, 1, 8, 8), np.float32)
    with pytest.raises(InferenceServerException, match="17 rows exceeds max_batch_size 16"):
        client.infer("tiny", [_input(too_many, True)])


GOOD = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}]}


def _binary(size_claimed: int, payload: bytes) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                     "parameters": {"binary_data_size": size_claimed}}]}).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


BAD = [  # (name, path, body, headers, status, message fragment)
    ("malformed JSON", "/v2/models/tiny/infer", b'{"inputs": [', {}, 400, "malformed JSON"),
    ("wrong datatype", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{**GOOD["inputs"][0], "datatype": "INT64", "data": [0] * 64}]}).encode(), {}, 400,
     "datatype INT64; model tiny expects FP32"),
    ("wrong shape", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{**GOOD["inputs"][0], "shape": [1, 64]}]}).encode(), {}, 400, "has shape [1, 64]"),
    ("data does not fill the shape", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{**GOOD["inputs"][0], "data": [0.0] * 10}]}).encode(), {}, 400, "needs 64"),
    ("unknown model", "/v2/models/nope/infer", json.dumps(GOOD).encode(), {}, 404, "unknown model 'nope'"),
    ("unknown version", "/v2/models/tiny/versions/9/infer", json.dumps(GOOD).encode(), {}, 404, "no version '9'"),
    ("non-numeric version", "/v2/models/tiny/versions/abc/infer", json.dumps(GOOD).encode(), {}, 404, "no version"),
    ("binary sizes that do not add up", "/v2/models/tiny/infer", *_binary(256, b"\0" * 200), 400, "do not add up"),
    ("binary size not matching the shape", "/v2/models/tiny/infer", *_binary(200, b"\0" * 200), 400, "needs 256"),
    ("extra binary bytes", "/v2/models/tiny/infer", *_binary(256, b"\0" * 300), 400, "do not add up"),
    ("truncated body (header longer than body)", "/v2/models/tiny/infer", b'{"inputs": []}',
     {"Inference-Header-Content-Length": "500"}, 400, "truncated"),
    ("oversized body", "/v2/models/tiny/infer", b"{" + b" " * 60_000 + b"}", {}, 413, "exceeds"),
    ("model name with ../", "/v2/models/..%2F..%2Fetc/infer", json.dumps(GOOD).encode(), {}, 404, "no route"),
    ("model name ..", "/v2/models/../infer", json.dumps(GOOD).encode(), {}, 404, "unknown model '..'"),
    ("model name ../tiny", "/v2/models/..%2Ftiny/versions/1/infer", json.dumps(GOOD).encode(), {}, 404, "no route"),
    ("missing input", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{**GOOD["inputs"][0], "name": "x"}]}).encode(), {}, 400, "missing ['input']"),
    ("unknown output", "/v2/models/tiny/infer", json.dumps({**GOOD, "outputs": [{"name": "probs"}]}).encode(), {},
     400, "no output 'probs'"),
    ("empty batch", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{**GOOD["inputs"][0], "shape": [0, 1, 8, 8], "data": []}]}).encode(), {}, 400,
     "batch dimension is 0"),
    ("not an object", "/v2/models/tiny/infer", b"[1, 2]", {}, 400, "JSON object"),
    ("input parameters not an object", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{**GOOD["inputs"][0], "parameters": [1]}]}).encode(), {}, 400, "must be a JSON object"),
    ("output parameters not an object", "/v2/models/tiny/infer",
     json.dumps({**GOOD, "outputs": [{"name": "logits", "parameters": 3}]}).encode(), {}, 400, "must be a JSON object"),
    ("a shape whose size overflows int64", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{**GOOD["inputs"][0], "shape": [2**32, 2**32, 1, 8, 8], "data": []}]}).encode(), {}, 400,
     "needs"),
    ("strings as FP32 data", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{**GOOD["inputs"][0], "data": ["1"] * 64}]}).encode(), {}, 400, "does not hold FP32"),
    ("binary_data_size true", "/v2/models/tiny/infer", *_binary(True, b"\0"), 400, "non-negative integer"),
    ("unsupported datatype", "/v2/models/tiny/infer",
     json.dumps({"inputs": [{**GOOD["inputs"][0], "datatype": "BYTES"}]}).encode(), {}, 400, "unsupported datatype"),
]


@pytest.mark.parametrize("name,path,body,headers,status,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(server, name, path, body, headers, status, fragment):
    code, _, raw = server.post(path, body, headers)
    assert code == status, raw
    message = json.loads(raw)["error"]
    assert fragment in message
    code, _, raw = server.post("/v2/models/tiny/infer", json.dumps(GOOD).encode())
    assert code == 200 and len(json.loads(raw)["outputs"][0]["data"]) == 10


def test_unknown_route_and_method_are_json_errors(server):
    code, raw = server.get("/v3/nothing")
    assert code == 404 and "no route" in json.loads(raw)["error"]
    code, _, raw = server.post("/v2/health/live", b"")
    assert code == 405 and json.loads(raw)["error"]


def test_prometheus_metrics_use_triton_names(server, client):
    client.infer("tiny", [_input(np.zeros((4, 1, 8, 8), np.float32), True)])
    text = server.metrics()
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_pending_request_count", "nv_inference_request_duration_us",
                 "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"):
        assert f'{name}{{model="tiny",version="1"}}' in text, name
    assert 'modelpress_batch_size_bucket{le="4.0",model="tiny",version="1"}' in text
    assert "modelpress_request_duration_seconds_bucket" in text
    count = float(text.split('nv_inference_count{model="tiny",version="1"} ')[1].split()[0])
    stats = client.get_inference_statistics("tiny")["model_stats"][0]
    assert count == stats["inference_count"]


def test_repository_index_lists_the_loaded_version(client):
    assert client.get_model_repository_index() == [{"name": "tiny", "version": "1", "state": "READY", "reason": ""}]
