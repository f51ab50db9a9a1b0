"""`modelpress serve` over gRPC (Triton's GRPCInferenceService) with the real Triton client,
tritonclient.grpc: health, metadata, config, infer from raw and typed contents, statistics,
the repository index, streaming, and the metrics counting gRPC requests like HTTP ones."""

from __future__ import annotations

import json
import queue
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.serving.conftest import expected_logits, seq_request

from .conftest import grpc_input


@pytest.fixture(scope="module")
def stub(grpc_server):
    with grpc.insecure_channel(grpc_server.target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_live_ready_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("tiny", "9")
    meta = client.get_server_metadata()
    assert meta.name == "modelpress" and meta.version
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(meta.extensions)
    model = client.get_model_metadata("tiny")
    assert (model.name, list(model.versions), model.platform) == ("tiny", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("input", "FP32", [-1, 1, 8, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("logits", "FP32", [-1, 10])]
    seq = client.get_model_metadata("seq", "1", as_json=True)
    assert [t["name"] for t in seq["inputs"]] == ["input_ids", "attention_mask"]


def test_config_is_the_config_pbtxt_protobuf(client, grpc_server):
    from modelpress.deploy import repository

    config = client.get_model_config("tiny").config
    assert config == repository.read_config(grpc_server.http.repo, "tiny")
    assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.instance_group[0].count == 2 and list(config.input[0].dims) == [1, 8, 8]


@pytest.mark.parametrize("batch", [1, 8])
def test_infer_from_raw_contents_matches_the_model(client, batch):
    x = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)
    for version in ("", "1"):
        result = client.infer("tiny", [grpc_input("input", x)], model_version=version, request_id="r7",
                              outputs=[grpcclient.InferRequestedOutput("logits")])
        np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(x), rtol=1e-5, atol=1e-5)
        response = result.get_response()
        assert (response.id, response.model_name, response.model_version) == ("r7", "tiny", "1")
        assert len(response.raw_output_contents) == 1 and list(response.outputs[0].shape) == [batch, 10]


@pytest.mark.parametrize("batch", [1, 8])
def test_infer_from_typed_contents(stub, batch):
    x = np.random.default_rng(10 + batch).random((batch, 1, 8, 8), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="tiny", id="typed")
    request.inputs.add(name="input", datatype="FP32", shape=x.shape).contents.fp32_contents.extend(x.reshape(-1))
    response = stub.ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(batch, 10)
    np.testing.assert_allclose(got, expected_logits(x), rtol=1e-5, atol=1e-5)

    ids, mask, total = seq_request(batch, 12, seed=batch)
    request = pb.ModelInferRequest(model_name="seq")
    for name, value in (("input_ids", ids), ("attention_mask", mask)):
        request.inputs.add(name=name, datatype="INT64", shape=value.shape).contents.int64_contents.extend(
            value.reshape(-1).tolist())
    response = stub.ModelInfer(request)
    assert response.outputs[0].datatype == "INT64"
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.int64).reshape(batch, 1), total)


def test_probabilities_and_classification_as_over_http(client):
    x = np.random.default_rng(5).random((2, 1, 8, 8), dtype=np.float32)
    result = client.infer("tiny", [grpc_input("input", x)], parameters={"probabilities": True})
    logits, probs = result.as_numpy("logits"), result.as_numpy("probabilities")
    assert probs.shape == (2, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == logits.argmax(1)).all()
    top = client.infer("tiny", [grpc_input("input", x)],
                       outputs=[grpcclient.InferRequestedOutput("logits", class_count=3)]).as_numpy("logits")
    assert top.shape == (2, 3)
    best = np.argsort(-expected_logits(x), axis=1)[:, :3]
    assert [[int(v.split(b":")[1]) for v in row] for row in top] == best.tolist()


def test_statistics_count_grpc_requests_and_metrics_agree(client, grpc_server):
    before = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
    client.infer("tiny", [grpc_input("input", np.zeros((8, 1, 8, 8), np.float32))])
    stats = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) - int(before.get("inference_count", 0)) == 8
    assert int(stats["execution_count"]) - int(before.get("execution_count", 0)) == 1
    assert int(stats["inference_stats"]["success"]["count"]) == int(
        before.get("inference_stats", {}).get("success", {}).get("count", 0)) + 1
    assert any(int(b["batch_size"]) == 8 for b in stats["batch_stats"])
    everything = client.get_inference_statistics(as_json=True)
    assert sorted(s["name"] for s in everything["model_stats"]) == ["seq", "tiny"]
    with urllib.request.urlopen(grpc_server.http.metrics_url, timeout=5) as r:
        text = r.read().decode()
    count = float(text.split('nv_inference_count{model="tiny",version="1"} ')[1].split()[0])
    assert count == int(stats["inference_count"])  # the same counters, whatever the transport
    http_stats = json.loads(grpc_server.http.get("/v2/models/tiny/stats")[1])["model_stats"][0]
    assert http_stats["inference_count"] == int(stats["inference_count"])


def test_repository_index(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert sorted((m["name"], m["version"], m["state"]) for m in index) == [("seq", "1", "READY"),
                                                                            ("tiny", "1", "READY")]
    assert len(client.get_model_repository_index(as_json=True)) == 1


def test_a_stream_of_100_requests_is_answered_in_full(client):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    rng = np.random.default_rng(7)
    sent = {}
    try:
        for i in range(100):
            x = rng.random((1 + i % 4, 1, 8, 8), dtype=np.float32)
            sent[str(i)] = x
            client.async_stream_infer("tiny", [grpc_input("input", x)], request_id=str(i))
        # a mistake in the middle of a stream is answered in error_message; the stream goes on
        client.async_stream_infer("tiny", [grpc_input("input", np.zeros((1, 1, 4, 4), np.float32))],
                                  request_id="bad")
        client.async_stream_infer("tiny", [grpc_input("input", sent["0"])], request_id="after")
    finally:
        client.stop_stream()  # closes the sending side and waits for every answer
    got = [answers.get(timeout=10) for _ in range(102)]
    assert answers.empty()
    errors = [e for r, e in got if e is not None]
    assert len(errors) == 1 and "has shape [1, 1, 4, 4]" in errors[0].message()
    results = {r.get_response().id: r for r, e in got if e is None}
    assert sorted(results) == sorted([*sent, "after"])
    for rid, x in sent.items():
        np.testing.assert_allclose(results[rid].as_numpy("logits"), expected_logits(x), rtol=1e-5, atol=1e-5)
