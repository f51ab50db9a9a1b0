"""Class names, probabilities and top-k classes beside the logits, on the v2 and Vertex routes;
model metadata that says what to send. Against a real server and tritonclient.http."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .conftest import deploy_tiny, expected_logits, free_port, start_server, stop_server

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
INPUT = {"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8], "layout": "NCHW", "channels": "grey",
         "value_range": [0.0, 16.0], "preprocessing": "none: send raw features; the model normalises inside the graph"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    repo = tmp / "repo"
    deploy_tiny(repo, tmp, name="digits", max_batch_size=8, extra_meta={"class_names": NAMES, "input": INPUT})
    port = free_port()
    env = {"AIP_HTTP_PORT": str(port), "AIP_PREDICT_ROUTE": "/predict", "AIP_STORAGE_URI": str(repo)}
    server = start_server(None, tmp, "--poll-seconds", "0", env=env, port=port)  # Vertex mode: both routes
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def client(digits):
    return httpclient.InferenceServerClient(digits.host)


def _x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 8, 8), dtype=np.float32) * 16


def _input(x: np.ndarray, binary: bool = True):
    i = httpclient.InferInput("input", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    return i


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_metadata_says_what_to_send_and_what_comes_back(client):
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8], "parameters": {
        "layout": "NCHW", "channels": "grey", "value_range": [0.0, 16.0], "preprocessing": INPUT["preprocessing"]}}]
    assert meta["parameters"]["input"] == INPUT and meta["parameters"]["class_names"] == NAMES
    assert set(meta["parameters"]["derived_outputs"]) == {"label", "probabilities"}
    assert "classification" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False])
def test_asking_for_logits_gets_exactly_logits(client, binary):
    x = _x(3)
    result = client.infer("digits", [_input(x, binary)],
                          outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("binary", [True, False])
def test_no_outputs_named_brings_the_class_name_per_row(client, binary):
    x = _x(4, seed=1)
    result = client.infer("digits", [_input(x, binary)], outputs=None)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits", "label"]
    want = [NAMES[i].encode() for i in expected_logits(x).argmax(axis=1)]
    assert list(result.as_numpy("label")) == want


def test_probabilities_on_request_beside_the_logits(digits):
    x = _x(2, seed=2)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": "logits"}], "parameters": {"probabilities": True}}
    code, _, raw = digits.post("/v2/models/digits/infer", json.dumps(body).encode())
    assert code == 200, raw
    outputs = {o["name"]: o for o in json.loads(raw)["outputs"]}
    assert list(outputs) == ["logits", "probabilities"]
    p = outputs["probabilities"]
    assert p["datatype"] == "FP32" and p["shape"] == [2, 10]
    np.testing.assert_allclose(np.reshape(p["data"], (2, 10)), _softmax(expected_logits(x)), rtol=1e-4, atol=1e-6)
    body["parameters"]["probabilities"] = "yes"
    code, _, raw = digits.post("/v2/models/digits/infer", json.dumps(body).encode())
    assert code == 400 and "probabilities must be true or false" in json.loads(raw)["error"]


@pytest.mark.parametrize("binary", [True, False])
def test_tritons_classification_extension_gives_top_k_with_labels(client, binary):
    x = _x(2, seed=3)
    result = client.infer("digits", [_input(x)],
                          outputs=[httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)])
    top = result.as_numpy("logits")
    assert top.shape == (2, 3)
    logits = expected_logits(x)
    for row, strings in zip(logits, top):
        parts = [(s.decode() if isinstance(s, bytes) else s).split(":") for s in strings]
        order = np.argsort(-row)[:3]
        assert [int(p[1]) for p in parts] == list(order)
        assert [p[2] for p in parts] == [NAMES[i] for i in order]
        np.testing.assert_allclose([float(p[0]) for p in parts], row[order], rtol=1e-4, atol=1e-4)


def test_client_mistakes_about_derived_outputs_are_clear(client, server):
    with pytest.raises(InferenceServerException, match="classification applies to the model's outputs"):
        client.infer("digits", [_input(_x(1))], outputs=[httpclient.InferRequestedOutput("label", class_count=2)])
    tiny = httpclient.InferenceServerClient(server.host)  # conftest's model: no meta.json, no class names
    with pytest.raises(InferenceServerException, match="has no class names"):
        tiny.infer("tiny", [_input(_x(1))], outputs=[httpclient.InferRequestedOutput("label")])
    result = tiny.infer("tiny", [_input(_x(1))])  # no names to give: the response is unchanged
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits"]


def test_vertex_predictions_carry_the_class_name_and_probabilities_on_request(digits):
    x = _x(10, seed=4)  # more instances than max_batch_size: split into batches and merged back
    logits = expected_logits(x)
    code, _, raw = digits.post("/predict", json.dumps({"instances": x.tolist()}).encode())
    assert code == 200, raw
    predictions = json.loads(raw)["predictions"]
    assert [set(p) for p in predictions] == [{"logits", "label"}] * 10
    assert [p["label"] for p in predictions] == [NAMES[i] for i in logits.argmax(axis=1)]
    np.testing.assert_allclose([p["logits"] for p in predictions], logits, rtol=1e-5, atol=1e-4)
    code, _, raw = digits.post("/predict", json.dumps({"instances": x[:2].tolist(),
                                                       "parameters": {"probabilities": True}}).encode())
    assert code == 200, raw
    predictions = json.loads(raw)["predictions"]
    assert list(predictions[0]) == ["logits", "label", "probabilities"]
    np.testing.assert_allclose([p["probabilities"] for p in predictions], _softmax(logits[:2]), rtol=1e-4, atol=1e-6)


def test_a_meta_json_that_cannot_be_right_fails_the_version_with_the_reason(tmp_path):
    import asyncio

    from modelpress.serving.store import ModelStore

    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path, name="three", extra_meta={"class_names": ["a", "b", "c"]})  # the model has 10
    deploy_tiny(repo, tmp_path, name="odd", extra_meta={"input": "send pixels"})
    deploy_tiny(repo, tmp_path, name="old")  # no meta.json keys at all: served as before

    async def load():
        store = ModelStore(repo)
        await store.refresh()
        try:
            return dict(store.errors), store.get("old").metadata([1])
        finally:
            await store.close()

    errors, old = asyncio.run(load())
    assert "meta.json lists 3 class_names but output 'logits' has 10 classes" in errors["three/1"]
    assert "'input' must be an object" in errors["odd/1"]
    assert old["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert "class_names" not in old["parameters"] and "input" not in old["parameters"]


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_outputs_round_trip_through_the_codec(binary):
    from modelpress.serving import protocol

    labels = protocol.bytes_array(["zero", "naïve", ""], (3,))
    payload, headers = protocol.encode_infer("m", "1", None, {"label": labels}, {"label"} if binary else set())
    decoded = protocol.decode_infer_response(payload, headers.get("inference-header-content-length"))
    assert decoded["label"].tolist() == ["zero".encode(), "naïve".encode(), b""]
