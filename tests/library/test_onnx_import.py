"""Starting from the user's ONNX file: checked against the dataset before anything is written."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelpress import data
from modelpress.core.errors import ModelpressError
from modelpress.export import onnx_import, runtime


def _export(model: nn.Module, shape, path: Path, **names) -> Path:
    torch.onnx.export(model.eval(), (torch.zeros(2, *shape),), str(path), dynamo=False,
                      input_names=[names.get("input", "x")], output_names=["y"],
                      dynamic_axes={names.get("input", "x"): {0: "n"}, "y": {0: "n"}})
    return path


def test_an_onnx_file_of_the_wrong_input_shape_names_both_shapes(tmp_path, digits_dir):
    path = _export(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)), (3, 8, 8), tmp_path / "rgb.onnx")
    out = tmp_path / "out"
    with pytest.raises(ModelpressError, match=r"has shape \[-1, 3, 8, 8\] but the dataset's examples have shape "
                                              r"\[-1, 1, 8, 8\]"):
        onnx_import.import_onnx(str(path), digits_dir, str(out), log=lambda s: None)
    assert not out.exists()  # nothing written


def test_an_onnx_file_with_the_wrong_number_of_outputs_is_refused(tmp_path, digits_dir):
    path = _export(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), (1, 8, 8), tmp_path / "three.onnx")
    with pytest.raises(ModelpressError, match=r"needs \[batch, 10\]"):
        onnx_import.import_onnx(str(path), digits_dir, str(tmp_path / "out"), log=lambda s: None)


def test_a_missing_file_and_a_non_onnx_file_are_refused(tmp_path, digits_dir):
    with pytest.raises(ModelpressError, match="does not exist"):
        onnx_import.import_onnx(str(tmp_path / "nope.onnx"), digits_dir, str(tmp_path / "out"))
    (tmp_path / "bad.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(ModelpressError, match="not a readable ONNX model"):
        onnx_import.import_onnx(str(tmp_path / "bad.onnx"), digits_dir, str(tmp_path / "out"))


def test_the_dataset_normalisation_goes_in_front_and_the_file_is_scored(tmp_path, digits_dir):
    ds = data.load_dataset(digits_dir)
    norm = ds.schema["normalisation"]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    path = _export(net, (1, 8, 8), tmp_path / "m.onnx", input="pixels")
    out = tmp_path / "out"
    result = onnx_import.import_onnx(str(path), digits_dir, str(out), log=lambda s: None)
    sess = runtime.session(out)
    assert sess.get_inputs()[0].name == "pixels"  # the client keeps sending what the file took
    mean = np.asarray(norm["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(norm["std"], np.float32).reshape(1, -1, 1, 1)
    with torch.no_grad():
        want = net(torch.from_numpy((ds.test.x - mean) / std)).numpy()
    np.testing.assert_allclose(runtime.run_logits(sess, ds.test.x), want, rtol=1e-4, atol=1e-4)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["normalisation_added"] is True and meta["imported_from"] == str(path)
    assert meta["accuracy"] == result["metrics"]["test_accuracy"]
    constants = {i.name for i in runtime.load_onnx(out).graph.initializer}
    assert set(runtime.NORMALISATION_CONSTANTS[:2]) <= constants  # quantisation keeps them fp32


def test_symbolic_image_sizes_take_the_dataset_and_clashing_names_are_refused(tmp_path, digits_dir):
    import onnx

    class AnySize(nn.Module):  # a fully convolutional model: any height and width
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 10, 3, padding=1)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    net = AnySize()
    path = tmp_path / "any_size.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(2, 1, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}})
    onnx_import.import_onnx(str(path), digits_dir, str(tmp_path / "ok"), log=lambda s: None)  # H, W symbolic: fine
    model = onnx.load(str(path))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(1, np.float32), "mean"))
    onnx.save(model, str(tmp_path / "clash.onnx"))
    with pytest.raises(ModelpressError, match=r"already has tensors named \['mean'\].*normalise: none"):
        onnx_import.import_onnx(str(tmp_path / "clash.onnx"), digits_dir, str(tmp_path / "out"), log=lambda s: None)
    assert not (tmp_path / "out").exists()
