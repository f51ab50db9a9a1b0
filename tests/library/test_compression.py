"""Pruning, distillation and quantisation have their effect, and refuse bad input clearly."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from modelpress.evaluation import torch_scoring
from modelpress.core import hardware
from modelpress import data
from modelpress.compression import distillation
from modelpress.export import onnx_export
from modelpress import models
from modelpress.compression import pruning
from modelpress.compression import quantisation
from modelpress.export import runtime
from modelpress import training
from modelpress.core.errors import ModelpressError

QUIET = dict(log=lambda s: None)
FT = training.TrainSettings(epochs=1, learning_rate=1e-3, patience=0)


@pytest.fixture(scope="module")
def small_mobilenet(tmp_path_factory, digits_dir):
    out = tmp_path_factory.mktemp("mbv2") / "model"
    training.train(digits_dir, str(out), architecture="mobilenet_v2", model_args={"width_mult": 0.35},
                   settings=training.TrainSettings(epochs=1, patience=0), **QUIET)
    return str(out)


# ------------------------------------------------------------------------------ pruning

def test_unstructured_reaches_sparsity_and_masks_are_permanent(mlp_dir, digits_dir, tmp_path):
    result = pruning.prune(mlp_dir[0], digits_dir, str(tmp_path / "p"), method="unstructured",
                           amount=0.8, steps=2, settings=FT, **QUIET)
    assert result["metrics"]["sparsity"] == pytest.approx(0.8, abs=0.005)
    model, spec = models.load_model(str(tmp_path / "p"))  # no weight_orig / weight_mask left
    assert pruning.weight_sparsity(model) == pytest.approx(0.8, abs=0.005)
    assert not any("mask" in k or "orig" in k for k in model.state_dict())
    assert [r["target"] for r in result["rounds"]] == pytest.approx([0.7, 0.8])  # cubic schedule
    assert [r["sparsity"] for r in result["rounds"]] == pytest.approx([0.7, 0.8], abs=0.005)
    assert result["metrics"]["params_after"] == result["metrics"]["params_before"]
    classifier = pruning.weight_layers(model)[-1][1]
    assert int((classifier.weight == 0).sum()) == 0  # the classifier is never pruned
    pruned = sum(m.weight.numel() for _, m in pruning.prunable_layers(model))
    assert result["metrics"]["nonzero_weights"] == pytest.approx(0.2 * pruned + classifier.weight.numel(), abs=2)


def test_structured_removes_channels_and_reloads_from_spec(small_mobilenet, digits_dir, tmp_path):
    result = pruning.prune(small_mobilenet, digits_dir, str(tmp_path / "p"), method="structured",
                           amount=0.5, settings=FT, **QUIET)
    m = result["metrics"]
    assert m["params_after"] < 0.45 * m["params_before"]
    assert m["macs_after"] < 0.45 * m["macs_before"]
    before, _ = models.load_model(small_mobilenet)
    after, spec = models.load_model(str(tmp_path / "p"))  # rebuilt from spec.json alone
    assert "layer_shapes" in spec
    # a depthwise conv stays depthwise with half its channels; the classifier keeps 10 outputs
    before, after = models.unwrap(before), models.unwrap(after)  # past the input normalisation
    b_dw, a_dw = before.features[2].conv[1][0], after.features[2].conv[1][0]
    assert a_dw.groups == a_dw.in_channels == a_dw.out_channels < b_dw.out_channels
    assert after.classifier.out_features == 10
    x = torch.from_numpy(data.load_dataset(digits_dir).test.x[:4])
    assert models.load_model(str(tmp_path / "p"))[0](x).shape == (4, 10)
    onnx_export.export_onnx(str(tmp_path / "p"), digits_dir, str(tmp_path / "o"), **QUIET)
    assert runtime.read_meta(tmp_path / "o")["params"] == m["params_after"]


@pytest.mark.parametrize("method, amount", [("unstructured", 1.0), ("unstructured", -0.1),
                                            ("structured", 1.0), ("structured", 1.5)])
def test_amount_outside_range_is_refused(mlp_dir, digits_dir, tmp_path, method, amount):
    with pytest.raises(ModelpressError, match=r"\[0, 1\)"):
        pruning.prune(mlp_dir[0], digits_dir, str(tmp_path / "p"), method=method, amount=amount, **QUIET)
    assert not (tmp_path / "p").exists()


def test_ratio_that_empties_a_layer_names_it():
    model = models.build(models.make_spec("cnn", [1, 8, 8], 10, channels=[4, 8]))
    with pytest.raises(ModelpressError, match="every channel of layer 'features.0.0' \\(4 channels\\)"):
        pruning.prune_structured(model, torch.zeros(2, 1, 8, 8), 0.8)


def test_unknown_pruning_method(mlp_dir, digits_dir, tmp_path):
    with pytest.raises(ModelpressError, match="unknown pruning method 'random'"):
        pruning.prune(mlp_dir[0], digits_dir, str(tmp_path / "p"), method="random", **QUIET)


# ------------------------------------------------------------------------- distillation

def test_kd_loss_against_hand_computed_value():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.2, 3.0, -1.0]])
    y = torch.tensor([1])
    T, alpha = 2.0, 0.7

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()
    pt, ps = softmax(t.numpy()[0] / T), softmax(s.numpy()[0] / T)
    kl = float(np.sum(pt * (np.log(pt) - np.log(ps))))
    ce = float(-np.log(softmax(s.numpy()[0])[1]))
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert distillation.kd_loss(s, t, y, T, alpha).item() == pytest.approx(expected, rel=1e-5)
    # alpha 0 is plain cross-entropy; identical logits make the soft term vanish
    assert distillation.kd_loss(s, t, y, T, 0.0).item() == pytest.approx(ce, rel=1e-5)
    assert distillation.kd_loss(s, s, y, T, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distil_reports_student_and_teacher_on_same_split(mlp_dir, digits_dir, tmp_path):
    result = distillation.distil(mlp_dir[0], digits_dir, str(tmp_path / "s"), student_architecture="mlp",
                                 student_args={"hidden": [16]}, settings=training.TrainSettings(epochs=3),
                                 **QUIET)
    teacher, _ = models.load_model(mlp_dir[0])
    ds = data.load_dataset(digits_dir)
    assert result["metrics"]["teacher_accuracy"] == torch_scoring.evaluate(teacher, ds.test.x, ds.test.y, 10)["accuracy"]
    student, spec = models.load_model(str(tmp_path / "s"))
    assert result["metrics"]["student_accuracy"] == torch_scoring.evaluate(student, ds.test.x, ds.test.y, 10)["accuracy"]
    assert result["metrics"]["student_params"] < result["metrics"]["teacher_params"]
    assert spec["info"]["distillation"]["temperature"] == 4.0


def test_student_with_other_classes_is_refused(mlp_dir, digits_dir, tmp_path):
    with pytest.raises(ModelpressError, match="student has 5 classes but the teacher has 10"):
        distillation.distil(mlp_dir[0], digits_dir, str(tmp_path / "s"), student_architecture="mlp",
                            student_args={"num_classes": 5}, **QUIET)
    x = np.random.default_rng(0).random((90, 64)).astype(np.float32)
    np.savez(tmp_path / "three.npz", x=x, y=np.repeat([0, 1, 2], 30))
    data.make_dataset(str(tmp_path / "three.npz"), str(tmp_path / "ds3"))
    with pytest.raises(ModelpressError, match="teacher was trained on classes"):
        distillation.distil(mlp_dir[0], str(tmp_path / "ds3"), str(tmp_path / "s"), **QUIET)
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------- quantisation

def _ops(path):
    return {n.op_type for n in onnx.load(str(Path(path) / "model.onnx")).graph.node}


def test_static_int8_has_qdq_nodes_runs_and_keeps_accuracy(mlp_onnx_dir, digits_dir, tmp_path):
    result = quantisation.quantise(mlp_onnx_dir, digits_dir, str(tmp_path / "q"), method="static-int8",
                                   calibration_samples=64, **QUIET)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(tmp_path / "q")
    meta = runtime.read_meta(tmp_path / "q")
    assert meta["quantisation"]["format"] == "QDQ" and meta["quantisation"]["calibration_samples"] == 64
    assert meta["quantisation"]["reduce_range"] == (not hardware.has_vnni())
    # tiny model (27 kB): scales, zero points and the fp32 input normalisation weigh in
    assert result["metrics"]["size_ratio"] < 0.52
    fp32 = runtime.read_meta(mlp_onnx_dir)["accuracy"]
    assert result["metrics"]["test_accuracy"] == pytest.approx(fp32, abs=0.02)
    assert "cpu_flags" in meta and meta["onnxruntime"]


def test_dynamic_int8_and_fp16(mlp_onnx_dir, digits_dir, tmp_path):
    quantisation.quantise(mlp_onnx_dir, digits_dir, str(tmp_path / "d"), method="dynamic-int8", **QUIET)
    assert _ops(tmp_path / "d") & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}
    result = quantisation.quantise(mlp_onnx_dir, digits_dir, str(tmp_path / "h"), method="fp16", **QUIET)
    proto = onnx.load(str(tmp_path / "h" / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io kept fp32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    meta = runtime.read_meta(tmp_path / "h")
    assert meta["precision"] == "fp16" and meta["accuracy_note"]
    assert result["metadata"]["quantisation"]["keep_io_types"] is True


def test_reduce_range_follows_cpu_flags():
    assert hardware.has_vnni(["avx2", "avx512_vnni"]) and hardware.has_vnni(["avx_vnni"])
    assert not hardware.has_vnni(["avx2", "fma"])
    assert quantisation.parse_reduce_range("auto") is None
    assert quantisation.parse_reduce_range("true") is True
    with pytest.raises(ModelpressError, match="reduce_range"):
        quantisation.parse_reduce_range("maybe")


@pytest.mark.parametrize("case, message", [
    ("not_onnx", "not a readable ONNX model|no ONNX graph"),
    ("truncated", "truncated|not a readable|no ONNX graph"),
    ("no_calibration", "needs calibration samples"),
    ("unknown_method", "unknown quantisation method 'int4'"),
    ("unknown_calibration", "unknown calibration method"),
])
def test_quantise_bad_input(mlp_onnx_dir, digits_dir, tmp_path, case, message):
    src = mlp_onnx_dir
    kwargs = {}
    if case == "not_onnx":
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "model.onnx").write_bytes(b"PK\x03\x04 a zip, not a model")
        src = str(tmp_path / "in")
    elif case == "truncated":
        (tmp_path / "in").mkdir()
        raw = (Path(mlp_onnx_dir) / "model.onnx").read_bytes()
        (tmp_path / "in" / "model.onnx").write_bytes(raw[: len(raw) // 3])
        src = str(tmp_path / "in")
    elif case == "no_calibration":
        kwargs = {"calibration_samples": 0}
    elif case == "unknown_method":
        kwargs = {"method": "int4"}
    else:
        kwargs = {"calibration_method": "Median"}
    with pytest.raises(ModelpressError, match=message):
        quantisation.quantise(src, digits_dir, str(tmp_path / "q"), **kwargs, **QUIET)
    assert not (tmp_path / "q").exists()
