"""Regression datasets (task detection, target checks, target-stratified splits) and the
preprocessing options that match a user's model (channels, normalise presets, custom stats)."""

import json

import numpy as np
import pytest

from modelpress import data
from modelpress.core.errors import ModelpressError


def _regression_csv(path, n=120, seed=0, label="price", bad_row=None, bad_value=""):
    """Two features and a float target; `bad_row` (0-based data row) gets `bad_value` as its label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = 3.0 * x[:, 0] - x[:, 1] + rng.normal(0, 0.1, n) + 10.0
    lines = [f"f1,f2,{label}"]
    for i in range(n):
        target = bad_value if i == bad_row else f"{y[i]:.4f}"
        lines.append(f"{x[i, 0]:.5f},{x[i, 1]:.5f},{target}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _logged():
    lines = []
    return lines, lines.append


def test_diabetes_is_a_regression_dataset_with_target_statistics(tmp_path):
    lines, log = _logged()
    schema = data.make_dataset("diabetes", str(tmp_path / "d"), seed=0, log=log)
    ds = data.load_dataset(str(tmp_path / "d"))
    assert ds.task == "regression" and ds.num_outputs == 1 and ds.class_names == []
    assert schema["num_classes"] == 0 and schema["num_outputs"] == 1 and schema["input_kind"] == "tabular"
    assert schema["feature_shape"] == [10] and sum(schema["splits"].values()) == 442
    assert schema["input"]["feature_names"] == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    for split in (ds.train, ds.validation, ds.test):
        assert split.y.dtype == np.float32 and split.x.shape[1:] == (10,)
    assert len(np.unique(ds.train.y)) > 100  # targets, not class indices
    target = schema["target"]
    assert target["name"] == "target"
    assert target["mean"] == pytest.approx(float(ds.train.y.mean()), rel=1e-6)
    assert target["std"] == pytest.approx(float(ds.train.y.std()), rel=1e-6)
    assert (target["min"], target["max"]) == (float(ds.train.y.min()), float(ds.train.y.max()))
    assert schema["normalisation"]["target"] == {"mean": target["mean"], "std": target["std"]}
    assert schema["normalisation"]["kind"] == "per-feature" and len(schema["normalisation"]["mean"]) == 10
    assert any("task: regression" in line and "built-in diabetes" in line for line in lines)
    saved = json.loads((tmp_path / "d" / "schema.json").read_text())
    assert saved["task"] == "regression" and saved["format_version"] == data.SCHEMA_VERSION

    from modelpress.data.fingerprint import fingerprint
    assert fingerprint("diabetes").startswith("diabetes:scikit-learn-")


def test_csv_float_label_is_detected_as_regression_and_says_so(tmp_path):
    src = _regression_csv(tmp_path / "houses.csv")
    lines, log = _logged()
    schema = data.make_dataset(src, str(tmp_path / "o"), label_column="price", log=log)
    assert schema["task"] == "regression" and schema["target"]["name"] == "price"
    decided = [line for line in lines if "task: regression" in line]
    assert decided and "auto" in decided[0] and "not all whole numbers" in decided[0]
    assert "task: classification" in decided[0]  # how to force the other
    assert data.load_dataset(str(tmp_path / "o")).train.y.dtype == np.float32


def test_integer_labels_auto_and_forced(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    labels = np.arange(300) % 30  # 30 integer values in 300 rows (10%): auto calls this regression
    path = tmp_path / "ids.csv"
    path.write_text("f1,f2,label\n" + "\n".join(f"{a},{b},{c}" for (a, b), c in zip(x, labels)) + "\n")
    lines, log = _logged()
    assert data.make_dataset(str(path), str(tmp_path / "a"), log=log)["task"] == "regression"
    assert "all whole numbers" in lines[-1] and "task: classification" in lines[-1]
    forced = data.make_dataset(str(path), str(tmp_path / "b"), task="classification", log=log)
    assert forced["task"] == "classification" and forced["num_classes"] == 30 and forced["num_outputs"] == 30
    assert data.load_dataset(str(tmp_path / "b")).train.y.dtype == np.int64
    # a handful of class ids stays classification
    few = tmp_path / "few.csv"
    few.write_text("f1,f2,label\n" + "\n".join(f"{a},{b},{c % 3}" for (a, b), c in zip(x, labels)) + "\n")
    assert data.make_dataset(str(few), str(tmp_path / "c"), log=log)["task"] == "classification"
    assert "task: regression" in lines[-1]  # how to force the other


@pytest.mark.parametrize("bad_value, problem", [("", "is empty"), ("nan", "is not finite"),
                                                ("inf", "is not finite"), ("abc", "is not a number")])
def test_bad_regression_label_names_its_csv_line(tmp_path, bad_value, problem):
    src = _regression_csv(tmp_path / "houses.csv", bad_row=6, bad_value=bad_value)  # data row 6 = line 8
    out = tmp_path / "o"
    task = "regression" if bad_value == "abc" else "auto"  # a name makes auto pick classification
    with pytest.raises(ModelpressError, match=rf"houses.csv line 8: price .*{problem}.*finite numbers"):
        data.make_dataset(src, str(out), label_column="price", task=task, log=lambda s: None)
    assert not out.exists()


def test_missing_class_label_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "c.csv"
    rows = [f"{i},{i % 2},{'ab'[i % 2]}" for i in range(20)]
    rows[4] = "4,0,"
    path.write_text("f1,f2,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(ModelpressError, match="c.csv line 6: label '' is missing"):
        data.make_dataset(str(path), str(tmp_path / "o"), log=lambda s: None)


def test_npz_regression_target(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3
    np.savez(tmp_path / "r.npz", x=x, y=y)
    lines, log = _logged()
    schema = data.make_dataset(str(tmp_path / "r.npz"), str(tmp_path / "o"), log=log)
    assert schema["task"] == "regression" and schema["target"]["name"] == "y"
    ds = data.load_dataset(str(tmp_path / "o"))
    assert ds.test.y.dtype == np.float32
    # the stored targets are the source's, row for row
    assert np.allclose(np.sort(np.concatenate([ds.train.y, ds.validation.y, ds.test.y])), np.sort(y), atol=1e-6)
    y[17] = np.nan
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(ModelpressError, match=r"bad.npz y\[17\]: y 'nan' is not finite"):
        data.make_dataset(str(tmp_path / "bad.npz"), str(tmp_path / "o2"), log=log)
    np.savez(tmp_path / "names.npz", x=x, y=np.array(["a", "b"] * 50))
    with pytest.raises(ModelpressError, match="regression needs numbers"):
        data.make_dataset(str(tmp_path / "names.npz"), str(tmp_path / "o3"), task="regression", log=log)


def test_regression_splits_are_deterministic_disjoint_and_balanced(tmp_path):
    make = lambda name, seed: data.make_dataset("diabetes", str(tmp_path / name), seed=seed, log=lambda s: None)
    make("a", 5), make("b", 5), make("c", 6)
    a, b, c = (data.load_dataset(str(tmp_path / k)) for k in "abc")
    assert np.array_equal(a.test.y, b.test.y) and np.array_equal(a.train.x, b.train.x)
    assert not np.array_equal(a.test.y, c.test.y)
    y = np.random.default_rng(0).exponential(size=500)
    parts = data.regression_split_indices(y, val_fraction=0.15, test_fraction=0.2, seed=3)
    every = np.concatenate(list(parts.values()))
    assert len(every) == 500 and len(np.unique(every)) == 500  # disjoint, nothing lost
    assert [len(parts[k]) for k in data.SPLITS] == [325, 75, 100]
    # stratified on target quantiles: each split's deciles sit where the whole set's do
    deciles = np.quantile(y, np.linspace(0.1, 0.9, 9))
    for idx in parts.values():
        share = np.bincount(np.searchsorted(deciles, y[idx]), minlength=10) / len(idx)
        assert np.abs(share - 0.1).max() < 0.03


def test_regression_refusals(tmp_path):
    with pytest.raises(ModelpressError, match="task must be one of auto, classification, regression"):
        data.make_dataset("digits", str(tmp_path / "o"), task="ranking")
    x = np.random.default_rng(0).normal(size=(40, 2))
    np.savez(tmp_path / "flat.npz", x=x, y=np.full(40, 2.5))
    with pytest.raises(ModelpressError, match="every target is 2.5"):
        data.make_dataset(str(tmp_path / "flat.npz"), str(tmp_path / "o"), task="regression", log=lambda s: None)
    folder = _image_folder(tmp_path / "imgs")
    with pytest.raises(ModelpressError, match="image folder.*task: classification"):
        data.make_dataset(folder, str(tmp_path / "o"), task="regression", log=lambda s: None)
    assert not (tmp_path / "o").exists()


def _image_folder(root, mode="L"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            shape = (6, 6, 3) if mode == "RGB" else (6, 6)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / cls / f"{i}.png")
    return str(root)


def test_channels_3_repeats_grey_and_1_makes_luma(tmp_path):
    schema = data.make_dataset("digits", str(tmp_path / "d"), channels=3, log=lambda s: None)
    ds = data.load_dataset(str(tmp_path / "d"))
    assert ds.train.x.shape[1:] == (3, 8, 8) and schema["feature_shape"] == [3, 8, 8]
    assert np.array_equal(ds.train.x[:, 0], ds.train.x[:, 1]) and np.array_equal(ds.train.x[:, 0], ds.train.x[:, 2])
    assert schema["preprocessing"] == {"normalise": "dataset", "channels": 3, "image_size": None}
    assert schema["input"]["channels"] == "RGB" and schema["input"]["shape"] == [-1, 3, 8, 8]
    assert len(schema["normalisation"]["mean"]) == 3
    # same images and splits as the grey dataset: the channels are its pixels repeated
    grey = data.make_dataset("digits", str(tmp_path / "g"), log=lambda s: None)
    assert np.array_equal(data.load_dataset(str(tmp_path / "g")).test.x[:, 0], ds.test.x[:, 0])
    assert grey["preprocessing"]["channels"] == 1

    rgb = _image_folder(tmp_path / "rgb", mode="RGB")
    schema = data.make_dataset(rgb, str(tmp_path / "l"), channels=1, seed=0, log=lambda s: None)
    data.make_dataset(rgb, str(tmp_path / "c"), seed=0, log=lambda s: None)
    grey_x, colour_x = data.load_dataset(str(tmp_path / "l")).train.x, data.load_dataset(str(tmp_path / "c")).train.x
    luma = 0.299 * colour_x[:, 0] + 0.587 * colour_x[:, 1] + 0.114 * colour_x[:, 2]
    assert schema["feature_shape"] == [1, 6, 6] and np.allclose(grey_x[:, 0], luma, atol=1e-3)


@pytest.mark.parametrize("source, channels, message", [
    ("digits", 2, "channels must be 0"),
    ("diabetes", 3, "applies to images.*tabular"),
])
def test_bad_channels_are_refused(tmp_path, source, channels, message):
    with pytest.raises(ModelpressError, match=message):
        data.make_dataset(source, str(tmp_path / "o"), channels=channels, log=lambda s: None)


def test_imagenet_in_raw_pixel_units(tmp_path):
    lines, log = _logged()
    schema = data.make_dataset("digits", str(tmp_path / "d"), channels=3, normalise="imagenet", log=log)
    norm = schema["normalisation"]
    assert norm["preset"] == "imagenet" and norm["pixel_scale"] == 16
    assert norm["mean"] == pytest.approx([0.485 * 16, 0.456 * 16, 0.406 * 16])
    assert norm["std"] == pytest.approx([0.229 * 16, 0.224 * 16, 0.225 * 16])
    assert schema["preprocessing"]["normalise"] == "imagenet"
    assert "ImageNet" in schema["input"]["normalisation"] and "inside the model" in schema["input"]["normalisation"]
    assert any("normalise: imagenet" in line for line in lines)
    # decoded 8-bit images are in 0..255
    folder = data.make_dataset(_image_folder(tmp_path / "i", mode="RGB"), str(tmp_path / "f"),
                               normalise="imagenet", log=log)
    assert folder["normalisation"]["pixel_scale"] == 255
    assert folder["normalisation"]["mean"] == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])


@pytest.mark.parametrize("source, message", [("digits", "channels: 3"), ("diabetes", "tabular")])
def test_imagenet_needs_rgb_images(tmp_path, source, message):
    with pytest.raises(ModelpressError, match=f"imagenet needs 3-channel.*{message}"):
        data.make_dataset(source, str(tmp_path / "o"), normalise="imagenet", log=lambda s: None)
    assert not (tmp_path / "o").exists()


def test_normalise_none_and_custom(tmp_path):
    none = data.make_dataset("diabetes", str(tmp_path / "n"), normalise="none", log=lambda s: None)
    assert none["normalisation"]["mean"] == [0.0] * 10 and none["normalisation"]["std"] == [1.0] * 10
    assert none["preprocessing"]["normalise"] == "none"
    custom = {"mean": [0.5, 0.5, 0.5], "std": [2.0, 2.0, 4.0]}
    schema = data.make_dataset("digits", str(tmp_path / "c"), channels=3, normalise=custom, log=lambda s: None)
    assert schema["normalisation"]["preset"] == "custom"
    assert schema["normalisation"]["mean"] == custom["mean"] and schema["normalisation"]["std"] == custom["std"]
    # pipeline parameters are strings: the same mapping as JSON works
    as_json = data.make_dataset("digits", str(tmp_path / "j"), channels=3, normalise=json.dumps(custom),
                                log=lambda s: None)
    assert as_json["normalisation"]["std"] == custom["std"]


@pytest.mark.parametrize("normalise, message", [
    ({"mean": [0.5, 0.5], "std": [1.0, 1.0]}, "gives 2 mean/std value.*has 1 channel"),
    ({"mean": [0.5], "std": [0.0]}, "std must be > 0"),
    ({"mean": [0.5], "std": [1.0, 2.0]}, "1 mean value.*2 std"),
    ({"mean": [0.5]}, "exactly 'mean' and 'std'"),
    ({"mean": ["a"], "std": [1.0]}, "finite numbers"),
    ("zscore", "unknown normalise 'zscore'"),
    ("{mean: [1]", "not valid JSON"),
])
def test_bad_normalise_is_refused(tmp_path, normalise, message):
    with pytest.raises(ModelpressError, match=message):
        data.make_dataset("digits", str(tmp_path / "o"), normalise=normalise, log=lambda s: None)
    assert not (tmp_path / "o").exists()


def test_custom_statistics_per_feature_for_tables(tmp_path):
    with pytest.raises(ModelpressError, match="has 10 feature"):
        data.make_dataset("diabetes", str(tmp_path / "o"), normalise={"mean": [0.0] * 3, "std": [1.0] * 3},
                          log=lambda s: None)
    ok = data.make_dataset("diabetes", str(tmp_path / "o"), normalise={"mean": [1.0] * 10, "std": [2.0] * 10},
                           log=lambda s: None)
    assert ok["normalisation"]["kind"] == "per-feature" and ok["normalisation"]["std"] == [2.0] * 10
