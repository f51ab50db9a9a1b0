"""Text compression: dynamic int8, static int8 (QDQ) and fp16 of an exported BERT, scoring with
per-batch padding, and DistilBERT-style distillation into a 1-layer student. Tiny models only
(2 layers, hidden 32), trained for seconds on synthetic reviews."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from modelpress.compression import text_distillation as td
from modelpress.compression import text_quantisation as tq
from modelpress.export import text_runtime
from modelpress.training import text_loop
from modelpress.core.errors import ModelpressError
from modelpress.data.text import load_text_dataset, make_text_dataset, write_reviews
from modelpress.export.text_export import export_text_onnx
from modelpress.models import text

MAX_LENGTH = 128
TINY = dict(layers=2, hidden=32, heads=2, intermediate=64, max_position=MAX_LENGTH)
FAST = dict(batch_size=32, device="cpu", log=lambda _m: None)


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _majority(y) -> float:
    return float(np.bincount(y).max() / len(y))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("reviews")
    source = write_reviews(str(root / "reviews.csv"), 800, seed=3)
    make_text_dataset(source, str(root / "dataset"), vocab_size=200, max_length=MAX_LENGTH, log=lambda _m: None)
    return load_text_dataset(str(root / "dataset"))


@pytest.fixture(scope="module")
def teacher(ds):
    torch.set_num_threads(2)  # the suite shares small CI machines
    model = text.bert_from_config(ds.schema["vocab_size"], 2, seed=0, **TINY)
    return text_loop.train_text(model, ds.train, ds.validation, epochs=8, learning_rate=3e-3, seed=0, **FAST)


@pytest.fixture(scope="module")
def fp32(teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_text_onnx(teacher["model"], str(path), max_length=MAX_LENGTH)
    return path


@pytest.fixture(scope="module")
def fp32_scores(fp32, ds):
    return text_runtime.score_text_onnx(str(fp32), ds.test)


# ------------------------------------------------------------------ quantisation

def test_dynamic_int8_keeps_predictions_close_to_fp32(fp32, fp32_scores, ds, tmp_path):
    out = tmp_path / "dynamic.onnx"
    result = tq.quantise_text(str(fp32), str(out), "dynamic-int8", calibration=ds.train)
    ops = _ops(out)
    assert ops["MatMulInteger"] > 0 and ops["DynamicQuantizeLinear"] > 0
    assert result["quantisation_nodes"]["MatMulInteger"] == ops["MatMulInteger"]
    assert ops["Gather"] == _ops(fp32)["Gather"]  # embedding lookups stay fp32
    assert result["settings"]["per_channel"] is True and "Gather" in result["settings"]["kept_fp32"]
    assert result["size_bytes"] < result["source_size_bytes"] and result["check_argmax_agreement"] >= 0.85

    scores = text_runtime.score_text_onnx(str(out), ds.test)
    assert abs(scores["accuracy"] - fp32_scores["accuracy"]) <= 0.03
    assert abs(scores["loss"] - fp32_scores["loss"]) <= 0.05
    agree = (text_runtime.predict_text_onnx(str(out), ds.test).argmax(1) == text_runtime.predict_text_onnx(str(fp32), ds.test).argmax(1))
    assert agree.mean() >= 0.95

    small = tq.quantise_text(str(fp32), str(tmp_path / "emb.onnx"), "dynamic-int8", quantise_embeddings=True)
    assert small["quantisation_nodes"]["DequantizeLinear"] == 3  # word, position and type tables
    assert small["size_bytes"] < result["size_bytes"] and "Gather" not in small["settings"]["kept_fp32"]
    with pytest.raises(ModelpressError, match="quantise_embeddings applies to dynamic-int8 only"):
        tq.quantise_text(str(fp32), str(tmp_path / "x.onnx"), "fp16", quantise_embeddings=True)


def test_dynamic_int8_of_the_fused_graph_uses_qattention(fp32, fp32_scores, ds, tmp_path):
    from modelpress.export.text_export import optimise_transformer

    fused = tmp_path / "fused.onnx"
    optimise_transformer(str(fp32), str(fused), num_heads=2, hidden_size=32)
    result = tq.quantise_text(str(fused), str(tmp_path / "fused-int8.onnx"), "dynamic-int8")
    assert result["quantisation_nodes"].get("QAttention") == 2  # one per layer
    scores = text_runtime.score_text_onnx(str(tmp_path / "fused-int8.onnx"), ds.test)
    assert abs(scores["accuracy"] - fp32_scores["accuracy"]) <= 0.03


def test_static_int8_is_qdq_on_weight_matmuls_only_and_runs(fp32, fp32_scores, ds, tmp_path):
    out = tmp_path / "static.onnx"
    result = tq.quantise_text(str(fp32), str(out), "static-int8", calibration=ds.train, calibration_samples=64)
    graph = onnx.load(str(out)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    fed = {n.op_type: [made_by.get(i) for i in n.input] for n in graph.node
           if n.op_type in ("Gather", "LayerNormalization", "Softmax")}
    assert "DequantizeLinear" not in sum(fed.values(), [])  # these stay fp32
    excluded = set(result["settings"]["nodes_excluded"])
    assert len(excluded) == 2 * 2  # Q.K^T and probabilities.V in each of the 2 layers
    for node in graph.node:
        if node.name in excluded:
            assert "DequantizeLinear" not in [made_by.get(i) for i in node.input]
    assert result["settings"]["calibration_samples"] == 64 and result["settings"]["format"] == "QDQ"
    scores = text_runtime.score_text_onnx(str(out), ds.test)
    assert abs(scores["accuracy"] - fp32_scores["accuracy"]) <= 0.05

    with pytest.raises(ModelpressError, match="static-int8 needs calibration token batches"):
        tq.quantise_text(str(fp32), str(tmp_path / "x.onnx"), "static-int8")
    assert not (tmp_path / "x.onnx").exists()


def test_fp16_runs_with_float32_io(fp32, fp32_scores, ds, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "fp16.onnx"
    result = tq.quantise_text(str(fp32), str(out), "fp16")  # no calibration: a synthetic check batch
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.type for i in sess.get_inputs()] == ["tensor(int64)"] * 3
    assert sess.get_outputs()[0].type == "tensor(float)"
    halves = [i for i in onnx.load(str(out)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves and result["settings"]["keep_io_types"] is True
    assert result["size_bytes"] < 0.75 * result["source_size_bytes"] + 4096
    np.testing.assert_allclose(text_runtime.predict_text_onnx(str(out), ds.test), text_runtime.predict_text_onnx(str(fp32), ds.test),
                               atol=2e-2)


def test_folder_output_carries_meta_and_tokenizer(fp32, ds, tmp_path):
    src = tmp_path / "onnx"
    src.mkdir()
    (src / "model.onnx").write_bytes(fp32.read_bytes())
    (src / "meta.json").write_text(json.dumps({"class_names": ds.class_names, "max_abs_diff": 1e-7}))
    (src / "tokenizer").mkdir()
    (src / "tokenizer" / "tokenizer.json").write_text("{}")
    tq.quantise_text(str(src), str(tmp_path / "int8"), "dynamic-int8")
    meta = json.loads((tmp_path / "int8" / "meta.json").read_text())
    assert meta["precision"] == "int8-dynamic" and meta["class_names"] == ds.class_names
    assert meta["quantisation"]["method"] == "dynamic-int8" and "max_abs_diff" not in meta
    assert (tmp_path / "int8" / "tokenizer" / "tokenizer.json").exists()

    with pytest.raises(ModelpressError, match="unknown text quantisation method 'int4'"):
        tq.quantise_text(str(src), str(tmp_path / "int4"), "int4")
    assert not (tmp_path / "int4").exists()


def test_scoring_pads_per_batch_and_matches_torch(fp32, fp32_scores, teacher, ds):
    one = text_runtime.predict_text_onnx(str(fp32), ds.test, batch_size=1)  # every row at its own length
    many = text_runtime.predict_text_onnx(str(fp32), ds.test, batch_size=32)
    np.testing.assert_allclose(one, many, atol=1e-4)
    np.testing.assert_allclose(many, text_loop.predict_text(teacher["model"], ds.test), atol=1e-4)
    assert fp32_scores["rows"] == len(ds.test.y) and set(fp32_scores) >= {"accuracy", "loss", "confusion_matrix"}
    with pytest.raises(ModelpressError, match="split has no labels"):
        text_runtime.score_text_onnx(str(fp32), ds.test.inputs())


# ------------------------------------------------------------------ distillation

def test_teacher_learns(teacher, ds):
    history = teacher["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert teacher["scores"]["val_accuracy"] >= _majority(ds.validation.y) + 0.1


def test_distilled_one_layer_student_is_sensible(teacher, ds):
    model = teacher["model"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = td.distil_text(model, 1, ds.train, ds.validation, temperature=2.0, alpha=0.5, epochs=5,
                            learning_rate=2e-3, seed=0, test_split=ds.test, **FAST)
    student, history, scores = result["model"], result["history"], result["scores"]
    assert student.config.num_hidden_layers == 1 and scores["student_layers"] == 1
    assert scores["params_ratio"] < 1 and not student.training
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert scores["val_accuracy"] == max(r["val_accuracy"] for r in history)  # the best epoch is kept
    assert scores["val_accuracy"] >= _majority(ds.validation.y) + 0.1
    assert scores["student_test_accuracy"] >= _majority(ds.test.y) + 0.1
    got = (text_loop.predict_text(student, ds.test).argmax(1) == ds.test.y).mean()
    assert got == pytest.approx(scores["student_test_accuracy"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the teacher is untouched
    assert result["settings"]["temperature"] == 2.0 and result["settings"]["student_start"].endswith("[0]")


def test_distillation_refuses_bad_settings(teacher, ds):
    model = teacher["model"]
    with pytest.raises(ModelpressError, match="temperature must be > 0"):
        td.distil_text(model, 1, ds.train, ds.validation, temperature=0, **FAST)
    with pytest.raises(ModelpressError, match=r"alpha .* must be in \[0, 1\]"):
        td.distil_text(model, 1, ds.train, ds.validation, alpha=1.5, **FAST)
    with pytest.raises(ModelpressError, match="epochs must be a whole number >= 1"):
        td.distil_text(model, 1, ds.train, ds.validation, epochs=0, **FAST)
    other = text.bert_from_config(ds.schema["vocab_size"], 3, layers=1, hidden=32, heads=2, intermediate=64,
                                  max_position=MAX_LENGTH)
    with pytest.raises(ModelpressError, match="classifies 3 labels but the teacher 2"):
        td.distil_text(model, other, ds.train, ds.validation, **FAST)
