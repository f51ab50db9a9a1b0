"""A text classifier over gRPC: a BYTES tensor of strings (raw contents, tritonclient.grpc's
default, and typed bytes_contents) is tokenised by the server as over HTTP, and the truncation
report comes back in the response parameters."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelpress.data.tokenizer import load_tokenizer, tokenize
from tests.text_serving.conftest import MAX_LENGTH, TOKEN_INPUTS, deploy_text

from .conftest import in_process_grpc_server

THREE = ["I got the kettle. The design is superb. Would buy again.",
         "The battery is awful. Returning it.",
         " ".join(["The price is not great and the fit is flimsy."] * 8)]  # past max_length


@pytest.fixture(scope="module")
def text_server(text_build, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpctext")
    deploy_text(tmp / "repo", text_build, max_batch_size=64)
    with in_process_grpc_server(tmp / "repo") as server:
        yield server


def _expected(build) -> np.ndarray:
    arrays = tokenize(THREE, load_tokenizer(build.tokenizer), build.max_length)
    return build.reference({n: arrays[n] for n in TOKEN_INPUTS})


@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_three_strings_answer_three_rows_with_labels_and_the_truncation_report(text_server, text_build, shape):
    client = grpcclient.InferenceServerClient(text_server.target)
    try:
        text = grpcclient.InferInput("text", list(shape), "BYTES")
        text.set_data_from_numpy(np.array([s.encode() for s in THREE], dtype=object).reshape(shape))
        result = client.infer("reviews", [text], parameters={"probabilities": True})
        expected = _expected(text_build)
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-5)
        labels = [v.decode() for v in result.as_numpy("label")]
        assert labels == [text_build.class_names[i] for i in expected.argmax(1)]
        assert result.as_numpy("probabilities").shape == (3, len(text_build.class_names))
        params = result.get_response().parameters
        assert json.loads(params["truncated"].string_param) == [2]
        assert params["max_length"].int64_param == MAX_LENGTH
        meta = client.get_model_metadata("reviews")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("text", "BYTES", [-1, 1])]
        with pytest.raises(InferenceServerException) as err:  # a bad row is the client's mistake
            empty = grpcclient.InferInput("text", [1], "BYTES")
            empty.set_data_from_numpy(np.array([b"   "], dtype=object))
            client.infer("reviews", [empty])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and "row 0" in err.value.message()
    finally:
        client.close()


def test_typed_bytes_contents(text_server, text_build):
    request = pb.ModelInferRequest(model_name="reviews")
    request.inputs.add(name="text", datatype="BYTES", shape=[3, 1]).contents.bytes_contents.extend(
        [s.encode() for s in THREE])
    with grpc.insecure_channel(text_server.target) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(3, -1)
    np.testing.assert_allclose(logits, _expected(text_build), rtol=1e-4, atol=1e-5)
