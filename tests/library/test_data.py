import json

import numpy as np
import pytest

from modelpress import data
from modelpress.core.errors import ModelpressError


def _write_csv(path, rows, header="f1,f2,label"):
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return str(path)


def _blobs(n_per_class=20, classes=("a", "b", "c"), seed=0):
    rng = np.random.default_rng(seed)
    x, y = [], []
    for i, c in enumerate(classes):
        x.append(rng.normal(i * 3.0, 0.5, size=(n_per_class, 2)))
        y += [c] * n_per_class
    return np.concatenate(x), np.array(y)


def test_digits_native_and_schema(tmp_path):
    schema = data.make_dataset("digits", str(tmp_path / "d"), seed=3)
    ds = data.load_dataset(str(tmp_path / "d"))
    assert schema["feature_shape"] == [1, 8, 8]
    assert ds.class_names == [str(i) for i in range(10)]
    assert sum(schema["splits"].values()) == 1797
    saved = json.loads((tmp_path / "d" / "schema.json").read_text())
    for key in ("task", "feature_shape", "dtype", "class_names", "normalisation", "source", "seed"):
        assert key in saved
    assert saved["seed"] == 3 and saved["source"] == "digits"
    # the splits hold raw pixels, as scikit-learn ships them (what a client sends) ...
    assert ds.train.x.min() == 0 and ds.train.x.max() == 16
    assert saved["input"]["value_range"] == [0.0, 16.0] and saved["input"]["layout"] == "NCHW"
    # ... and the training split's statistics, which the model applies, centre it
    norm = saved["normalisation"]
    centred = (ds.train.x - np.array(norm["mean"]).reshape(1, -1, 1, 1)) / np.array(norm["std"]).reshape(1, -1, 1, 1)
    assert abs(float(centred.mean())) < 1e-4 and abs(float(centred.std()) - 1) < 1e-3
    assert ds.train.x.dtype == np.float32 and ds.test.y.dtype == np.int64


def test_digits_resize(tmp_path):
    schema = data.make_dataset("digits", str(tmp_path / "d"), image_size=32)
    ds = data.load_dataset(str(tmp_path / "d"))
    assert schema["feature_shape"] == [1, 32, 32]
    assert ds.train.x.shape[1:] == (1, 32, 32)


def test_splits_are_deterministic_stratified_and_disjoint(tmp_path):
    data.make_dataset("digits", str(tmp_path / "a"), seed=7)
    data.make_dataset("digits", str(tmp_path / "b"), seed=7)
    data.make_dataset("digits", str(tmp_path / "c"), seed=8)
    a, b, c = (data.load_dataset(str(tmp_path / k)) for k in "abc")
    assert np.array_equal(a.test.x, b.test.x) and np.array_equal(a.train.y, b.train.y)
    assert not np.array_equal(a.test.x, c.test.x)
    # stratified: every class's share of the test split is within 2 points of the whole
    whole = np.bincount(np.concatenate([a.train.y, a.validation.y, a.test.y])) / 1797
    test_share = np.bincount(a.test.y) / len(a.test.y)
    assert np.abs(whole - test_share).max() < 0.02
    # disjoint: no test row also appears in train
    train_rows = {r.tobytes() for r in a.train.x}
    overlap = sum(r.tobytes() in train_rows for r in a.test.x)
    assert overlap < 5  # digits has a few duplicate images, not whole splits


def test_csv_source(tmp_path):
    x, y = _blobs()
    path = _write_csv(tmp_path / "d.csv", [[*row, label] for row, label in zip(x, y)])
    schema = data.make_dataset(path, str(tmp_path / "out"), label_column="label")
    assert schema["class_names"] == ["a", "b", "c"]
    assert schema["feature_shape"] == [2]
    assert schema["input_kind"] == "tabular"


def test_npz_source_tabular_and_image(tmp_path):
    x, y = _blobs()
    np.savez(tmp_path / "t.npz", x=x, y=y)
    assert data.make_dataset(str(tmp_path / "t.npz"), str(tmp_path / "o1"))["feature_shape"] == [2]
    imgs = np.random.default_rng(0).random((60, 6, 6))
    np.savez(tmp_path / "i.npz", x=imgs, y=np.repeat([0, 1, 2], 20))
    schema = data.make_dataset(str(tmp_path / "i.npz"), str(tmp_path / "o2"), image_size=12)
    assert schema["feature_shape"] == [1, 12, 12] and schema["class_names"] == ["0", "1", "2"]


def _image_folder(root, sizes=((10, 10),), per_class=20, mode="L"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / cls / f"{i}.png")
    return str(root)


def test_image_folder_source(tmp_path):
    root = _image_folder(tmp_path / "imgs", mode="RGB")
    schema = data.make_dataset(root, str(tmp_path / "o"))
    assert schema["feature_shape"] == [3, 10, 10] and schema["class_names"] == ["cat", "dog"]


def test_image_folder_mixed_sizes_needs_resize(tmp_path):
    root = _image_folder(tmp_path / "imgs", sizes=((10, 10), (12, 9)))
    with pytest.raises(ModelpressError, match="different sizes.*image_size"):
        data.make_dataset(root, str(tmp_path / "o"))
    assert data.make_dataset(root, str(tmp_path / "o"), image_size=8)["feature_shape"] == [1, 8, 8]


def test_gs_uri_maps_to_gcs_mount():
    from modelpress.core.fileio import local_path

    assert str(local_path("gs://bucket/data/x.csv")) == "/gcs/bucket/data/x.csv"
    assert str(local_path("/tmp/x.csv")) == "/tmp/x.csv"


@pytest.mark.parametrize("case, message", [
    ("missing_file", "not found"),
    ("missing_label", "label column 'target' is not in .*columns are"),
    ("non_numeric", "'abc' is not a number"),
    ("nan", "not finite"),
    ("inf", "not finite"),
    ("one_class", "at least two"),
    ("empty_csv", "no data rows"),
    ("empty_npz", "empty"),
    ("npz_nan", "NaN/inf"),
    ("npz_missing_y", "lacks array"),
    ("too_few_per_class", "needs? at least"),
    ("unknown_format", "cannot tell the format"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, case, message):
    x, y = _blobs()
    rows = [[*r, lab] for r, lab in zip(x, y)]
    label = "label"
    if case == "missing_file":
        src = str(tmp_path / "nope.csv")
    elif case == "missing_label":
        src, label = _write_csv(tmp_path / "d.csv", rows), "target"
    elif case == "non_numeric":
        rows[5][1] = "abc"
        src = _write_csv(tmp_path / "d.csv", rows)
    elif case in ("nan", "inf"):
        rows[3][0] = case
        src = _write_csv(tmp_path / "d.csv", rows)
    elif case == "one_class":
        src = _write_csv(tmp_path / "d.csv", [[*r, "a"] for r in x])
    elif case == "empty_csv":
        src = _write_csv(tmp_path / "d.csv", [])
    elif case == "empty_npz":
        np.savez(tmp_path / "e.npz", x=np.zeros((0, 2)), y=np.zeros(0))
        src = str(tmp_path / "e.npz")
    elif case == "npz_nan":
        x[0, 0] = np.nan
        np.savez(tmp_path / "n.npz", x=x, y=y)
        src = str(tmp_path / "n.npz")
    elif case == "npz_missing_y":
        np.savez(tmp_path / "m.npz", x=x)
        src = str(tmp_path / "m.npz")
    elif case == "too_few_per_class":
        src = _write_csv(tmp_path / "d.csv", rows + [[0.0, 0.0, "rare"]])
    else:
        (tmp_path / "d.parquet").write_text("x")
        src = str(tmp_path / "d.parquet")
    out = tmp_path / "out"
    with pytest.raises(ModelpressError, match=message):
        data.make_dataset(src, str(out), label_column=label)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_failed_rewrite_keeps_previous_artifact(tmp_path):
    out = tmp_path / "out"
    data.make_dataset("digits", str(out))
    before = (out / "schema.json").read_text()
    with pytest.raises(ModelpressError):
        data.make_dataset("digits", str(out), test_fraction=1.5)
    with pytest.raises(ModelpressError):
        data.make_dataset(str(tmp_path / "missing.csv"), str(out))
    assert (out / "schema.json").read_text() == before
