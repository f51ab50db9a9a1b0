"""Vertex AI custom-container mode, the loadtest command, and the pure protocol pieces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelpress.serving import protocol
from modelpress.serving.server import vertex_environment

from .conftest import deploy_tiny, expected_logits, free_port, start_server, stop_server


def test_vertex_predict_instances_and_v2_bodies(tmp_path):
    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path, max_batch_size=4)
    port = free_port()
    env = {"AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": "/health", "AIP_PREDICT_ROUTE": "/predict",
           "AIP_STORAGE_URI": str(repo)}
    # no --repository: Vertex mode loads AIP_STORAGE_URI
    server = start_server(None, tmp_path, "--poll-seconds", "0", env=env, port=port)
    try:
        assert server.get("/health")[0] == 200
        x = np.random.default_rng(0).random((10, 1, 8, 8), dtype=np.float32)  # more rows than max_batch_size
        code, _, raw = server.post("/predict", json.dumps({"instances": x.tolist(), "parameters": {}}).encode())
        assert code == 200, raw
        predictions = np.asarray(json.loads(raw)["predictions"], np.float32)
        np.testing.assert_allclose(predictions, expected_logits(x), rtol=1e-5, atol=1e-5)
        code, _, raw = server.post("/predict", protocol.json_request({"input": x[:2]}))
        assert code == 200 and json.loads(raw)["outputs"][0]["shape"] == [2, 10]
        code, _, raw = server.post("/predict", json.dumps({"instances": [[1, 2, 3]]}).encode())
        assert code == 400 and "shape" in json.loads(raw)["error"]
        code, _, raw = server.post("/predict", json.dumps({"rows": []}).encode())
        assert code == 400 and "instances" in json.loads(raw)["error"]
        assert server.get("/v2/models/tiny")[0] == 200  # the v2 routes stay available
    finally:
        stop_server(server)


def test_vertex_environment_contract():
    assert vertex_environment({}) is None
    env = vertex_environment({"AIP_HTTP_PORT": "8080", "AIP_STORAGE_URI": "gs://b/m"})
    assert env == {"port": 8080, "health_route": "/health", "predict_route": "/predict", "storage_uri": "gs://b/m"}


def test_loadtest_command_closed_and_open_loop(server, tmp_path):
    out, plot = tmp_path / "load.json", tmp_path / "load.png"
    for mode in (["--concurrency", "1,8"], ["--rate", "200"]):
        proc = subprocess.run([sys.executable, "-m", "modelpress", "loadtest", server.url, "--model", "tiny",
                               *mode, "--duration", "1", "--warmup", "0.2", "--batch", "2",
                               "--output", str(out), "--plot", str(plot)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "| p50 ms |" in proc.stdout
        doc = json.loads(out.read_text())
        for r in doc["results"]:
            assert r["errors"] == {} and r["ok"] > 0 and r["batch"] == 2
            assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert plot.stat().st_size > 1000
    rate = doc["results"][0]
    assert rate["mode"] == "rate" and 150 <= rate["ok"] <= 250  # ~200 requests in the 1 s window


def test_loadtest_against_nothing_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "modelpress", "loadtest", f"http://127.0.0.1:{free_port()}",
                           "--model", "m", "--concurrency", "1", "--duration", "0.2"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "cannot reach" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_without_a_repository_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "modelpress", "serve", "--repository", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_binary_request_round_trip():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, headers = protocol.binary_request({"x": x}, outputs=["y"])
    req = protocol.parse_infer(body, headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert req.outputs == ["y"] and req.binary_outputs == {"y"} and req.binary_default
    payload, out_headers = protocol.encode_infer("m", "1", "id", {"y": x * 2}, {"y"})
    decoded = protocol.decode_infer_response(payload, out_headers["inference-header-content-length"])
    np.testing.assert_array_equal(decoded["y"], x * 2)


@pytest.mark.parametrize("datatype,values", [("INT64", [1, 2]), ("BOOL", [True, False]), ("FP16", [0.5, 1.5]),
                                             ("UINT8", [0, 255])])
def test_json_tensors_of_every_numeric_type(datatype, values):
    body = json.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": [2], "data": values}]}).encode()
    array = protocol.parse_infer(body, None).inputs["x"]
    assert array.dtype == protocol.DATATYPES[datatype] and array.tolist() == values
    payload, _ = protocol.encode_infer("m", "1", None, {"x": array}, set())
    assert json.loads(payload)["outputs"][0]["datatype"] == datatype


def test_gs_repository_is_copied_with_the_exact_listing_request(tmp_path, monkeypatch):
    from google.cloud import storage

    from modelpress.core.errors import ModelpressError
    from modelpress.serving.server import fetch_repository

    class Blob:
        def __init__(self, name, payload=b"x"):
            self.name, self.payload = name, payload

        def download_to_filename(self, filename):
            Path(filename).write_bytes(self.payload)

    calls = []

    class Client:
        def list_blobs(self, bucket, prefix):
            calls.append((bucket, prefix))
            return listing

    monkeypatch.setattr(storage, "Client", Client)
    listing = [Blob("models/repo/digits/config.pbtxt", b"name: 'digits'"), Blob("models/repo/digits/1/"),
               Blob("models/repo/digits/1/model.onnx", b"onnx")]
    dest = fetch_repository("gs://bucket/models/repo", tmp_path / "copy")
    assert calls == [("bucket", "models/repo/")]
    assert (dest / "digits" / "config.pbtxt").read_bytes() == b"name: 'digits'"
    assert (dest / "digits" / "1" / "model.onnx").read_bytes() == b"onnx"
    listing = [Blob("models/repo/../../escape")]
    with pytest.raises(ModelpressError, match="outside"):
        fetch_repository("gs://bucket/models/repo", tmp_path / "copy2")
    listing = []
    with pytest.raises(ModelpressError, match="no files under gs://bucket/empty"):
        fetch_repository("gs://bucket/empty", tmp_path / "copy3")


def test_vertex_mode_with_several_models_needs_model(tmp_path):
    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path, name="a")
    deploy_tiny(repo, tmp_path, name="b")
    env = {**__import__("os").environ, "AIP_HTTP_PORT": str(free_port()), "AIP_STORAGE_URI": str(repo)}
    proc = subprocess.run([sys.executable, "-m", "modelpress", "serve", "--metrics-port", "0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "holds models ['a', 'b']" in proc.stderr and "--model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_store_lookups_never_touch_paths(tmp_path):
    import asyncio

    from modelpress.serving.errors import ClientError
    from modelpress.serving.store import ModelStore

    store = ModelStore(tmp_path)
    for name, version in (("../x", None), ("..", None), ("x/../../etc", "1"), ("tiny", "../1")):
        with pytest.raises(ClientError) as err:
            store.get(name, version)
        assert err.value.status == 404
    asyncio.run(store.refresh())  # an empty repository: nothing loaded, not ready
    assert not store.ready
