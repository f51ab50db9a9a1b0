"""Where training starts: scratch, fine-tune from a user's weights, or the model as it is
(epochs 0); and models from torchvision and timm through export and structured pruning."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from modelpress import data, models, training
from modelpress.compression import pruning
from modelpress.core.errors import ModelpressError
from modelpress.evaluation.torch_scoring import evaluate
from modelpress.export import onnx_export, runtime, verify

QUIET = dict(log=lambda s: None)
MLP = dict(architecture="mlp", model_args={"hidden": [64]})


@pytest.fixture(scope="module")
def user_pth(mlp_dir, tmp_path_factory):
    """The trained digits MLP's weights as a user's checkpoint: a plain state-dict .pth."""
    model, _ = models.load_model(mlp_dir[0])
    path = tmp_path_factory.mktemp("ckpt") / "mlp.pth"
    torch.save(models.unwrap(model).state_dict(), path)
    return str(path)


def test_epochs_zero_takes_the_model_as_it_is(mlp_dir, user_pth, digits_dir, tmp_path):
    logs = []
    result = training.train(digits_dir, str(tmp_path / "m"), **MLP, settings=training.TrainSettings(epochs=0),
                            weights=user_pth, log=logs.append)
    m, trained = result["metrics"], mlp_dir[1]["metrics"]
    assert m["test_accuracy"] == trained["test_accuracy"] and m["test_loss"] == trained["test_loss"]
    assert m["epochs_run"] == 0 and result["history"] == []
    assert not {"training_flops", "samples_per_s", "final_train_loss"} & set(m)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in m.values())
    assert result["confusion_matrix"] == mlp_dir[1]["confusion_matrix"]
    sha = hashlib.sha256(Path(user_pth).read_bytes()).hexdigest()
    meta = result["metadata"]
    assert meta["start"] == "as-is" and meta["weights"] == user_pth and meta["weights_sha256"] == sha
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    assert spec["info"]["start"] == "as-is" and spec["info"]["weights_sha256"] == sha
    assert any("start: as-is" in line and "built-in architecture 'mlp'" in line for line in logs)
    # the saved artifact is the checkpoint, unchanged
    saved, _ = models.load_model(str(tmp_path / "m"))
    original = torch.load(user_pth, weights_only=True)
    assert all(torch.equal(v, original[k]) for k, v in models.unwrap(saved).state_dict().items())


@pytest.mark.parametrize("kwargs, message", [
    ({}, "epochs 0 takes your trained model as it is: set weights"),
    ({"weights": "W", "replace_head": True}, "replace_head with epochs 0"),
])
def test_as_is_without_weights_or_with_a_new_head_is_refused(digits_dir, user_pth, tmp_path, kwargs, message):
    kwargs = {k: (user_pth if v == "W" else v) for k, v in kwargs.items()}
    with pytest.raises(ModelpressError, match=message):
        training.train(digits_dir, str(tmp_path / "m"), **MLP, settings=training.TrainSettings(epochs=0),
                       **kwargs, **QUIET)
    assert not (tmp_path / "m").exists()


def test_replace_head_needs_weights_and_fit_needs_an_epoch(digits_dir, tmp_path):
    with pytest.raises(ModelpressError, match="replace_head swaps the classifier"):
        training.train(digits_dir, str(tmp_path / "m"), **MLP, replace_head=True, **QUIET)
    ds = data.load_dataset(digits_dir)
    model = models.build(models.make_spec("mlp", ds.feature_shape, 10, hidden=[8]))
    with pytest.raises(ModelpressError, match="training needs epochs >= 1"):
        training.fit(model, ds, training.TrainSettings(epochs=0), **QUIET)
    assert training.TrainSettings(epochs=0).validate().epochs == 0  # the config accepts it


def test_fine_tuning_starts_from_the_weights(mlp_dir, user_pth, digits_dir, tmp_path):
    logs = []
    settings = training.TrainSettings(epochs=1, learning_rate=1e-4, patience=0)
    tuned = training.train(digits_dir, str(tmp_path / "f"), **MLP, settings=settings, weights=user_pth,
                           log=logs.append)
    ds = data.load_dataset(digits_dir)
    loaded, _ = models.load_model(mlp_dir[0])
    assert tuned["metrics"]["start_val_loss"] == pytest.approx(
        evaluate(loaded, ds.validation.x, ds.validation.y, 10)["loss"], rel=1e-9)
    assert tuned["metadata"]["start"] == "fine-tune"
    assert any("start: fine-tune from weights" in line for line in logs)
    scratch = training.train(digits_dir, str(tmp_path / "s"), **MLP, settings=settings, **QUIET)
    assert scratch["metadata"]["start"] == "scratch" and "start_val_loss" not in scratch["metrics"]
    # one gentle epoch keeps the trained model's quality; from scratch it is far from there
    assert tuned["history"][0]["val_loss"] < 0.5 * scratch["history"][0]["val_loss"]
    assert tuned["metrics"]["test_accuracy"] > 0.9


# ------------------------------------------------------------------ torchvision / timm

@pytest.fixture(scope="module")
def rgb32_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rgb32") / "dataset"
    data.make_dataset("digits", str(out), image_size=32, channels=3, seed=0, **QUIET)
    return str(out)


def test_torchvision_resnet18_exports_with_a_dynamic_batch_and_matches_torch(rgb32_dir, tmp_path):
    ds = data.load_dataset(rgb32_dir)
    assert ds.feature_shape == (3, 32, 32)
    spec = models.make_spec("torchvision:resnet18", ds.feature_shape, ds.num_outputs,
                            normalisation=ds.schema["normalisation"])
    torch.manual_seed(0)
    model = models.build(spec).eval()
    models.save_model(model, spec, str(tmp_path / "m"))
    result = onnx_export.export_onnx(str(tmp_path / "m"), rgb32_dir, str(tmp_path / "o"), verify_samples=16, **QUIET)
    assert result["metrics"]["max_abs_diff"] < 1e-4 and result["metadata"]["architecture"] == "torchvision:resnet18"
    proto = onnx.load(str(tmp_path / "o" / "model.onnx"))
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    sess = runtime.session(tmp_path / "o")
    for n in (1, 5):
        with torch.no_grad():
            ref = model(torch.from_numpy(ds.test.x[:n])).numpy()
        np.testing.assert_allclose(sess.run(None, {"input": ds.test.x[:n]})[0], ref, rtol=1e-3, atol=1e-4)


def test_a_timm_model_exports_and_verifies(tmp_path):
    spec = models.make_spec("timm:resnet10t", [3, 32, 32], 4)
    torch.manual_seed(0)
    model = models.build(spec).eval()
    x = np.random.default_rng(0).random((6, 3, 32, 32)).astype(np.float32)
    onnx_export.export_model(model, torch.from_numpy(x[:2]), str(tmp_path / "t.onnx"))
    checked = verify.against_torch(model, runtime.session(tmp_path / "t.onnx"), x, rtol=1e-3, atol=1e-4)
    assert checked["max_abs_diff"] < 1e-4


def test_structured_pruning_keeps_a_torchvision_models_head():
    spec = models.make_spec("torchvision:resnet18", [3, 32, 32], 10)
    model = models.build(spec).eval()
    before = models.count_params(model)
    pruning.prune_structured(model, torch.zeros(2, 3, 32, 32), 0.5, name="torchvision:resnet18")
    assert models.count_params(model) < 0.4 * before
    name, fc = models.head(model)
    assert name == "fc" and fc.out_features == 10 and fc.in_features == 256
    spec["layer_shapes"] = models.layer_shapes(model)
    pruning.check_rebuilds(model, spec, "torchvision:resnet18")  # spec.json alone rebuilds it


class _FixedReshape(nn.Module):
    """A user's model whose forward hard-codes its channel count: structured pruning breaks it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.reshape(y.shape[0], 512))


def test_a_model_pruning_cannot_handle_names_the_recipe_without_prune():
    with pytest.raises(ModelpressError, match=r"cannot handle acme:Net.*steps: \[distil, quantise\]"):
        pruning.prune_structured(_FixedReshape().eval(), torch.zeros(2, 1, 8, 8), 0.5, name="acme:Net")
