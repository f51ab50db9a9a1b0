"""Text datasets: sources, the trained tokenizer, tokenize() against the stored ids, bad input."""

import json

import numpy as np
import pytest

from modelpress.core.errors import ModelpressError
from modelpress.data.text import load_text_dataset, make_text_dataset, synthetic_reviews, write_reviews
from modelpress.data.tokenizer import tokenize

N = 300  # small: the tokenizer trains in milliseconds, the suite stays well under 20 s


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    csv_path = write_reviews(str(root / "reviews.csv"), N, seed=1)
    jsonl_path = write_reviews(str(root / "reviews.jsonl"), N, seed=1)
    a = make_text_dataset(csv_path, str(root / "a"), vocab_size=500, max_length=24, log=quiet)
    b = make_text_dataset(jsonl_path, str(root / "b"), vocab_size=500, max_length=24, log=quiet)
    return root, a, b


def test_csv_and_jsonl_make_the_same_splits(built):
    root, a, b = built
    da, db = load_text_dataset(str(root / "a")), load_text_dataset(str(root / "b"))
    for name in ("train", "validation", "test"):
        sa, sb = getattr(da, name), getattr(db, name)
        assert sa.texts == sb.texts
        for key in ("input_ids", "attention_mask", "token_type_ids", "lengths", "full_lengths", "y"):
            np.testing.assert_array_equal(getattr(sa, key), getattr(sb, key))
    assert (root / "a" / "tokenizer" / "tokenizer.json").read_bytes() == \
        (root / "b" / "tokenizer" / "tokenizer.json").read_bytes()
    assert {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in b.items() if k != "source"}


def test_schema_and_arrays(built):
    root, schema, _ = built
    assert schema["input_kind"] == "text" and schema["task"] == "classification"
    assert schema["class_names"] == ["negative", "positive"] and schema["num_outputs"] == 2
    assert sum(schema["splits"].values()) == N and schema["max_length"] == 24
    stats = schema["token_lengths"]
    assert stats["min"] <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    ds = load_text_dataset(str(root / "a"))
    for split in (ds.train, ds.validation, ds.test):
        assert split.input_ids.dtype == np.int64 and split.input_ids.shape[1] == split.lengths.max() <= 24
        np.testing.assert_array_equal(split.attention_mask.sum(1), split.lengths)
    rows = [json.loads(x) for x in (root / "a" / "test_text.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ds.test.texts and [r["y"] for r in rows] == ds.test.y.tolist()


def test_tokenize_matches_the_stored_test_ids_and_transformers(built):
    root, schema, _ = built
    ds = load_text_dataset(str(root / "a"))
    out = tokenize(ds.test.texts, ds.tokenizer_dir, ds.max_length)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(out[key], getattr(ds.test, key))
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    file = root / "a" / "tokenizer" / "tokenizer.json"
    assert Tokenizer.from_file(str(file)).get_vocab_size() == schema["vocab_size"]
    hf = PreTrainedTokenizerFast(tokenizer_file=str(file), pad_token="[PAD]")
    enc = hf(ds.test.texts, padding=True, truncation=True, max_length=ds.max_length, return_tensors="np")
    np.testing.assert_array_equal(enc["input_ids"], ds.test.input_ids)


def test_trained_on_the_training_split_only(tmp_path):
    # each row gets a word of its own; with room for every word, the vocabulary learns the
    # training rows' words whole and never a test row's
    rows = synthetic_reviews(120, seed=3)
    words = ["zz" + "".join("abcdefghij"[int(d)] for d in f"{i:03d}") for i in range(len(rows))]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps({"text": f"{t} {w}", "label": lab}) + "\n"
                            for (t, lab), w in zip(rows, words)))
    make_text_dataset(str(path), str(tmp_path / "d"), vocab_size=20000, max_length=64, log=quiet)
    ds = load_text_dataset(str(tmp_path / "d"))
    vocab = json.loads((tmp_path / "d" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    train = {t.split()[-1] for t in ds.train.texts}
    test = {t.split()[-1] for t in ds.test.texts}
    assert train <= set(vocab) and not test & set(vocab)


def test_truncation_is_recorded(built):
    root, schema, _ = built
    ds = load_text_dataset(str(root / "a"))
    long_text = " ".join(["the battery is great"] * 20)
    out = tokenize([long_text, "great"], ds.tokenizer_dir, 16)
    assert out["truncated"].tolist() == [True, False]
    assert out["lengths"].tolist()[0] == 16 and out["full_lengths"][0] > 16
    assert out["input_ids"][0, -1] == 3 and out["input_ids"][0, 0] == 2  # [SEP] kept, [CLS] first
    assert out["input_ids"].shape == (2, 16) and out["attention_mask"][1].sum() == 3
    assert schema["token_lengths"]["truncated_rows"] == int((ds.train.full_lengths > 24).sum()) > 0


def test_deterministic_for_a_seed(built, tmp_path):
    root, a, _ = built
    again = make_text_dataset(write_reviews(str(tmp_path / "r.csv"), N, seed=1), str(tmp_path / "d"),
                              vocab_size=500, max_length=24, log=quiet)
    assert {k: v for k, v in again.items() if k != "source"} == {k: v for k, v in a.items() if k != "source"}
    assert (tmp_path / "d" / "tokenizer" / "tokenizer.json").read_bytes() == \
        (root / "a" / "tokenizer" / "tokenizer.json").read_bytes()
    x, y = load_text_dataset(str(tmp_path / "d")), load_text_dataset(str(root / "a"))
    np.testing.assert_array_equal(x.train.input_ids, y.train.input_ids)
    other = make_text_dataset(str(tmp_path / "r.csv"), str(tmp_path / "e"), vocab_size=500, max_length=24,
                              seed=7, log=quiet)
    assert load_text_dataset(str(tmp_path / "e")).test.texts != y.test.texts and other["seed"] == 7


def test_user_tokenizer_folder(built, tmp_path):
    root, _, _ = built
    schema = make_text_dataset(str(root / "reviews.csv"), str(tmp_path / "d"),
                               tokenizer=str(root / "a" / "tokenizer"), max_length=24, log=quiet)
    assert schema["tokenizer"]["source"] == str(root / "a" / "tokenizer")
    np.testing.assert_array_equal(load_text_dataset(str(tmp_path / "d")).test.input_ids,
                                  load_text_dataset(str(root / "a")).test.input_ids)


@pytest.mark.parametrize("content,suffix,kwargs,expect", [
    (b"review,label\nnice,positive\n", ".csv", {}, "text column 'text' is not in .*\\['review', 'label'\\]"),
    (b'{"body": "x", "label": "a"}\n', ".jsonl", {}, "text column 'text' is not in .* line 1.*\\['body', 'label'\\]"),
    (b"text,label\ngood,positive\ncaf\xe9 bad,negative\n", ".csv", {}, "line 3: byte 0xe9 is not UTF-8"),
    (b"text,label\ngood,positive\n  ,negative\n", ".csv", {}, "line 3: the text \\('text'\\) is empty"),
    (b"", ".csv", {}, "is empty"),
    (b"\n\n", ".jsonl", {}, "is empty"),
    (b"text,label\ngood,positive\n", ".csv", {"label_column": "y"}, "label column 'y' is not in"),
])
def test_bad_sources(tmp_path, content, suffix, kwargs, expect):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(ModelpressError, match=expect):
        make_text_dataset(str(path), str(tmp_path / "out"), log=quiet, **kwargs)
    assert not (tmp_path / "out").exists()


def test_tokenizer_folder_without_vocabulary(built, tmp_path):
    root, _, _ = built
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ModelpressError, match="has no vocabulary: expected tokenizer.json"):
        make_text_dataset(str(root / "reviews.csv"), str(tmp_path / "out"), tokenizer=str(folder), log=quiet)


def test_tokenize_rejects_bad_texts(built):
    root, _, _ = built
    tok = str(root / "a" / "tokenizer")
    with pytest.raises(ModelpressError, match="text 1 is not valid UTF-8"):
        tokenize(["fine", b"caf\xe9"], tok, 16)
    with pytest.raises(ModelpressError, match="text 0 is empty"):
        tokenize(["  "], tok, 16)
    assert tokenize([b"great"], tok, 16)["input_ids"].tolist() == tokenize(["great"], tok, 16)["input_ids"].tolist()


def test_synthetic_reviews_are_balanced_and_deterministic():
    rows = synthetic_reviews(400, seed=5)
    assert rows == synthetic_reviews(400, seed=5) and rows != synthetic_reviews(400, seed=6)
    share = sum(lab == "positive" for _, lab in rows) / len(rows)
    assert 0.35 < share < 0.65 and len({t for t, _ in rows}) > 390


def test_jsonl_texts_may_hold_unicode_line_separators(tmp_path):
    import json as _json

    rows = [{"text": f"first part\u2028second {i}\x0cthird", "label": "ab"[i % 2]} for i in range(30)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(_json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    from modelpress.data.text import load_text_source

    source = load_text_source(str(path))
    assert len(source.texts) == 30 and "\u2028" in source.texts[0]


def test_a_text_longer_than_the_csv_field_limit_is_read(tmp_path):
    from modelpress.data.text import load_text_source

    long = "word " * 40000  # 200,000 characters: past csv's default 131,072
    (tmp_path / "t.csv").write_text("text,label\n" + f'"{long}",a\n' + "short,b\n")
    assert len(load_text_source(str(tmp_path / "t.csv")).texts[0]) == len(long)
