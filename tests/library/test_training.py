import json
from pathlib import Path

import pytest

from modelpress import training
from modelpress.core.errors import ModelpressError


def test_train_result_and_artifact(mlp_dir):
    path, result = mlp_dir
    assert {p.name for p in Path(path).iterdir()} == {"spec.json", "weights.safetensors"}
    m = result["metrics"]
    assert m["test_accuracy"] > 0.9
    assert result["metadata"]["params"] == m["params"]
    cm = result["confusion_matrix"]
    assert len(cm["matrix"]) == 10 and sum(map(sum, cm["matrix"])) == 360
    spec = json.loads((Path(path) / "spec.json").read_text())
    assert spec["info"]["train_settings"]["epochs"] == 8


def test_training_compute_uses_examples_and_epochs(mlp_dir):
    _, result = mlp_dir
    m = result["metrics"]
    examples = 1797 - 360 - 270
    assert m["training_flops"] == 3 * m["forward_flops_per_example"] * examples * m["epochs_run"]
    # 64->64->10 MLP: 2*64*64 + 2*64*10
    assert m["forward_flops_per_example"] == 2 * 64 * 64 + 2 * 64 * 10


def test_early_stopping_stops_and_keeps_best(digits_dir, tmp_path):
    logs = []
    # a learning rate this high makes validation loss worse quickly
    result = training.train(digits_dir, str(tmp_path / "m"), architecture="mlp",
                            settings=training.TrainSettings(epochs=40, patience=2, learning_rate=0.5,
                                                            optimizer="sgd"), log=logs.append)
    assert result["metrics"]["epochs_run"] < 40
    assert any("early stop" in line for line in logs)


def test_training_is_reproducible(digits_dir, tmp_path):
    s = training.TrainSettings(epochs=2, seed=5)
    a = training.train(digits_dir, str(tmp_path / "a"), settings=s, architecture="mlp", log=lambda _: None)
    b = training.train(digits_dir, str(tmp_path / "b"), settings=s, architecture="mlp", log=lambda _: None)
    assert a["metrics"]["test_loss"] == b["metrics"]["test_loss"]


@pytest.mark.parametrize("field, value", [
    ("epochs", -1), ("epochs", 1.5), ("batch_size", -1), ("learning_rate", 0.0), ("optimizer", "lion"),
    ("weight_decay", -0.1), ("patience", -1), ("device", "tpu"),
])
def test_invalid_settings_are_named(field, value):
    with pytest.raises(ModelpressError, match=field):
        training.TrainSettings(**{field: value}).validate()


def test_cuda_request_without_gpu_is_explained():
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelpressError, match="no CUDA GPU"):
        training.resolve_device("cuda")
