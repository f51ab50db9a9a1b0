import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from modelpress import data
from modelpress.export import onnx_export
from modelpress import models
from modelpress.export import runtime
from modelpress.core.errors import ModelpressError


def test_export_matches_torch_and_has_dynamic_batch(mlp_onnx_dir, mlp_dir, digits_dir):
    meta = json.loads((Path(mlp_onnx_dir) / "meta.json").read_text())
    assert meta["opset"] == onnx_export.OPSET and meta["max_abs_diff"] < 1e-4
    assert not (Path(mlp_onnx_dir) / "model.onnx.data").exists()  # weights embedded
    proto = onnx.load(str(Path(mlp_onnx_dir) / "model.onnx"))
    assert proto.opset_import[0].version == onnx_export.OPSET
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # symbolic batch dimension
    model, _ = models.load_model(mlp_dir[0])
    ds = data.load_dataset(digits_dir)
    sess = runtime.session(mlp_onnx_dir)
    for n in (1, 7, 64):
        got = sess.run(None, {"input": ds.test.x[:n]})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(ds.test.x[:n])).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    assert meta["accuracy"] == pytest.approx(mlp_dir[1]["metrics"]["test_accuracy"], abs=0.003)


def test_tolerance_breach_fails_and_writes_nothing(mlp_dir, digits_dir, tmp_path, monkeypatch):
    # ONNX Runtime can match torch bit for bit on an MLP: make the exported model drift
    run_logits = onnx_export.runtime.run_logits
    monkeypatch.setattr(onnx_export.runtime, "run_logits", lambda sess, x, **kw: run_logits(sess, x, **kw) + 1e-3)
    with pytest.raises(ModelpressError, match="differs from torch beyond tolerance"):
        onnx_export.export_onnx(mlp_dir[0], digits_dir, str(tmp_path / "o"), log=lambda s: None)
    assert not (tmp_path / "o").exists()


def test_not_onnx_and_truncated_files_are_explained(mlp_onnx_dir, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a model")
    with pytest.raises(ModelpressError, match="not (a readable ONNX model|.*ONNX graph)"):
        runtime.session(bad)
    good = (Path(mlp_onnx_dir) / "model.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelpressError, match="truncated|not a readable|no ONNX graph"):
        runtime.session(cut)
    with pytest.raises(ModelpressError, match="no ONNX model"):
        runtime.session(tmp_path / "missing")
