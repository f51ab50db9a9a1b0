"""What a user types that is wrong, or changes under a cache: refused before anything runs, or rerun."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import run_local

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("pipeline, setting, named", [
    ("optimise", "quantisation_methods=[int4]", ["quantisation_methods", "'int4'", "static-int8", "dynamic-int8", "fp16"]),
    ("optimise", "quantisation_methods=[]", ["quantisation_methods is empty", "static-int8"]),
    ("optimise", "student_architecture=none", ["student_architecture", "'none'", "cnn", "mlp", "mobilenet_v2"]),
    ("training", "model_args={hidden: [8]}", ["model_args", "['hidden']", "'cnn'", "channels"]),
    ("training", "model_args={channels: [0, 8]}", ["model_args", "'cnn'"]),
    ("training", "source=no/such/data.csv", ["source", "no/such/data.csv", "does not exist"]),
    ("optimise", "tolerance_mode=percent", ["tolerance_mode", "absolute", "relative"]),
    ("optimise", "objective=speed", ["objective", "p50", "throughput"]),
    # your model (issue 12): each refused before the data step, naming the fix
    ("optimise", "architecture=torchvision:resnet81", ["architecture", "resnet81", "resnet18"]),
    ("optimise", "architecture=timm:resnet_tiny_xx", ["architecture", "timm", "resnet_tiny_xx"]),
    ("optimise", "architecture=no_such_pkg.nets:Net", ["architecture", "no_such_pkg.nets", "code_dir"]),
    ("optimise", "steps=[prune, qantise]", ["steps", "'qantise'", "did you mean 'quantise'"]),
    ("optimise", "epochs=0", ["epochs 0", "set weights"]),
    ("optimise", "weights=no/such/ckpt.pth", ["weights", "no/such/ckpt.pth", "does not exist"]),
])
def test_bad_values_fail_before_any_step_in_one_line(tmp_path, capsys, monkeypatch, pipeline, setting, named):
    monkeypatch.chdir(tmp_path)
    code = run_local.main([pipeline, "--set", setting, "--pipeline-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    for text in named:
        assert text in err[0]
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_an_architecture_override_leaves_the_configs_model_args_behind(capsys):
    # configs/local.yaml gives cnn channels; an mlp takes none of them
    from pipelines import settings

    params = settings.load("local").pipeline_parameters("training", {"architecture": "mlp", "epochs": 5})
    assert params["architecture"] == "mlp" and params["model_args"] == {}
    kept = settings.load("local").pipeline_parameters("training", {"epochs": 5})
    assert kept["model_args"] == {"channels": [16, 32]}


def _train(tmp_path, csv):
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "run_local.py"), "training",
                           "--set", f"source={csv}", "--set", "label_column=species", "--set", "architecture=mlp",
                           "--set", "epochs=3", "--pipeline-root", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(sorted((tmp_path / "runs").glob("training-*/summary.json"))[-1].read_text())
    return proc, {t["task"]: t for t in summary["tasks"]}


def test_editing_the_csv_in_place_reruns_the_data_and_training_steps(tmp_path):
    from sklearn.datasets import load_iris

    iris = load_iris()
    rows = ["a,b,c,d,species"] + [",".join(f"{v:g}" for v in x) + f",{iris.target_names[y]}"
                                  for x, y in zip(iris.data, iris.target)]
    csv = tmp_path / "iris.csv"
    csv.write_text("\n".join(rows) + "\n")
    _, first = _train(tmp_path, csv)
    assert first["make-dataset"]["status"] == "SUCCESS" and first["train"]["status"] == "SUCCESS"
    _, same = _train(tmp_path, csv)
    assert [t["status"] for t in same.values()] == ["CACHED"] * 3  # same content: reused

    csv.write_text("\n".join(rows[:1] + rows[1:-30]) + "\n")  # the same path, 30 rows fewer
    proc, edited = _train(tmp_path, csv)
    assert edited["make-dataset"]["status"] == "SUCCESS" and edited["train"]["status"] == "SUCCESS"
    assert sum(edited["make-dataset"]["artifact_metadata"]["dataset"]["splits"].values()) == 120
    fingerprints = {t["artifact_metadata"]["dataset"]["fingerprint"] for t in (first["make-dataset"],
                                                                               edited["make-dataset"])}
    assert len(fingerprints) == 2
    assert "content fingerprint sha256:" in proc.stdout  # said in the log
