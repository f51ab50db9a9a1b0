"""Your model, not ours: the optimise pipeline through kfp.local from what a user brings.

(a) a torchvision model from a plain state-dict .pth, taken as it is (epochs 0), only quantised;
(b) the user's own nn.Module from a folder outside the repository, fine-tuned, pruned, quantised;
(c) an ONNX file as the start (dsl.importer; torch steps skipped);
(d) regression on the built-in diabetes data, judged by RMSE.
Each run's parameters also pass the Vertex target's checks and reach a dry-run PipelineJob.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from modelpress import data, models, training
from modelpress.deploy import repository
from pipelines import submit

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--set", "window_seconds=0.05", "--set", "max_windows=3", "--set", "calibration_samples=64",
         "--set", "quantisation_methods=[static-int8]"]

USER_NET = '''
from torch import nn


class SmallNet(nn.Module):
    """A user's own model: modelpress passes num_classes because the signature takes it."""

    def __init__(self, num_classes, width=16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.out(self.body(x))
'''


def _run(tmp_path, *args, name="digits"):
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "run_local.py"), "optimise", *QUICK, *args,
                           "--set", f"repository={tmp_path / 'repo'}", "--set", f"model_name={name}",
                           "--pipeline-root", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    summaries = sorted((tmp_path / "runs").glob("optimise-*/summary.json"))
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    summary = json.loads(summaries[-1].read_text())
    tasks = {t["task"]: t for t in summary["tasks"]}
    bench = json.loads(Path(tasks["benchmark"]["artifacts"]["results"]).read_text())
    return proc, summary, tasks, {r["name"]: r for r in bench["variants"]}


def _vertex_request(tmp_path, overrides: dict) -> dict:
    """The dry-run PipelineJob of the optimise pipeline with these parameters on Vertex."""
    config = tmp_path / "vertex.yaml"
    text = (ROOT / "configs" / "vertex.yaml").read_text().replace("my-project", "acme-ml").replace("my-bucket", "acme-ml")
    config.write_text(text)
    argv = ["optimise", "--dry-run", "--config", str(config), "--image-tag", "abc1234",
            "--output-dir", str(tmp_path / "dry"), "--set", "source_fingerprint=test"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    out = tmp_path / "dry.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert submit.main(argv) == 0
    out.write_text(buf.getvalue())
    (printed,) = json.loads(buf.getvalue())
    return printed["request"]["pipeline_job"]["runtime_config"]["parameter_values"]


def _skipped(tasks, name):
    """The step wrote skip notes (its model output holds only skipped.json)."""
    return any((Path(p) / "skipped.json").exists() for p in tasks[name]["artifacts"].values())


# slow: ~45 s of kfp.local; tests/library/test_starts.py exports torchvision models and loads state dicts
@pytest.mark.slow
def test_torchvision_state_dict_taken_as_it_is_and_only_quantised(tmp_path, digits_dir):
    # the user's checkpoint: a torchvision ResNet-18 trained on 3-channel 12x12 digits, saved the usual way
    ds_dir = tmp_path / "ds"
    data.make_dataset("digits", str(ds_dir), image_size=12, channels=3, seed=0)
    ds = data.load_dataset(str(ds_dir))
    spec = models.make_spec("torchvision:resnet18", ds.feature_shape, ds.num_outputs,
                            normalisation=ds.schema["normalisation"])
    torch.manual_seed(0)
    model = models.build(spec)
    training.fit(model, ds, training.TrainSettings(epochs=2, learning_rate=3e-3), log=lambda s: None)
    torch.save(models.unwrap(model).state_dict(), tmp_path / "resnet18.pth")

    proc, summary, tasks, rows = _run(
        tmp_path, "--set", "architecture=torchvision:resnet18", "--set", "model_args={}",
        "--set", f"weights={tmp_path / 'resnet18.pth'}", "--set", "epochs=0", "--set", "steps=[quantise]",
        "--set", "image_size=12", "--set", "channels=3", "--set", "accuracy_floor=0.3", "--set", "tolerance=0.05")
    assert tasks["train"]["metrics"]["epochs_run"] == 0
    assert _skipped(tasks, "prune") and _skipped(tasks, "distil")
    assert {"torch eager fp32", "onnx fp32", "static-int8"} <= set(rows)
    assert not any(n.startswith(("pruned", "student")) for n in rows)
    # as-is means as-is: the pipeline's torch accuracy is the checkpoint's own on the same split
    from modelpress.evaluation.torch_scoring import evaluate
    assert rows["torch eager fp32"]["accuracy"] == pytest.approx(
        evaluate(model, ds.test.x, ds.test.y, ds.num_outputs)["accuracy"], abs=1e-9)
    assert summary["result"]["blessed"] is True and repository.versions(tmp_path / "repo", "digits") == [1]
    meta = json.loads((tmp_path / "repo" / "digits" / "1" / "meta.json").read_text())
    assert meta["input"]["channels"] == "RGB" and meta["input"]["shape"] == [-1, 3, 12, 12]

    params = _vertex_request(tmp_path, {"architecture": "torchvision:resnet18", "model_args": {}, "epochs": 0,
                                        "weights": "gs://acme-ml/ckpt/resnet18.pth", "steps": ["quantise"],
                                        "channels": 3, "image_size": 12})
    assert params["weights"] == "gs://acme-ml/ckpt/resnet18.pth" and params["steps"] == ["quantise"]
    assert params["epochs"] == 0


def test_user_module_outside_the_repository_fine_tuned_pruned_quantised(tmp_path, monkeypatch):
    code = tmp_path / "elsewhere" / "code"
    (code / "acme_models").mkdir(parents=True)
    (code / "acme_models" / "__init__.py").write_text("")
    (code / "acme_models" / "nets.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(code))
    for name in [m for m in sys.modules if m.split(".")[0] == "acme_models"]:  # another test's package of that name
        monkeypatch.delitem(sys.modules, name)
    from acme_models.nets import SmallNet

    torch.manual_seed(1)
    torch.save(SmallNet(num_classes=10).state_dict(), tmp_path / "smallnet.pth")  # their own checkpoint
    proc, summary, tasks, rows = _run(
        tmp_path, "--set", "architecture=acme_models.nets:SmallNet", "--set", "model_args={width: 16}",
        "--set", f"code_dir={code}", "--set", f"weights={tmp_path / 'smallnet.pth'}", "--set", "epochs=1",
        "--set", "steps=[prune, quantise, qat]", "--set", "prune_finetune_epochs=1", "--set", "qat_epochs=1",
        "--set", "accuracy_floor=0.0", "--set", "tolerance=0.5")
    assert "fine-tune" in proc.stdout
    assert tasks["train"]["metrics"]["epochs_run"] == 1
    assert _skipped(tasks, "distil") and not _skipped(tasks, "prune")
    assert {"torch eager fp32", "onnx fp32", "pruned fp32", "static-int8", "pruned static-int8", "qat int8"} <= set(rows)
    assert rows["qat int8"]["precision"] == "int8-qat" and rows["qat int8"]["accuracy"] is not None
    qat = next(t for name, t in tasks.items() if name.startswith("qat"))
    assert qat["metrics"]["int8_nodes"] >= 3  # the user's convolutions and Linear run as int8 kernels
    spec = json.loads((Path(tasks["train"]["artifacts"]["model"]) / "spec.json").read_text())
    assert spec["architecture"] == "acme_models.nets:SmallNet" and spec["code_dir"] == str(code)
    assert rows["pruned fp32"]["params"] < rows["onnx fp32"]["params"]

    params = _vertex_request(tmp_path, {"architecture": "acme_models.nets:SmallNet", "model_args": {"width": 16},
                                        "weights": "gs://acme-ml/ckpt/smallnet.pth", "epochs": 1,
                                        "steps": ["prune", "quantise"]})
    assert params["architecture"] == "acme_models.nets:SmallNet" and params.get("code_dir", "") == ""  # on Vertex: in the image


class _RawDigitsNet(nn.Module):
    """A user's model that takes raw digits (0..16) and scales them itself."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x / 16.0)


def test_onnx_file_as_the_start(tmp_path, digits_dir):
    ds = data.load_dataset(digits_dir)
    torch.manual_seed(0)
    net = _RawDigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    path = tmp_path / "their_model.onnx"
    torch.onnx.export(net.eval(), (x[:4],), str(path), input_names=["pixels"], output_names=["scores"],
                      dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}}, dynamo=False)
    expected = float((net(torch.from_numpy(ds.test.x)).argmax(1).numpy() == ds.test.y).mean())

    proc, summary, tasks, rows = _run(tmp_path, "--set", f"onnx_model={path}", "--set", "normalise=none",
                                      "--set", "steps=[quantise]", "--set", "accuracy_floor=0.8",
                                      "--set", "tolerance=0.03")
    assert _skipped(tasks, "train") and _skipped(tasks, "prune") and _skipped(tasks, "distil")
    assert "torch eager fp32" not in rows and {"onnx fp32", "static-int8"} <= set(rows)
    assert rows["onnx fp32"]["accuracy"] == pytest.approx(expected, abs=1e-9)  # the file, unchanged
    assert summary["result"]["blessed"] is True
    # served from the repository: raw digits in, the file's own answers out
    from modelpress.export import runtime
    sess = runtime.session(tmp_path / "repo" / "digits" / "1")
    got = runtime.run_logits(sess, ds.test.x).argmax(1)
    assert float((got == ds.test.y).mean()) >= expected - 0.03

    params = _vertex_request(tmp_path, {"onnx_model": "gs://acme-ml/models/their_model.onnx", "normalise": "none",
                                        "steps": ["quantise"]})
    assert params["onnx_model"] == "gs://acme-ml/models/their_model.onnx"


# slow: ~45 s of kfp.local; regression scoring, serving and batch prediction are covered by library tests
@pytest.mark.slow
def test_regression_on_diabetes_is_judged_by_rmse(tmp_path):
    proc, summary, tasks, rows = _run(
        tmp_path, "--set", "source=diabetes", "--set", "architecture=mlp", "--set", "model_args={hidden: [64, 32]}",
        "--set", "student_architecture=mlp", "--set", "student_args={hidden: [16]}", "--set", "epochs=60",
        "--set", "distil_epochs=30", "--set", "prune_finetune_epochs=10", "--set", "learning_rate=0.003",
        "--set", "tolerance=0.05", "--set", "tolerance_mode=relative", "--set", "rmse_ceiling=75",
        "--set", "accuracy_floor=0.0", name="diabetes")
    torch_row = rows["torch eager fp32"]
    assert torch_row["rmse"] < 70  # predicting the mean scores about 77 on this split
    assert {"onnx fp32", "pruned fp32", "student fp32", "static-int8"} <= set(rows)
    result = summary["result"]
    assert "RMSE" in result["reason"]
    assert "RMSE" in proc.stdout and "accuracy" not in proc.stdout.split("selected:")[-1].lower().split("report:")[0]
    report = Path(result["report"]).read_text()
    assert "RMSE" in report
    assert result["blessed"] is True
    chosen = rows[result["selected_variant"]]
    assert chosen["rmse"] <= torch_row["rmse"] * 1.05 + 1e-9
    # the served model answers in the target's units
    from modelpress.export import runtime
    ds = data.load_dataset(tasks["make-dataset"]["artifacts"]["dataset"])
    sess = runtime.session(tmp_path / "repo" / "diabetes" / "1")
    pred = runtime.run_logits(sess, ds.test.x)[:, 0]
    assert float(np.sqrt(np.mean((pred - ds.test.y) ** 2))) == pytest.approx(chosen["rmse"], rel=1e-4)

    params = _vertex_request(tmp_path, {"source": "gs://acme-ml/data/diabetes.csv", "task": "regression",
                                        "tolerance": 0.05, "tolerance_mode": "relative", "rmse_ceiling": 75.0})
    assert params["task"] == "regression" and params["rmse_ceiling"] == 75.0
