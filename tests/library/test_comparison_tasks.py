"""The benchmark on a regression dataset with real ONNX Runtime and torch: every variant scored in
RMSE/MAE/R², skipped steps left out (and said so), and a run without a torch model."""

import json

import numpy as np
import pytest

from modelpress import data, models
from modelpress.core.results import write_skipped
from modelpress.selection import comparison, decision

FAST = dict(window_seconds=0.02, max_windows=2, throughput_batch=8)


def _linear_onnx(out_dir, w: np.ndarray, b: float, outputs: int = 1):
    """A linear model as an ONNX model artifact (Gemm), written without the export step."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["output"])], "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", w.shape[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", outputs])],
        [numpy_helper.from_array(w.reshape(-1, outputs).astype(np.float32), "w"),
         numpy_helper.from_array(np.full(outputs, b, dtype=np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out_dir.mkdir(parents=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    return str(out_dir)


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory):
    """The diabetes dataset, its least-squares fit as a torch model and as ONNX, and a worse ONNX fit."""
    root = tmp_path_factory.mktemp("diabetes")
    ds_dir = str(root / "dataset")
    data.make_dataset("diabetes", ds_dir, seed=0)
    ds = data.load_dataset(ds_dir)
    x = ds.train.x.reshape(len(ds.train.x), -1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], ds.train.y.astype(np.float64), rcond=None)
    w, b = coef[:-1], float(coef[-1])
    import torch

    spec = models.make_spec("mlp", ds.feature_shape, 1, hidden=[])
    net = models.build(spec)
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(w, dtype=torch.float32).reshape(1, -1))
        linear.bias.fill_(b)
    models.save_model(net, spec, str(root / "torch"))
    test_x = ds.test.x.reshape(len(ds.test.x), -1).astype(np.float64)
    rmse = float(np.sqrt(np.mean((test_x @ w + b - ds.test.y) ** 2)))
    return {"dataset": ds_dir, "torch": str(root / "torch"), "onnx": _linear_onnx(root / "onnx", w, b),
            "worse": _linear_onnx(root / "worse", w * 0.8, b), "root": root, "rmse": rmse}


def test_a_regression_benchmark_scores_in_rmse_and_leaves_skipped_steps_out(diabetes):
    root = diabetes["root"]
    student = str(root / "student")
    write_skipped(student, "distil", "the recipe leaves distil out")
    skipped_q = []
    for i in range(2):
        write_skipped(root / f"q{i}", "quantise", "the recipe leaves quantise out")
        skipped_q.append((str(root / f"q{i}"), {"skipped": True, "reason": "the recipe leaves quantise out"}))
    variants = comparison.optimisation_variants(diabetes["torch"], diabetes["onnx"], diabetes["worse"], student,
                                                skipped_q, [], [])
    lines = []
    record = comparison.benchmark_optimisation(variants, diabetes["dataset"], str(root / "results.json"),
                                               str(root / "report.html"), log=lines.append, **FAST)
    results = json.loads((root / "results.json").read_text())
    assert results["task"] == "regression"
    assert results["quality_metric"] == {"name": "rmse", "higher_is_better": False, "label": "RMSE"}
    rows = {r["name"]: r for r in results["variants"]}
    assert list(rows) == ["torch eager fp32", "onnx fp32", "pruned fp32"]
    for r in rows.values():
        assert r["task"] == "regression" and {"rmse", "mae", "r2"} <= set(r)
        assert "accuracy" not in r and "confusion_matrix" not in r
    assert rows["torch eager fp32"]["rmse"] == pytest.approx(diabetes["rmse"], rel=1e-4)
    assert rows["onnx fp32"]["rmse"] == pytest.approx(diabetes["rmse"], rel=1e-4)
    assert rows["pruned fp32"]["rmse"] > rows["onnx fp32"]["rmse"]
    assert [(x["name"], x["step"]) for x in results["left_out"]] == [
        ("student fp32", "distil"), ("quantised 1", "quantise"), ("quantised 2", "quantise")]
    assert "[benchmark] left out quantised 1, quantised 2: the quantise step was skipped " \
           "(the recipe leaves quantise out)" in lines
    assert any(line.startswith("[benchmark] onnx fp32") and "RMSE" in line for line in lines)
    assert record["metrics"]["onnx_fp32_rmse"] == rows["onnx fp32"]["rmse"]
    assert "accuracy" not in " ".join(record["metrics"])
    page = (root / "report.html").read_text()
    assert "<th>RMSE</th>" in page and "accura" not in page.lower() and "Left out: student fp32" in page


@pytest.mark.parametrize("torch_model", ["", "skipped"])
def test_without_a_torch_model_the_onnx_export_is_the_baseline(diabetes, tmp_path, torch_model):
    from modelpress.core.results import Role, Variant

    if torch_model == "skipped":
        torch_model = str(tmp_path / "torch")
        write_skipped(torch_model, "train", "the run starts from an ONNX file")
    variants = comparison.optimisation_variants(torch_model, diabetes["onnx"], diabetes["worse"], None)
    # a champion deployed for another task (three classes) is noted, not scored, never compared with
    classifier = _linear_onnx(tmp_path / "classifier", np.zeros((10, 3)), 0.0, outputs=3)
    variants.append(Variant("champion v1", classifier, "onnx", Role.CHAMPION))
    lines = []
    comparison.benchmark(variants, diabetes["dataset"], str(tmp_path / "results.json"), log=lines.append, **FAST)
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["role"] for r in results["variants"]] == ["baseline-onnx", "candidate", "champion"]
    assert any("no torch model: started from ONNX" in line for line in lines)
    champion = results["variants"][-1]
    assert champion["rmse"] is None and "cannot be scored on this regression dataset" in champion["note"]
    gap = results["variants"][1]["rmse"] - results["variants"][0]["rmse"]
    # the worse fit is within a tolerance wider than its gap, and out of one narrower
    wide = decision.decide(results, decision.Policy(tolerance=gap * 1.5, objective="size"))
    assert wide["decision"]["baseline"] == "onnx fp32" and "no torch model" in wide["decision"]["reason"]
    assert wide["champion"] is None and "no champion deployed" in wide["blessing"]["reason"]
    assert next(t for t in wide["decision"]["table"] if t["name"] == "pruned fp32")["checks"]["rmse"] is True
    assert not any(k.endswith("_vs_torch") for k in wide["ratios"])
    narrow = decision.decide(results, decision.Policy(tolerance=gap / 2))
    assert narrow["decision"]["chosen"] == "onnx fp32"
    assert next(t for t in narrow["decision"]["table"] if t["name"] == "pruned fp32")["checks"]["rmse"] is False


def test_retraining_compares_a_regression_challenger_in_rmse(diabetes, tmp_path):
    from modelpress import training
    from modelpress.core.errors import ModelpressError
    from modelpress.selection import retraining

    tiny = training.TrainSettings(epochs=1, learning_rate=1e-6, seed=0, patience=0)
    warm = retraining.train_challenger(diabetes["dataset"], str(tmp_path / "warm"), warm_start=diabetes["torch"],
                                       settings=tiny, log=lambda s: None)
    assert warm["metrics"]["warm_start_rmse"] == pytest.approx(diabetes["rmse"], rel=1e-4)
    assert warm["metrics"]["test_rmse"] == pytest.approx(diabetes["rmse"], rel=0.01)
    assert {"test_mae", "test_r2"} <= set(warm["metrics"]) and "test_accuracy" not in warm["metrics"]
    assert warm["metadata"]["task"] == "regression" and warm["metadata"]["accuracy"] is None
    # a classifier cannot warm start a regression
    spec = models.make_spec("mlp", (10,), 3, hidden=[])
    models.save_model(models.build(spec), spec, str(tmp_path / "classifier"))
    with pytest.raises(ModelpressError, match="3 outputs vs the one a regression model gives"):
        retraining.train_challenger(diabetes["dataset"], str(tmp_path / "out"), warm_start=str(tmp_path / "classifier"),
                                    settings=tiny, log=lambda s: None)
    scored = retraining.score(diabetes["dataset"], diabetes["torch"], diabetes["onnx"], str(tmp_path / "r.json"),
                              window_seconds=0.02, max_windows=2, log=lambda s: None)
    figures = retraining.summary(scored)["metrics"]
    assert figures["challenger_rmse"] == pytest.approx(diabetes["rmse"], rel=1e-4) and "champion_rmse" not in figures
