"""Shared fixtures: a digits dataset artifact and a small trained model, built once."""

from __future__ import annotations

import pytest

from modelpress import data
from modelpress import models
from modelpress import training


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "dataset"
    data.make_dataset("digits", str(out), seed=0)
    return str(out)


@pytest.fixture(scope="session")
def mlp_dir(tmp_path_factory, digits_dir):
    out = tmp_path_factory.mktemp("mlp") / "model"
    result = training.train(digits_dir, str(out), architecture="mlp", model_args={"hidden": [64]},
                            settings=training.TrainSettings(epochs=8, seed=0), log=lambda s: None)
    return str(out), result


@pytest.fixture(scope="session")
def mlp_onnx_dir(tmp_path_factory, digits_dir, mlp_dir):
    from modelpress.export import onnx_export

    out = tmp_path_factory.mktemp("mlp_onnx") / "onnx"
    onnx_export.export_onnx(mlp_dir[0], digits_dir, str(out), log=lambda s: None)
    return str(out)


@pytest.fixture(scope="session")
def cnn_model(digits_dir):
    ds = data.load_dataset(digits_dir)
    spec = models.make_spec("cnn", ds.feature_shape, 10, channels=[8, 16])
    return models.build(spec), spec
