"""Quantisation-aware training: int8 QDQ ONNX that ONNX Runtime runs with int8 kernels, at any
batch size, about as accurate as the fp32 model; settings recorded; bad input refused clearly."""

import json
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
import pytest
import torch
from torch import nn

from modelpress import data, models, training
from modelpress.compression import qat
from modelpress.core.errors import ModelpressError
from modelpress.export import runtime

QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def tiny_cnn(tmp_path_factory, digits_dir):
    out = tmp_path_factory.mktemp("qat_cnn") / "model"
    training.train(digits_dir, str(out), architecture="cnn", model_args={"channels": [8, 16]},
                   settings=training.TrainSettings(epochs=2), **QUIET)
    return str(out)


@pytest.fixture(scope="module")
def per_channel(tmp_path_factory, tiny_cnn, digits_dir):
    out, lines = tmp_path_factory.mktemp("qat_pc") / "onnx", []
    result = qat.qat(tiny_cnn, digits_dir, str(out), settings=training.TrainSettings(epochs=2, learning_rate=1e-3),
                     log=lines.append)
    return out, result, lines


@pytest.fixture(scope="module")
def per_tensor(tmp_path_factory, tiny_cnn, digits_dir):
    out = tmp_path_factory.mktemp("qat_pt") / "onnx"
    result = qat.qat(tiny_cnn, digits_dir, str(out), settings=training.TrainSettings(epochs=1, learning_rate=1e-3),
                     per_channel=False, observer="minmax", reduce_range=True, **QUIET)
    return out, result


def _producers(graph):
    return {o: n for n in graph.node for o in n.output}


def test_graph_has_qdq_pairs_int8_weights_and_fp32_normalisation(per_channel):
    out, result, _ = per_channel
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= ops.count("QuantizeLinear")
    consumers = {i: n.op_type for n in graph.node for i in n.input}
    for n in graph.node:
        if n.op_type == "QuantizeLinear":  # each activation quantisation is undone by its pair
            assert consumers[n.output[0]] == "DequantizeLinear"
    inits = {i.name: i.data_type for i in graph.initializer}
    weights = [inits[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weights.count(onnx.TensorProto.INT8) == 5  # 4 convolutions and the classifier, stored in int8
    assert weights.count(onnx.TensorProto.INT32) >= 1  # the classifier's bias, so ONNX Runtime fuses the Gemm
    producers = _producers(graph)
    constants = {k for k in inits if k.split(".")[-1] in ("mean", "inv_std")}
    norm = [n for n in graph.node if set(n.input) & constants]
    assert [n.op_type for n in norm] == ["Sub", "Mul"]  # the input normalisation stays fp32
    for n in norm:
        assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input)
    assert result["metrics"]["quantize_linear_nodes"] == ops.count("QuantizeLinear")


def test_onnx_runtime_runs_int8_kernels(per_channel, tmp_path):
    out, result, _ = per_channel
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(out / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]
    assert ops.count("QLinearConv") == 4  # every convolution runs in int8
    assert ops.count("QGemm") == 1  # and so does the Linear classifier
    assert not set(ops) & {"Conv", "Gemm", "MatMul"}  # no fp32 compute left
    m = result["metrics"]
    assert (m["int8_QLinearConv"], m["int8_QGemm"], m["int8_nodes"], m["fp32_compute_nodes"]) == (4, 1, 5, 0)
    assert result["metadata"]["int8_ops"] == {"QLinearConv": 4, "QGemm": 1}


def test_dynamic_batch_and_serving_names(per_channel, digits_dir):
    out, _, _ = per_channel
    sess = runtime.session(out)
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, outp.name) == ("input", "logits") and isinstance(inp.shape[0], str)
    x = data.load_dataset(digits_dir).test.x[:7]
    seven = sess.run(None, {"input": x})[0]
    one = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(7)])
    assert seven.shape == (7, 10) and one.shape == (7, 10)
    np.testing.assert_allclose(one, seven, atol=1e-5)


def test_accuracy_close_to_fp32_and_card_recorded(per_channel, tiny_cnn, digits_dir):
    out, result, lines = per_channel
    m, meta = result["metrics"], json.loads((out / "meta.json").read_text())
    ds = data.load_dataset(digits_dir)
    predicted = runtime.run_logits(runtime.session(out), ds.test.x).argmax(1)
    assert m["test_accuracy"] == pytest.approx(float((predicted == ds.test.y).mean()))
    assert m["fp32_accuracy"] == pytest.approx(result["metadata"]["fp32_accuracy"])
    assert m["accuracy_delta"] == pytest.approx(m["test_accuracy"] - m["fp32_accuracy"])
    assert m["test_accuracy"] >= m["fp32_accuracy"] - 0.05
    assert meta["precision"] == "int8-qat" and meta["accuracy"] == m["test_accuracy"]
    settings = meta["quantisation"]
    assert {k: settings[k] for k in ("method", "per_channel", "observer", "epochs", "learning_rate")} == {
        "method": "qat", "per_channel": True, "observer": "moving-average-minmax", "epochs": 2, "learning_rate": 1e-3}
    assert settings["freeze_after"] == 1 and any("frozen" in line for line in lines)  # froze for epoch 2
    assert meta["input"]["name"] == "input" and meta["input"]["shape"] == [-1, 1, 8, 8]
    assert (meta["input_name"], meta["output_name"], meta["class_names"]) == ("input", "logits", ds.class_names)
    assert m["size_bytes"] == (out / "model.onnx").stat().st_size and not list(out.glob("*.data"))
    assert meta["source_model"].endswith("model") and meta["max_abs_diff"] == m["max_abs_diff"]
    assert len(result["history"]) == m["epochs_run"] == 2


def test_per_tensor_and_per_channel_differ_in_graph(per_channel, per_tensor):
    def weight_scales(path):
        graph = onnx.load(str(path / "model.onnx")).graph
        inits = {i.name: i for i in graph.initializer}
        return [list(inits[n.input[1]].dims) for n in graph.node if n.op_type == "DequantizeLinear"
                and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert sorted(weight_scales(per_channel[0])) == [[8], [8], [10], [16], [16]]  # one scale per output channel
    assert weight_scales(per_tensor[0]) == [[]] * 5  # one scale per tensor
    meta = json.loads((per_tensor[0] / "meta.json").read_text())["quantisation"]
    assert (meta["per_channel"], meta["observer"], meta["reduce_range"]) == (False, "minmax", True)
    assert (per_tensor[1]["metrics"]["int8_QLinearConv"], per_tensor[1]["metrics"]["int8_QGemm"]) == (4, 1)
    graph = onnx.load(str(per_tensor[0] / "model.onnx")).graph
    weights = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8
               and len(i.dims) > 1]  # not the zero points
    assert len(weights) == 5 and all(w.min() >= -64 and w.max() <= 63 for w in weights)  # reduce_range: 7 bits


def test_regression_model_scored_by_rmse_with_target_scaling_in_fp32(tmp_path):
    ds_dir, model_dir = str(tmp_path / "diabetes"), str(tmp_path / "mlp")
    data.make_dataset("diabetes", ds_dir, seed=0, **QUIET)
    training.train(ds_dir, model_dir, architecture="mlp", model_args={"hidden": [16]},
                   settings=training.TrainSettings(epochs=5), **QUIET)
    result = qat.qat(model_dir, ds_dir, str(tmp_path / "o"), settings=training.TrainSettings(epochs=1), **QUIET)
    m, meta = result["metrics"], result["metadata"]
    assert meta["task"] == "regression" and meta["accuracy"] is None and meta["rmse"] == m["test_rmse"]
    assert m["rmse_delta"] == pytest.approx(m["test_rmse"] - m["fp32_rmse"])
    assert m["test_rmse"] <= 1.2 * m["fp32_rmse"] and m["int8_QGemm"] == 2 and m["fp32_compute_nodes"] == 0
    graph = onnx.load(str(tmp_path / "o" / "model.onnx")).graph
    producers = _producers(graph)
    last = producers["logits"]  # output * target_std + target_mean, in fp32 behind the int8 network
    assert last.op_type == "Add" and producers[last.input[0]].op_type == "Mul"


def test_text_dataset_refused(tiny_cnn, tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    (text / "schema.json").write_text(json.dumps({"input_kind": "text"}))
    with pytest.raises(ModelpressError, match="QAT covers image and table models; text models: use dynamic-int8"):
        qat.qat(tiny_cnn, str(text), str(tmp_path / "o"), settings=training.TrainSettings(epochs=1), **QUIET)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("options, message", [
    ({"observer": "histogram"}, "observer must be one of"),
    ({"per_channel": "yes"}, "per_channel must be true or false"),
    ({"batchnorm": "drop"}, "batchnorm must be one of"),
    ({"freeze_after": 0}, "freeze_after must be"),
    ({"opset": 10}, "opset must be >= 13"),
    ({"settings": training.TrainSettings(epochs=0)}, "epochs must be >= 1"),
    ({"settings": training.TrainSettings(learning_rate=-1.0)}, "learning_rate"),
])
def test_bad_settings_refused(tiny_cnn, digits_dir, tmp_path, options, message):
    kwargs = {"settings": training.TrainSettings(epochs=1), **options}
    with pytest.raises(ModelpressError, match=message):
        qat.qat(tiny_cnn, digits_dir, str(tmp_path / "o"), **kwargs, **QUIET)
    assert not (tmp_path / "o").exists()


class _Branchy(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum().item() > 0 else x  # data-dependent Python control flow


def test_uncapturable_model_named_with_a_fix():
    with pytest.raises(ModelpressError, match="torch.export cannot capture branchy.*static-int8"):
        qat.capture(_Branchy(), torch.ones(4, 3), "branchy")


def test_mode_switch_keeps_dropout_and_batch_norm_settings():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, eps=1e-3, momentum=0.01), nn.Flatten(),
                        nn.Dropout(0.2), nn.Linear(8, 2))
    gm = qat.capture(net, torch.randn(4, 1, 4, 4), "net")

    def flags():
        return [tuple(n.args[1:3]) if n.target in qat._DROPOUT else tuple(n.args[5:8])
                for n in gm.graph.nodes if n.op == "call_function" and n.target in qat._DROPOUT | qat._BATCHNORM]
    assert flags() == [(True, 0.01, 1e-3), (0.2, True)]
    wrapped = qat.Trainable(gm).eval()
    assert flags() == [(False, 0.01, 1e-3), (0.2, False)]
    torch.manual_seed(0)
    x = torch.randn(3, 1, 4, 4)
    assert torch.equal(wrapped(x), wrapped(x))  # inference: no dropout, running statistics
    wrapped.train()
    assert flags() == [(True, 0.01, 1e-3), (0.2, True)]
    wrapped.freeze()  # batch-norm statistics fixed, dropout still on while training
    assert flags() == [(False, 0.01, 1e-3), (0.2, True)]


def test_ranges_learn_from_training_batches_only():
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    gm = qat.capture(net, torch.rand(4, 1, 4, 4), "net")
    wrapped = qat.Trainable(prepare_qat_pt2e(gm, qat.make_quantizer(qat.quantization_config(True, "minmax", False),
                                                                     set())))

    def input_range():  # the observer of the network's input (the first activation fake-quantiser)
        fq = next(m for m in wrapped.modules() if type(m).__name__ == "FakeQuantize" and m.ch_axis == -1)
        return float(fq.activation_post_process.min_val), float(fq.activation_post_process.max_val)
    wrapped.train()(torch.rand(4, 1, 4, 4))
    seen = input_range()
    assert 0.0 <= seen[0] < seen[1] <= 1.0
    wrapped.eval()(100 * torch.rand(4, 1, 4, 4))  # a validation batch far outside: ranges stay
    assert input_range() == seen
    wrapped.train()(100 * torch.rand(4, 1, 4, 4))
    assert input_range()[1] > 1.0
    wrapped.freeze()
    wrapped(1000 * torch.rand(4, 1, 4, 4))  # frozen: training batches no longer move them either
    assert input_range()[1] < 100.0
