"""Each component through `.python_func` with artifacts on tmp_path, as the executor calls it."""

import json
from pathlib import Path

import pytest
from kfp.dsl import ClassificationMetrics, Dataset, Metrics, Model

from components.dataset import make_dataset
from components.export_onnx import export_onnx
from components.train import train
from modelpress.core.errors import ModelpressError


def _art(cls, path):
    return cls(name=Path(path).name, uri=str(path), metadata={})


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("components")
    ds = _art(Dataset, root / "dataset")
    make_dataset.python_func(dataset=ds, source="digits", seed=1)
    model, metrics, cls = _art(Model, root / "model"), _art(Metrics, root / "metrics"), \
        _art(ClassificationMetrics, root / "classification")
    train.python_func(dataset=ds, model=model, metrics=metrics, classification=cls,
                      architecture="cnn", model_args={"channels": [8.0, 16.0]}, epochs=6,
                      batch_size=64, learning_rate=3e-3, optimizer="adamw", weight_decay=1e-4,
                      seed=0, patience=3, device="auto")
    onnx_model, onnx_metrics = _art(Model, root / "onnx"), _art(Metrics, root / "onnx_metrics")
    export_onnx.python_func(model=model, dataset=ds, onnx_model=onnx_model, metrics=onnx_metrics,
                            opset=18, rtol=1e-3, atol=1e-4)
    return dict(ds=ds, model=model, metrics=metrics, cls=cls, onnx=onnx_model, onnx_metrics=onnx_metrics)


def test_dataset_component(chain):
    ds = chain["ds"]
    assert (Path(ds.path) / "schema.json").exists()
    assert ds.metadata["num_classes"] == 10 and ds.metadata["seed"] == 1


def test_train_component_records_model_metrics_and_confusion(chain):
    model, metrics, cls = chain["model"], chain["metrics"], chain["cls"]
    assert model.metadata["architecture"] == "cnn" and model.metadata["params"] > 0
    assert 0.0 < model.metadata["accuracy"] <= 1.0
    for key in ("test_accuracy", "final_train_loss", "wall_seconds", "samples_per_s",
                "training_flops", "training_pflop_days", "achieved_flops_per_s"):
        assert key in metrics.metadata
    # the metrics JSON file exists so the local cache can reuse the task
    assert json.loads(Path(metrics.path).read_text())["test_accuracy"] == metrics.metadata["test_accuracy"]
    cm = cls.metadata["confusionMatrix"]
    assert [a["displayName"] for a in cm["annotationSpecs"]] == [str(i) for i in range(10)]
    assert sum(sum(r["row"]) for r in cm["rows"]) == 360


def test_export_component(chain):
    onnx_model, m = chain["onnx"], chain["onnx_metrics"]
    assert (Path(onnx_model.path) / "model.onnx").exists()
    assert onnx_model.metadata["opset"] == 18 and onnx_model.metadata["framework"] == "onnx"
    assert m.metadata["max_abs_diff"] < 1e-4
    assert m.metadata["test_accuracy"] == pytest.approx(chain["metrics"].metadata["test_accuracy"], abs=0.003)


def test_train_component_rejects_bad_settings(chain, tmp_path):
    with pytest.raises(ModelpressError, match="epochs must be"):
        train.python_func(dataset=chain["ds"], model=_art(Model, tmp_path / "m"),
                          metrics=_art(Metrics, tmp_path / "x"), classification=_art(ClassificationMetrics, tmp_path / "c"),
                          architecture="cnn", model_args={}, epochs=-1, batch_size=64, learning_rate=1e-3,
                          optimizer="adamw", weight_decay=0.0, seed=0, patience=0, device="auto")
    assert not (tmp_path / "m").exists()


def test_train_settings_come_from_the_arguments_by_name():
    from components._io import train_settings
    from modelpress import training

    args = dict(dataset=None, architecture="cnn", epochs=3, batch_size=8, learning_rate=0.1, seed=2,
                finetune_epochs=7)
    assert train_settings(args) == training.TrainSettings(epochs=3, batch_size=8, learning_rate=0.1, seed=2)
    assert train_settings(args, epochs=args["finetune_epochs"], patience=0).epochs == 7
    with pytest.raises(TypeError, match="no field"):
        train_settings(args, finetune_epochs=7)
