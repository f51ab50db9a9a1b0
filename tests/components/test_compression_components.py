"""prune, distil and quantise through `.python_func`, as the KFP executor calls them."""

from pathlib import Path

import onnx
import pytest
from kfp.dsl import ClassificationMetrics, Dataset, Metrics, Model

from components.distil import distil
from components.prune import prune
from components.quantise import quantise


def _art(cls, path, metadata=None):
    return cls(name=Path(path).name, uri=str(path), metadata=dict(metadata or {}))


def test_prune_component(mlp_dir, digits_dir, tmp_path):
    out, metrics = _art(Model, tmp_path / "pruned"), _art(Metrics, tmp_path / "metrics")
    prune.python_func(model=_art(Model, mlp_dir[0]), dataset=_art(Dataset, digits_dir), pruned=out,
                      metrics=metrics, method="unstructured", amount=0.5, steps=1, finetune_epochs=1,
                      learning_rate=1e-3, seed=0)
    assert (Path(out.path) / "spec.json").exists()
    assert out.metadata["sparsity"] == pytest.approx(0.5, abs=0.01)
    for key in ("params_before", "params_after", "macs_before", "macs_after", "accuracy_before",
                "accuracy_after_finetune"):
        assert key in metrics.metadata


def test_distil_component(mlp_dir, digits_dir, tmp_path):
    student, metrics = _art(Model, tmp_path / "student"), _art(Metrics, tmp_path / "m")
    distil.python_func(teacher=_art(Model, mlp_dir[0]), dataset=_art(Dataset, digits_dir), student=student,
                       metrics=metrics, classification=_art(ClassificationMetrics, tmp_path / "c"),
                       student_architecture="mlp", student_args={"hidden": [16.0]}, temperature=2.0,
                       alpha=0.5, epochs=2, learning_rate=2e-3, seed=0)
    assert metrics.metadata["teacher_accuracy"] > 0.9
    assert 0 < metrics.metadata["student_accuracy"] <= 1
    assert student.metadata["teacher_accuracy"] == metrics.metadata["teacher_accuracy"]


@pytest.mark.parametrize("method", ["static-int8", "dynamic-int8", "fp16"])
def test_quantise_component(mlp_onnx_dir, digits_dir, tmp_path, method):
    out, metrics = _art(Model, tmp_path / "q"), _art(Metrics, tmp_path / "m")
    quantise.python_func(onnx_model=_art(Model, mlp_onnx_dir), dataset=_art(Dataset, digits_dir),
                         quantised=out, metrics=metrics, method=method, calibration_samples=32,
                         calibration_method="MinMax", per_channel=True, reduce_range="auto")
    onnx.checker.check_model(str(Path(out.path) / "model.onnx"))
    assert out.metadata["quantisation"]["method"] == method
    assert metrics.metadata["size_bytes"] < Path(mlp_onnx_dir, "model.onnx").stat().st_size
