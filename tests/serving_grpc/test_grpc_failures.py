"""Hostile and mistaken gRPC requests (the twins of the HTTP suite's bad-input cases) get the status
code that says whose fault it is and a message naming the problem, and the server keeps serving;
overload, timeouts, a model that is not ready and a model that fails map to their own codes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelpress.serving.grpc.codec import set_parameter
from tests.serving.conftest import VOCAB, deploy_tiny, seq_request

from .conftest import grpc_input, in_process_grpc_server

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
X = np.zeros((1, 1, 8, 8), np.float32)


def request(model="tiny", version="", datatype="FP32", shape=(1, 1, 8, 8), raw=(X.tobytes(),), name="input",
            outputs=(), **parameters) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name=model, model_version=version)
    r.inputs.add(name=name, datatype=datatype, shape=list(shape))
    r.raw_input_contents.extend(raw)
    for o in outputs:
        r.outputs.add(name=o)
    for key, value in parameters.items():
        set_parameter(r.parameters[key], value)
    return r


def typed(field: str, values, datatype="FP32", shape=(1, 1, 8, 8)) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="tiny")
    getattr(r.inputs.add(name="input", datatype=datatype, shape=list(shape)).contents, field).extend(values)
    return r


def seq(ids_rows: int, mask_rows: int) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="seq")
    for name, rows in (("input_ids", ids_rows), ("attention_mask", mask_rows)):
        r.inputs.add(name=name, datatype="INT64", shape=[rows, 8])
        r.raw_input_contents.append(np.ones((rows, 8), np.int64).tobytes())
    return r


def _twice() -> pb.ModelInferRequest:
    r = request()
    r.inputs.add(name="input", datatype="FP32", shape=[1, 1, 8, 8])
    r.raw_input_contents.append(X.tobytes())
    return r


def _both() -> pb.ModelInferRequest:
    r = request()
    r.inputs[0].contents.fp32_contents.extend([0.0] * 64)
    return r


def _classification(k) -> pb.ModelInferRequest:
    r = request()
    r.outputs.add(name="logits").parameters["classification"].int64_param = k
    return r


BAD = [  # (name, request, code, message fragment)
    ("wrong datatype", request(datatype="INT64", raw=(np.zeros(64, np.int64).tobytes(),)), INVALID,
     "datatype INT64; model tiny expects FP32"),
    ("wrong shape", request(shape=(1, 64)), INVALID, "has shape [1, 64]"),
    ("mismatched batch", seq(2, 3), INVALID, "inputs disagree on the batch size (2 vs 3 rows)"),
    ("unknown output", request(outputs=("probs",)), INVALID, "no output 'probs'"),
    ("oversized shape", request(shape=(2**32, 2**32, 1, 8, 8)), INVALID, "needs 4722366482869645213696"),
    ("truncated raw contents", request(raw=(X.tobytes()[:200],)), INVALID,
     "raw_input_contents[0] has 200 bytes but shape [1, 1, 8, 8] of FP32 needs 256"),
    ("raw contents of the wrong size", request(raw=(X.tobytes() + b"\0" * 44,)), INVALID, "has 300 bytes"),
    ("more raw contents than inputs", request(raw=(X.tobytes(), X.tobytes())), INVALID,
     "raw_input_contents has 2 entries for 1 inputs"),
    ("unknown model", request(model="nope"), NOT_FOUND, "unknown model 'nope'"),
    ("unknown version", request(version="9"), NOT_FOUND, "no version '9'"),
    ("non-numeric version", request(version="abc"), NOT_FOUND, "no version 'abc'"),
    ("model name ..", request(model=".."), NOT_FOUND, "unknown model '..'"),
    ("model name ../tiny", request(model="../tiny"), NOT_FOUND, "unknown model '../tiny'"),
    ("no model name", request(model=""), NOT_FOUND, "unknown model ''"),
    ("missing input", request(name="x"), INVALID, "missing ['input']"),
    ("empty batch", request(shape=(0, 1, 8, 8), raw=(b"",)), INVALID, "batch dimension is 0"),
    ("more rows than max_batch_size", request(shape=(17, 1, 8, 8), raw=(np.zeros((17, 64), np.float32).tobytes(),)),
     INVALID, "17 rows exceeds max_batch_size 16"),
    ("BYTES to a model that takes no texts", request(datatype="BYTES", raw=(b"\x01\0\0\0a",), shape=(1,)), INVALID,
     "this model takes no texts"),
    ("unsupported datatype", request(datatype="FP8"), INVALID, "unsupported datatype 'FP8'"),
    ("negative dimension", request(shape=(-1, 1, 8, 8)), INVALID, "non-negative"),
    ("no inputs", pb.ModelInferRequest(model_name="tiny"), INVALID, "at least one input"),
    ("an input given twice", _twice(), INVALID, "given twice"),
    ("raw and typed contents at once", _both(), INVALID, "not both"),
    ("typed contents of another datatype", typed("int64_contents", [0] * 64), INVALID,
     "takes contents.fp32_contents, got contents.int64_contents"),
    ("typed contents that do not fill the shape", typed("fp32_contents", [0.0] * 10), INVALID,
     "contents.fp32_contents has 10 values but shape [1, 1, 8, 8] needs 64"),
    ("no data at all", typed("fp32_contents", []), INVALID, "has 0 values"),
    ("a value too large for INT8", typed("int_contents", [300] + [0] * 63, datatype="INT8"), INVALID,
     "value 300 in contents.int_contents does not fit INT8"),
    ("FP16 in typed contents", typed("fp32_contents", [0.0] * 64, datatype="FP16"), INVALID,
     "FP16 has no typed contents field"),
    ("classification 0", _classification(0), INVALID, "'classification' must be a positive integer"),
    ("probabilities not a bool", request(probabilities="yes"), INVALID, "parameters.probabilities must be true"),
    ("a message over the size limit", request(shape=(220, 1, 8, 8), raw=(np.zeros((220, 64), np.float32).tobytes(),)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
]


@pytest.fixture(scope="module")
def stub(grpc_server):
    with grpc.insecure_channel(grpc_server.target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize("name,req,code,fragment", BAD, ids=[b[0] for b in BAD])
def test_client_mistakes_get_their_code_and_the_server_keeps_serving(stub, name, req, code, fragment):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=10)
    assert err.value.code() == code, err.value.details()
    assert fragment in err.value.details()
    good = stub.ModelInfer(request(), timeout=10)
    assert len(good.raw_output_contents[0]) == 40


def test_unknown_models_in_every_rpc_are_not_found(stub):
    for call, req in ((stub.ModelMetadata, pb.ModelMetadataRequest(name="nope")),
                      (stub.ModelConfig, pb.ModelConfigRequest(name="tiny", version="7")),
                      (stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope"))):
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=10)
        assert err.value.code() == NOT_FOUND
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready  # not ready rather than an error


def test_a_model_that_fails_on_a_batch_is_internal_with_the_reason(client):
    ids, mask, total = seq_request(1, 8, seed=1)
    bad = ids.copy()
    bad[0, 2] = VOCAB + 5  # outside the model's table: ONNX Runtime's Gather fails
    with pytest.raises(InferenceServerException) as err:
        client.infer("seq", [grpc_input("input_ids", bad), grpc_input("attention_mask", mask)])
    assert err.value.status() == "StatusCode.INTERNAL" and "out of data bounds" in err.value.message()
    ok = client.infer("seq", [grpc_input("input_ids", ids), grpc_input("attention_mask", mask)])
    np.testing.assert_array_equal(ok.as_numpy("total"), total)


def test_full_queue_timeout_and_not_ready_map_to_their_codes(tmp_path):
    repo = tmp_path / "repo"
    # a batch of fewer than 16 rows waits a whole second for company; requests may wait half of that
    deploy_tiny(repo, tmp_path, max_batch_size=16, max_queue_delay_us=1_000_000, instances=1, preferred_batch_sizes=())
    with in_process_grpc_server(repo, request_timeout_s=0.5, max_queue_rows=8) as server:
        client = grpcclient.InferenceServerClient(server.target)

        def status(rows: int) -> tuple[str, str]:
            try:
                client.infer("tiny", [grpc_input("input", np.zeros((rows, 1, 8, 8), np.float32))])
                return "OK", ""
            except InferenceServerException as exc:
                return exc.status().removeprefix("StatusCode."), exc.message()

        try:
            code, message = status(12)  # more rows than may queue (8): the queue bound refuses it
            assert code == "RESOURCE_EXHAUSTED" and "overloaded" in message, message
            code, message = status(4)  # alone, it waits for company past its timeout
            assert code == "DEADLINE_EXCEEDED" and "timed out after 0.5 s" in message, message

            scheduler = server.store.get("tiny").scheduler
            scheduler.failure = "injected: the batch loop stopped"  # what a dying scheduler leaves behind
            assert not client.is_server_ready() and not client.is_model_ready("tiny")
            code, message = status(1)
            assert code == "UNAVAILABLE" and "not ready" in message, message
            scheduler.failure = None
            assert client.is_server_ready()
        finally:
            client.close()


def test_one_table_maps_every_error_to_a_grpc_code():
    from modelpress.serving.errors import ClientError, ServerError
    from modelpress.serving.grpc.service import status_code

    code = lambda exc: status_code(exc)[0].name  # noqa: E731
    assert code(ClientError("bad shape")) == "INVALID_ARGUMENT"
    assert code(ClientError("no such model", status=404)) == "NOT_FOUND"
    assert code(ClientError("body too large", status=413)) == "RESOURCE_EXHAUSTED"
    assert code(ServerError("model m/1 is overloaded: 8 rows already queued (limit 8); retry shortly", status=503,
                            headers={"Retry-After": "1"})) == "RESOURCE_EXHAUSTED"
    reloading = ServerError("model m is being reloaded; retry", status=503, headers={"Retry-After": "1"})
    assert status_code(reloading)[0].name == "UNAVAILABLE" and status_code(reloading)[2] == (("retry-after", "1"),)
    assert code(ServerError("model m/1 is not ready: it broke", status=503)) == "UNAVAILABLE"
    assert code(ServerError("request timed out after 1 s", status=504)) == "DEADLINE_EXCEEDED"
    assert code(ServerError("model m/1 failed to execute: ...")) == "INTERNAL"
    assert status_code(ValueError("odd"))[1:] == ("internal error: ValueError: odd", ())
    assert code(ValueError("odd")) == "INTERNAL"


def test_an_empty_tensor_of_absurd_dimensions_is_the_clients_mistake(stub):
    for shape in ((2**40, 0, 2**40, 8), (0, 2**40, 2**40)):
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request(shape=shape, raw=(b"",)), timeout=10)
        assert err.value.code() == INVALID and "is not usable" in err.value.details()
