"""Serving text without a server: BYTES tensors and Vertex instances to strings, the version's
own tokenizer (ids equal to training's), merging token batches of different lengths for the
dynamic batcher, and a tiny BERT in ONNX Runtime giving the same logits batched or alone."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import numpy as np
import orjson
import pytest

from modelpress.data.tokenizer import load_tokenizer, save_tokenizer, tokenize, train_tokenizer
from modelpress.serving import protocol, text
from modelpress.serving.errors import ClientError, ServerError
from modelpress.serving.protocol import bytes_array

WORDS = ("the cat sat on mat a dog ran in park cheap flights to paris now win free prize today weather "
         "is mild and dry stocks fell sharply monday quickly over lazy brown fox jumps").split()
MAX_LENGTH = 24
CLASSES = ["ham", "spam", "news"]


def _texts(n: int, seed: int, low: int = 2, high: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory) -> Path:
    """A fake deployed version: tokenizer/ trained on synthetic texts and saved as the data step saves it."""
    folder = tmp_path_factory.mktemp("repo") / "textmodel" / "1"
    tok = train_tokenizer(_texts(200, seed=0), vocab_size=120)
    save_tokenizer(tok, folder / "tokenizer", pad_id=tok.token_to_id("[PAD]"), max_length=MAX_LENGTH)
    (folder / "meta.json").write_text(json.dumps({"class_names": CLASSES, "max_length": MAX_LENGTH}))
    return folder


@pytest.fixture(scope="module")
def tokeniser(version_dir) -> text.TextTokeniser:
    return text.TextTokeniser(version_dir)


def _tritonclient_body(strings: list[str], shape, binary: bool) -> tuple[bytes, int | None]:
    """The exact infer body tritonclient.http sends for a BYTES input."""
    import tritonclient.http as httpclient
    from tritonclient.http._utils import _get_inference_request

    inp = httpclient.InferInput("text", list(shape), "BYTES")
    inp.set_data_from_numpy(np.array([s.encode() for s in strings], dtype=object).reshape(shape), binary_data=binary)
    return _get_inference_request([inp], "", None, 0, False, False, 0, None, None)


def _decode_tritonclient(body: bytes, header: int | None) -> np.ndarray:
    """What the server does with it: protocol.parse_infer for a model that takes texts."""
    assert orjson.loads(body[:header] if header else body)["inputs"][0]["datatype"] == text.TEXT_DATATYPE
    req = protocol.parse_infer(body, None if header is None else str(header), bytes_inputs=True)
    return req.inputs["text"]


def test_bytes_are_refused_by_a_model_that_takes_no_texts():
    body, header = _tritonclient_body(["a dog"], (1,), binary=False)
    with pytest.raises(ClientError, match="unsupported datatype 'BYTES': this model takes no texts"):
        protocol.parse_infer(body, header)


# ------------------------------------------------------------------ tokenisation matches training

@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_bytes_tensor_of_three_strings_matches_training_ids(tokeniser, version_dir, binary, shape):
    strings = ["the cat sat on the mat", "Cheap flights to Paris — now!", "é ünïcode dog"]
    array = _decode_tritonclient(*_tritonclient_body(strings, shape, binary))
    assert array.shape == shape and array.dtype == object
    texts = text.texts_from_tensor(array)
    assert texts == strings
    inputs, truncated = tokeniser.encode(texts)
    expected = tokenize(strings, load_tokenizer(version_dir / "tokenizer"), MAX_LENGTH)
    assert truncated == []
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    for name, value in inputs.items():
        assert value.dtype == np.int64 and value.shape[0] == 3
        np.testing.assert_array_equal(value, expected[name])
    assert inputs["input_ids"].shape[1] == int(expected["lengths"].max())  # padded to this batch only


def test_input_names_follow_the_model(version_dir):
    distil = text.TextTokeniser(version_dir, MAX_LENGTH, input_names=["input_ids", "attention_mask"])
    inputs, _ = distil.encode(["a dog ran"])
    assert list(inputs) == ["input_ids", "attention_mask"]


def test_over_max_length_is_truncated_and_reported(tokeniser):
    long = " ".join(["the cat sat on the mat"] * 20)
    inputs, truncated = tokeniser.encode(["a dog", long, "win a prize", long])
    assert truncated == [1, 3]
    assert inputs["input_ids"].shape[1] == MAX_LENGTH
    assert tokeniser.parameters(truncated) == {"truncated": [1, 3], "max_length": MAX_LENGTH}
    _, none = tokeniser.encode(["a dog"])
    assert tokeniser.parameters(none) == {"truncated": [], "max_length": MAX_LENGTH}


def test_encode_async_runs_off_the_loop_and_concurrently(tokeniser):
    batches = [_texts(16, seed=s) for s in range(8)]

    async def main():
        return await asyncio.gather(*[tokeniser.encode_async(b) for b in batches])

    results = asyncio.run(main())
    for b, (inputs, _) in zip(batches, results):
        np.testing.assert_array_equal(inputs["input_ids"], tokeniser.encode(b)[0]["input_ids"])


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("values, needle", [
    ([b"fine", b"\xff\xfe bad", b"ok"], "row 1 is not valid UTF-8"),
    ([b"fine", b"", b"ok"], "row 1 is empty"),
    (["fine", "ok", "   "], "row 2 is empty"),
    ([b"fine", 7], "row 1 is a int"),
])
def test_bad_rows_are_client_errors_naming_the_row(tokeniser, values, needle):
    with pytest.raises(ClientError, match=needle) as info:
        text.texts_from_tensor(_object(values))
    assert info.value.status == 400
    with pytest.raises(ClientError, match=needle):
        tokeniser.encode(values)


def _object(values):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@pytest.mark.parametrize("make, needle", [
    (lambda: np.zeros((2, 3), dtype=np.float32), "must be a BYTES tensor"),
    (lambda: bytes_array([b"a", b"b", b"c", b"d"], (2, 2)), r"shape \[2, 2\]"),
    (lambda: _object([]), "no texts"),
])
def test_bad_tensors(make, needle):
    with pytest.raises(ClientError, match=needle):
        text.texts_from_tensor(make())


@pytest.mark.parametrize("data, shape, needle", [
    (["a", 3, "c"], [3], "element 1 is a JSON number"),
    (["a", None], [2], "element 1 is a JSON null"),
    (["a", "b"], [3], "has 2 strings but shape"),
    ("abc", [1], "must be a list of strings"),
])
def test_bad_json_bytes(data, shape, needle):
    with pytest.raises(ClientError, match=needle):
        text.bytes_tensor_from_json(data, shape, "input 'text'")


@pytest.mark.parametrize("raw, shape, needle", [
    (b"\x03\x00\x00\x00ab", [1], "says 3 bytes but only 2 remain"),
    (b"\x01\x00\x00\x00a\x01\x00", [2], "cut off inside its 4-byte"),
    (b"\x01\x00\x00\x00a\x01\x00\x00\x00b", [1], "more than the 1 element"),
    (b"\x01\x00\x00\x00a", [2], "holds 1 element"),
])
def test_bad_binary_bytes(raw, shape, needle):
    with pytest.raises(ClientError, match=needle):
        text.bytes_tensor_from_binary(raw, shape, "input 'text'")


def test_vertex_instances():
    assert text.texts_from_instances([{"text": "a dog"}, {"text": "the cat"}]) == ["a dog", "the cat"]
    assert text.texts_from_instances(["a dog", "the cat"]) == ["a dog", "the cat"]


@pytest.mark.parametrize("instances, needle", [
    ([], "non-empty list"),
    ({"text": "a"}, "non-empty list"),
    ([{"txt": "a"}], r"instances\[0\] has no 'text' key"),
    (["a", ["b"]], r"instances\[1\] is a JSON array"),
    (["a", 5], r"instances\[1\] is a JSON number"),
    ([{"text": 5}], r"instances\[0\].text is a JSON number"),
    ([{"text": "a"}, {"text": ""}], "row 1 is empty"),
])
def test_wrong_vertex_shapes(instances, needle):
    with pytest.raises(ClientError, match=needle):
        text.texts_from_instances(instances)


def test_a_version_without_a_tokenizer_is_a_load_error(tmp_path):
    from modelpress.core.errors import ModelpressError
    with pytest.raises(ModelpressError, match="no tokenizer/ folder"):
        text.TextTokeniser(tmp_path, MAX_LENGTH)


# ------------------------------------------------------------------ batching

def _tokens(rows: int, length: int, pad_id: int = 0, seed: int = 0):
    """Right-padded token rows; the longest is exactly `length`, the array 3 columns wider."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, size=rows)
    lengths[0] = length
    width = length + 3
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(5, 100, size=(rows, width)), pad_id).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_merge_pads_to_the_longest_and_splits_back_exactly():
    a, b = _tokens(2, 5, pad_id=1, seed=1), _tokens(3, 12, pad_id=1, seed=2)
    assert text.text_batch_key(a) == text.text_batch_key(b)  # may share a batch despite lengths 8 vs 15
    feed, slices = text.merge_token_batches([a, b], pad_id=1)
    assert {k: v.shape for k, v in feed.items()} == {k: (5, 12) for k in a}
    assert slices == [slice(0, 2), slice(2, 5)]
    for src, s in zip((a, b), slices):
        for name in a:
            width = src[name].shape[1]
            np.testing.assert_array_equal(feed[name][s, :min(width, 12)], src[name][:, :12])
            if width < 12:
                assert (feed[name][s, width:] == (1 if name == "input_ids" else 0)).all()
    logits = np.arange(15, dtype=np.float32).reshape(5, 3)
    parts = text.split_outputs({"logits": logits}, slices)
    np.testing.assert_array_equal(np.concatenate([p["logits"] for p in parts]), logits)
    assert [len(p["logits"]) for p in parts] == [2, 3]


def test_merge_refuses_mismatched_inputs():
    a = _tokens(2, 5)
    with pytest.raises(ValueError, match="different inputs"):
        text.merge_token_batches([a, {"input_ids": a["input_ids"]}])
    with pytest.raises(ValueError, match=r"shape \[4, 2\], not 5 rows"):
        text.split_outputs({"logits": np.zeros((4, 2))}, [slice(0, 2), slice(2, 5)])


def test_text_outputs():
    logits = np.array([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0]], dtype=np.float32)
    out = text.text_outputs(logits, CLASSES)
    assert list(out) == ["logits", "label"]
    assert out["label"].tolist() == [b"spam", b"ham"]
    assert list(text.text_outputs(logits, [])) == ["logits"]
    with pytest.raises(ServerError, match="3 classes but its meta.json lists 2"):
        text.text_outputs(logits, ["a", "b"])


# ------------------------------------------------------------------ end to end in ONNX Runtime

def test_tiny_bert_logits_equal_batched_or_alone(tokeniser, version_dir):
    import onnxruntime as ort

    from modelpress.export.text_export import export_text_onnx
    from modelpress.models.text import bert_from_config

    vocab = load_tokenizer(version_dir / "tokenizer").tokenizer.get_vocab_size()
    model = bert_from_config(vocab, len(CLASSES), layers=2, hidden=32, heads=2, intermediate=64,
                             max_position=MAX_LENGTH, seed=3)
    export_text_onnx(model, str(version_dir / "model.onnx"), max_length=MAX_LENGTH)
    sess = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    requests = [_texts(2, 10, 1, 2), _texts(3, 11, 8, 12), ["a dog"],
                [" ".join(["the cat sat on the mat"] * 10)]]  # short, long, one row, truncated
    encoded = [tokeniser.encode(r) for r in requests]
    assert encoded[3][1] == [0]
    alone = [sess.run(["logits"], {n: e[0][n] for n in names})[0] for e in encoded]
    feed, slices = text.merge_token_batches([{n: e[0][n] for n in names} for e in encoded],
                                            pad_id=tokeniser.pad_id)
    assert feed["input_ids"].shape == (7, MAX_LENGTH)
    merged = text.split_outputs({"logits": sess.run(["logits"], feed)[0]}, slices)
    for one, together in zip(alone, merged):
        np.testing.assert_allclose(together["logits"], one, atol=1e-4, rtol=0)
    # the short requests alone, merged: padded only to their own longest row
    feed2, _ = text.merge_token_batches([{n: encoded[i][0][n] for n in names} for i in (0, 2)],
                                        pad_id=tokeniser.pad_id)
    assert feed2["input_ids"].shape[1] == max(encoded[i][0]["input_ids"].shape[1] for i in (0, 2))
    out = text.text_outputs(merged[1]["logits"], CLASSES)
    assert out["label"].shape == (3,) and {v.decode() for v in out["label"]} <= set(CLASSES)


def test_a_huge_text_is_cut_before_it_is_tokenised(tokeniser):
    import time

    huge = "the cat sat on the mat " * 200_000  # 4.6 MB: whole, it took seconds and gigabytes
    t0 = time.perf_counter()
    inputs, truncated = tokeniser.encode([huge, "a dog ran"])
    assert time.perf_counter() - t0 < 2.0
    assert truncated == [0] and inputs["input_ids"].shape == (2, MAX_LENGTH)
    assert (tokeniser.encode([huge[: text.CHARS_PER_TOKEN * MAX_LENGTH]])[0]["input_ids"][0]
            == inputs["input_ids"][0]).all()  # the same ids as the text cut at the limit
