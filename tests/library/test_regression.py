"""Regression below selection: MSE training, distillation on the teacher's outputs, pruning,
export and static int8, each scored by RMSE/MAE/R² in the target's units."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modelpress import data, models, training
from modelpress.compression import distillation, pruning, quantisation
from modelpress.evaluation.torch_scoring import evaluate
from modelpress.export import onnx_export, runtime

QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def diabetes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("diabetes") / "dataset"
    data.make_dataset("diabetes", str(out), seed=0, **QUIET)
    return str(out)


@pytest.fixture(scope="module")
def regressor(tmp_path_factory, diabetes_dir):
    out = tmp_path_factory.mktemp("regressor") / "model"
    logs = []
    result = training.train(diabetes_dir, str(out), architecture="mlp", model_args={"hidden": [64, 32]},
                            settings=training.TrainSettings(epochs=40, learning_rate=3e-3, patience=0),
                            log=logs.append)
    return str(out), result, logs


def _mean_rmse(ds):
    """What predicting the training split's mean scores on the test split."""
    return float(np.sqrt(np.mean((ds.test.y - ds.train.y.mean()) ** 2)))


def test_regression_training_beats_the_mean_and_reports_rmse(regressor, diabetes_dir):
    path, result, logs = regressor
    ds = data.load_dataset(diabetes_dir)
    m, meta = result["metrics"], result["metadata"]
    assert m["test_rmse"] < 0.9 * _mean_rmse(ds)
    assert 0 < m["test_mae"] < m["test_rmse"] and 0 < m["test_r2"] < 1
    assert "test_accuracy" not in m and "confusion_matrix" not in result
    assert meta["task"] == "regression" and meta["accuracy"] is None
    assert {k: meta[k] for k in ("rmse", "mae", "r2")} == {k: m[f"test_{k}"] for k in ("rmse", "mae", "r2")}
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in m.values())
    # the saved model answers in the target's units and scores what the card says
    model, spec = models.load_model(path)
    assert evaluate(model, ds.test.x, ds.test.y, 1, task="regression")["rmse"] == pytest.approx(m["test_rmse"], rel=1e-6)
    assert spec["info"]["task"] == "regression" and spec["args"]["num_classes"] == 1
    # losses are on standardised targets (~1 at the start), RMSE in target units
    history = result["history"]
    assert "val_rmse" in history[0] and "val_accuracy" not in history[0]
    assert history[0]["train_loss"] < 5 and history[-1]["val_rmse"] > 10
    assert any("val_rmse" in line for line in logs) and not any("val_acc" in line for line in logs)


def test_epochs_zero_scores_a_regressor_exactly_as_written(regressor, diabetes_dir, tmp_path):
    path, result, _ = regressor
    model, _ = models.load_model(path)
    torch.save(models.unwrap(model).state_dict(), tmp_path / "reg.pth")
    again = training.train(diabetes_dir, str(tmp_path / "m"), architecture="mlp", model_args={"hidden": [64, 32]},
                           settings=training.TrainSettings(epochs=0), weights=str(tmp_path / "reg.pth"), **QUIET)
    for key in ("test_rmse", "test_mae", "test_r2"):
        assert again["metrics"][key] == result["metrics"][key]


def test_regression_distillation_learns_from_the_teachers_outputs(regressor, diabetes_dir, tmp_path):
    logs = []
    result = distillation.distil(regressor[0], diabetes_dir, str(tmp_path / "s"), student_architecture="mlp",
                                 student_args={"hidden": [16]}, alpha=0.5,
                                 settings=training.TrainSettings(epochs=30, learning_rate=3e-3, patience=0),
                                 log=logs.append)
    ds = data.load_dataset(diabetes_dir)
    m = result["metrics"]
    assert m["teacher_rmse"] == pytest.approx(regressor[1]["metrics"]["test_rmse"], rel=1e-6)
    assert m["student_rmse"] < 0.95 * _mean_rmse(ds) and m["student_params"] < m["teacher_params"]
    assert result["metadata"]["task"] == "regression" and result["metadata"]["rmse"] == m["student_rmse"]
    assert "confusion_matrix" not in result
    assert any("temperature unused" in line for line in logs)
    student, spec = models.load_model(str(tmp_path / "s"))
    assert evaluate(student, ds.test.x, ds.test.y, 1, task="regression")["rmse"] == pytest.approx(m["student_rmse"])


def test_regression_kd_loss_by_hand():
    s, t, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [2.0]]), torch.tensor([0.0, 4.0])
    std, alpha = 2.0, 0.25
    to_teacher = ((1 - 2) ** 2 + (3 - 2) ** 2) / 2 / std ** 2
    to_label = ((1 - 0) ** 2 + (3 - 4) ** 2) / 2 / std ** 2
    got = distillation.regression_kd_loss(s, t, y, std, alpha).item()
    assert got == pytest.approx(alpha * to_teacher + (1 - alpha) * to_label)


def test_a_classifier_teacher_is_refused_for_regression(mlp_dir, diabetes_dir, tmp_path):
    from modelpress.core.errors import ModelpressError

    with pytest.raises(ModelpressError, match="teacher is a classification model but the dataset is for regression"):
        distillation.distil(mlp_dir[0], diabetes_dir, str(tmp_path / "s"), student_architecture="mlp", **QUIET)


def test_regression_pruning_keeps_the_output_and_scores_rmse(regressor, diabetes_dir, tmp_path):
    result = pruning.prune(regressor[0], diabetes_dir, str(tmp_path / "p"), method="structured", amount=0.5,
                           settings=training.TrainSettings(epochs=5, learning_rate=1e-3, patience=0), **QUIET)
    m = result["metrics"]
    assert m["params_after"] < 0.5 * m["params_before"]
    assert m["rmse_before"] == pytest.approx(regressor[1]["metrics"]["test_rmse"], rel=1e-6)
    assert {"rmse_after", "mae_after", "r2_after", "rmse_before_finetune"} <= set(m)
    assert result["metadata"]["task"] == "regression" and result["metadata"]["rmse"] == m["rmse_after"]
    pruned, _ = models.load_model(str(tmp_path / "p"))
    assert models.head(pruned)[1].out_features == 1


def test_regression_export_and_static_int8_keep_rmse(regressor, diabetes_dir, tmp_path):
    fp32 = onnx_export.export_onnx(regressor[0], diabetes_dir, str(tmp_path / "o"), **QUIET)
    trained = regressor[1]["metrics"]["test_rmse"]
    assert fp32["metadata"]["task"] == "regression" and fp32["metadata"]["accuracy"] is None
    assert fp32["metrics"]["test_rmse"] == pytest.approx(trained, rel=1e-4)
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["rmse"] == pytest.approx(trained, rel=1e-4) and meta["task"] == "regression"
    q = quantisation.quantise(str(tmp_path / "o"), diabetes_dir, str(tmp_path / "q"), method="static-int8",
                              calibration_samples=128, **QUIET)
    m = q["metrics"]
    assert abs(m["rmse_delta"]) < 0.05 * meta["rmse"]  # int8 costs little on this scale (target std ~77)
    assert m["test_rmse"] == pytest.approx(meta["rmse"] + m["rmse_delta"])
    qmeta = runtime.read_meta(tmp_path / "q")
    assert qmeta["task"] == "regression" and qmeta["rmse"] == m["test_rmse"] and qmeta["precision"] == "int8"
    assert "test_accuracy" not in m and qmeta["accuracy"] is None
    # the target's de-standardisation stays fp32: predictions are in target units
    ds = data.load_dataset(diabetes_dir)
    pred = runtime.run_logits(runtime.session(Path(tmp_path / "q")), ds.test.x)
    assert abs(float(pred.mean()) - float(ds.train.y.mean())) < 0.5 * float(ds.train.y.std())
