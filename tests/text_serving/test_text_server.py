"""`modelpress serve` with a text classifier, through real clients: tritonclient.http (BYTES
tensors, binary and JSON; token ids as a Triton user sends them), tritonclient.http.aio for
concurrent mixed lengths, plain HTTP for bad input and the Vertex predict route; a version
swap and a broken-then-fixed tokenizer under polling."""

from __future__ import annotations

import asyncio
import json
import random
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelpress.data.text import load_text_dataset
from modelpress.data.tokenizer import load_tokenizer, tokenize
from modelpress.deploy import repository
from modelpress.serving.postprocess import ModelInfo
from modelpress.serving.textmodel import TextModel
from tests.serving.conftest import free_port, start_server, stop_server, wait_for

from .conftest import MAX_LENGTH, TOKEN_INPUTS, add_tokenizer, add_version, deploy_text, meta_for

THREE = ["I got the kettle. The design is superb. Would buy again.",
         "The battery is awful. Returning it.",
         " ".join(["The price is not great and the fit is flimsy."] * 8)]  # past max_length


@pytest.fixture(scope="module")
def served(text_build, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("textserve")
    version_dir = deploy_text(tmp / "repo", text_build, max_batch_size=64)
    server = start_server(tmp / "repo", tmp, "--poll-seconds", "0")
    yield server, version_dir
    stop_server(server)


@pytest.fixture(scope="module")
def server(served):
    return served[0]


@pytest.fixture(scope="module")
def client(server):
    return httpclient.InferenceServerClient(server.host)


def _text_input(strings, shape=None, binary=True) -> httpclient.InferInput:
    values = [s if isinstance(s, bytes) else s.encode() for s in strings]
    shape = list(shape or (len(values),))
    inp = httpclient.InferInput("text", shape, "BYTES")
    inp.set_data_from_numpy(np.array(values, dtype=object).reshape(shape), binary_data=binary)
    return inp


def _token_inputs(feed: dict) -> list[httpclient.InferInput]:
    out = []
    for name, array in feed.items():
        inp = httpclient.InferInput(name, list(array.shape), "INT64")
        inp.set_data_from_numpy(array)
        out.append(inp)
    return out


def _ids(build, strings) -> dict[str, np.ndarray]:
    arrays = tokenize(strings, load_tokenizer(build.tokenizer), build.max_length)
    return {n: arrays[n] for n in TOKEN_INPUTS}


def _labels(build, logits) -> list[str]:
    return [build.class_names[i] for i in logits.argmax(axis=1)]


# ------------------------------------------------------------------ texts in, logits and names out

@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_three_strings_give_three_rows_equal_to_onnx_runtime_on_the_training_ids(client, text_build, binary, shape):
    result = client.infer("reviews", [_text_input(THREE, shape, binary)])
    logits, labels = result.as_numpy("logits"), result.as_numpy("label")
    assert logits.shape == (3, len(text_build.class_names)) and labels.shape == (3,)
    expected = text_build.reference(_ids(text_build, THREE))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    assert [v.decode() for v in labels] == _labels(text_build, expected)
    assert result.get_response()["parameters"] == {"truncated": [2], "max_length": MAX_LENGTH}


def test_the_server_tokenises_exactly_as_the_dataset_step(served, text_build, client):
    _, version_dir = served
    test = load_text_dataset(str(text_build.dataset)).test
    # the server path's tokeniser, loaded from the deployed version as the store loads it
    config = repository.read_config(version_dir.parent.parent, "reviews")
    model = TextModel.load(version_dir, config, ModelInfo.read(version_dir))
    ids, _ = model.tokeniser.encode(test.texts)
    for name in TOKEN_INPUTS:
        np.testing.assert_array_equal(ids[name], getattr(test, name))
    # and over HTTP: the test split's texts give ONNX Runtime's logits on the stored test ids
    expected = text_build.reference(test.inputs())
    got = client.infer("reviews", [_text_input(test.texts)]).as_numpy("logits")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_model_metadata_advertises_one_text_input(client, text_build):
    meta = client.get_model_metadata("reviews")
    assert meta["inputs"][0]["name"] == "text" and len(meta["inputs"]) == 1
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["inputs"][0]["shape"] == [-1, 1]
    assert meta["inputs"][0]["parameters"]["max_length"] == MAX_LENGTH
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, len(text_build.class_names)]},
                               {"name": "label", "datatype": "BYTES", "shape": [-1]}]
    assert [t["name"] for t in meta["parameters"]["token_inputs"]] == TOKEN_INPUTS
    assert meta["parameters"]["class_names"] == text_build.class_names
    config = client.get_model_config("reviews")  # Triton's config: the token inputs, unchanged
    assert [i["name"] for i in config["input"]] == TOKEN_INPUTS


def test_token_ids_as_a_triton_client_sends_them(client, text_build):
    feed = _ids(text_build, THREE[:2])
    feed = {n: np.pad(a, ((0, 0), (0, 5))) for n, a in feed.items()}  # extra padding columns are fine
    result = client.infer("reviews", _token_inputs(feed))
    np.testing.assert_allclose(result.as_numpy("logits"), text_build.reference(_ids(text_build, THREE[:2])),
                               rtol=1e-4, atol=1e-5)
    assert result.get_response()["parameters"] == {"truncated": [], "max_length": MAX_LENGTH}


def test_probabilities_and_the_classification_extension(client, text_build):
    result = client.infer("reviews", [_text_input(THREE)], parameters={"probabilities": True},
                          outputs=[httpclient.InferRequestedOutput("logits", class_count=1),
                                   httpclient.InferRequestedOutput("probabilities")])
    expected = text_build.reference(_ids(text_build, THREE))
    top = [v.decode().split(":")[2] for v in result.as_numpy("logits").reshape(-1)]
    assert top == _labels(text_build, expected)
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------ mixed lengths, concurrently

def test_two_hundred_concurrent_requests_of_mixed_lengths(server, client, text_build):
    words = " ".join(load_text_dataset(str(text_build.dataset)).train.texts).split()
    rng = random.Random(7)
    requests = []
    for i in range(200):
        rows = rng.choice((1, 1, 1, 2, 3))
        strings = [" ".join(rng.choice(words) for _ in range(rng.randint(1, MAX_LENGTH + 20))) for _ in range(rows)]
        requests.append((strings, i % 5 == 4))  # every fifth sends token ids, as a Triton client would
    before = client.get_inference_statistics("reviews")["model_stats"][0]

    async def run():
        import tritonclient.http.aio as aioclient

        aio = aioclient.InferenceServerClient(server.host, conn_limit=200)
        try:
            async def one(strings, as_ids):
                inputs = _token_inputs(_ids(text_build, strings)) if as_ids else [_text_input(strings)]
                return await aio.infer("reviews", inputs)
            return await asyncio.wait_for(asyncio.gather(*[one(s, t) for s, t in requests]), 60)
        finally:
            await aio.close()

    results = asyncio.run(run())
    for (strings, as_ids), result in zip(requests, results):
        feed = _ids(text_build, strings)
        expected = text_build.reference(feed)  # each request alone, padded to its own longest row
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)
        truncated = result.get_response()["parameters"]["truncated"]
        cut = tokenize(strings, load_tokenizer(text_build.tokenizer), MAX_LENGTH)["truncated"]
        assert truncated == ([] if as_ids else np.flatnonzero(cut).tolist())
    after = client.get_inference_statistics("reviews")["model_stats"][0]
    rows = after["inference_count"] - before["inference_count"]
    batches = after["execution_count"] - before["execution_count"]
    assert rows == sum(len(s) for s, _ in requests) and batches < rows, (rows, batches)  # batches formed
    assert client.is_server_ready()


# ------------------------------------------------------------------ bad input: 400, and it keeps serving

def _json_text(data, shape=None, name="text", datatype="BYTES") -> bytes:
    shape = shape if shape is not None else [len(data)]
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}).encode()


def _binary_text(raw: bytes, shape) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape,
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def _tokens_json(ids, mask, types=None) -> bytes:
    ids, mask = np.asarray(ids), np.asarray(mask)
    types = np.zeros_like(ids) if types is None else np.asarray(types)
    return json.dumps({"inputs": [{"name": n, "datatype": "INT64", "shape": list(a.shape), "data": a.ravel().tolist()}
                                  for n, a in zip(TOKEN_INPUTS, (ids, mask, types))]}).encode()


BAD = [
    ("non-UTF-8 bytes", *_binary_text(b"\x02\x00\x00\x00ok\x03\x00\x00\x00\xff\xfeA", [2]), "row 1 is not valid UTF-8"),
    ("an empty string", _json_text(["fine", ""]), {}, "row 1 is empty"),
    ("only whitespace", _json_text(["   "]), {}, "row 0 is empty"),
    ("a number among the strings", _json_text(["fine", 3]), {}, "element 1 is a JSON number"),
    ("null among the strings", _json_text([None]), {}, "element 0 is a JSON null"),
    ("data not a list", _json_text("fine", [1]), {}, "must be a list of strings"),
    ("wrong shape", _json_text(["a", "b"], [1, 2]), {}, "shape [1, 2]"),
    ("three dimensions", _json_text(["a"], [1, 1, 1]), {}, "shape [1, 1, 1]"),
    ("count not matching the shape", _json_text(["a", "b"], [3]), {}, "has 2 strings but shape [3] needs 3"),
    ("no texts", _json_text([], [0]), {}, "no texts"),
    ("no texts in absurd dimensions", _json_text([], [2**40, 0, 2**40]), {}, "too large to describe"),
    ("no binary texts in absurd dimensions", *_binary_text(b"", [0, 2**40, 2**40]), "too large to describe"),
    ("text sent as numbers", _json_text([1, 2], [2], datatype="INT64"), {}, "must be a BYTES tensor"),
    ("another input name", _json_text(["a"], name="sentence"), {}, "takes texts as input 'text'"),
    ("BYTES lengths not adding up", *_binary_text(b"\x09\x00\x00\x00ok", [1]), "says 9 bytes but only 2 remain"),
    ("more rows than max_batch_size", _json_text(["a dog"] * 65), {}, "exceeds max_batch_size 64"),
    ("a token id past the vocabulary", _tokens_json([[2, 999, 3]], [[1, 1, 1]]), {}, "input_ids[0, 1] is 999"),
    ("a negative token id", _tokens_json([[2, -1, 3]], [[1, 1, 1]]), {}, "input_ids[0, 1] is -1"),
    ("more tokens than max_length", _tokens_json([[5] * (MAX_LENGTH + 1)], [[1] * (MAX_LENGTH + 1)]), {},
     f"at most max_length {MAX_LENGTH}"),
    ("a mask that is not 0/1", _tokens_json([[2, 5, 3]], [[1, 2, 1]]), {}, "only 0 (padding) and 1"),
    ("segment ids past 1", _tokens_json([[2, 5, 3]], [[1, 1, 1]], [[0, 7, 0]]), {}, "token_type_ids must be below 2"),
    ("an empty sequence", _tokens_json(np.zeros((1, 0), int), np.zeros((1, 0), int)), {}, "no tokens"),
    ("token ids as INT32", json.dumps({"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 2], "data": [2, 3]}
                                                  for n in TOKEN_INPUTS]}).encode(), {}, "expects INT64"),
    ("token inputs missing one", json.dumps({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2],
                                                        "data": [2, 3]}]}).encode(), {}, "or the token inputs"),
]


@pytest.mark.parametrize("name,body,headers,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_naming_the_problem_and_the_server_keeps_serving(server, client, name, body, headers,
                                                                            fragment):
    code, _, raw = server.post("/v2/models/reviews/infer", body, headers)
    assert code == 400, raw
    assert fragment in json.loads(raw)["error"]
    assert client.infer("reviews", [_text_input(["a fine kettle"])]).as_numpy("label").shape == (1,)


def test_tritonclient_sees_the_message(client):
    with pytest.raises(InferenceServerException, match="row 0 is not valid UTF-8") as info:
        client.infer("reviews", [_text_input([b"\xc3\x28 broken"])])
    assert info.value.status() == "400"


# ------------------------------------------------------------------ Vertex AI's predict route

def test_vertex_instances_objects_and_bare_strings(text_build, tmp_path):
    deploy_text(tmp_path / "repo", text_build, max_batch_size=4)  # 10 instances: split into batches of 4
    port = free_port()
    env = {"AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": "/health", "AIP_PREDICT_ROUTE": "/predict",
           "AIP_STORAGE_URI": str(tmp_path / "repo")}
    server = start_server(None, tmp_path, "--poll-seconds", "0", env=env, port=port)
    try:
        texts = [THREE[i % 3] + f" #{i}" for i in range(10)]  # 2, 5 and 8 are past max_length
        expected = text_build.reference(_ids(text_build, texts))
        for instances in ([{"text": t} for t in texts], texts):
            code, _, raw = server.post("/predict", json.dumps({"instances": instances}).encode())
            assert code == 200, raw
            doc = json.loads(raw)
            np.testing.assert_allclose([p["logits"] for p in doc["predictions"]], expected, rtol=1e-4, atol=1e-5)
            assert [p["label"] for p in doc["predictions"]] == _labels(text_build, expected)
            assert [i for i, p in enumerate(doc["predictions"]) if p["truncated"]] == [2, 5, 8]
            assert doc["parameters"] == {"truncated": [2, 5, 8], "max_length": MAX_LENGTH}
        code, _, raw = server.post("/predict", json.dumps({"instances": texts[:2],
                                                           "parameters": {"probabilities": True}}).encode())
        assert code == 200 and len(json.loads(raw)["predictions"][0]["probabilities"]) == len(text_build.class_names)
        for instances, fragment in (([{"txt": "a"}], "instances[0] has no 'text' key"),
                                    (["a", 5], "instances[1] is a JSON number"),
                                    ([{"text": ""}], "row 0 is empty"), ([], "non-empty list")):
            code, _, raw = server.post("/predict", json.dumps({"instances": instances}).encode())
            assert code == 400 and fragment in json.loads(raw)["error"], raw
        code, _, raw = server.post("/predict", _json_text(["a dog"]))  # a v2 body on the predict route
        assert code == 200 and json.loads(raw)["parameters"] == {"truncated": [], "max_length": MAX_LENGTH}
        assert server.get("/health")[0] == 200
    finally:
        stop_server(server)


# ------------------------------------------------------------------ hot reload

def test_version_swap_under_load_and_a_tokenizer_fixed_later(text_build, tmp_path):
    repo = tmp_path / "repo"
    deploy_text(repo, text_build, max_batch_size=16)
    server = start_server(repo, tmp_path, "--poll-seconds", "0.2")
    client = httpclient.InferenceServerClient(server.host)
    versions = lambda: client.get_model_metadata("reviews")["versions"]  # noqa: E731
    try:
        expected = text_build.reference(_ids(text_build, THREE))
        swapped = list(reversed(text_build.class_names))  # version 2: same graph, class names reversed

        async def load_during_swap():
            import tritonclient.http.aio as aioclient

            aio = aioclient.InferenceServerClient(server.host)
            answers = []
            try:
                add_version(repo, "reviews", text_build, meta_for(swapped, MAX_LENGTH))
                deadline = time.time() + 30
                while time.time() < deadline and (len(answers) < 50 or answers[-1][0] != "2"):
                    r = await aio.infer("reviews", [_text_input(THREE)])
                    answers.append((r.get_response()["model_version"], r.as_numpy("logits"), r.as_numpy("label")))
            finally:
                await aio.close()
            return answers

        answers = asyncio.run(load_during_swap())
        assert answers[-1][0] == "2" and versions() == ["2"]
        for version, logits, labels in answers:  # every request answered, by one version or the other
            np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
            names = text_build.class_names if version == "1" else swapped
            assert [v.decode() for v in labels] == [names[i] for i in expected.argmax(axis=1)]

        broken = add_version(repo, "reviews", text_build, meta_for(text_build.class_names, MAX_LENGTH),
                             tokenizer=False)
        assert wait_for(lambda: any(e["state"] == "UNAVAILABLE" for e in client.get_model_repository_index()))
        failed = [e for e in client.get_model_repository_index() if e["state"] == "UNAVAILABLE"]
        assert failed[0]["version"] == "3" and "no tokenizer/ folder" in failed[0]["reason"]
        assert client.infer("reviews", [_text_input(THREE)]).get_response()["model_version"] == "2"

        add_tokenizer(broken, text_build)  # the fix: retried because the tokenizer files changed
        assert wait_for(lambda: versions() == ["3"])
        result = client.infer("reviews", [_text_input(THREE)])
        assert [v.decode() for v in result.as_numpy("label")] == _labels(text_build, expected)
        assert client.get_model_repository_index() == [{"name": "reviews", "version": "3", "state": "READY",
                                                        "reason": ""}]
    finally:
        client.close()
        stop_server(server)
