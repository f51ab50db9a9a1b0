"""The training pipeline, for real, through kfp.local.SubprocessRunner."""

import json
import os
import subprocess
import sys
from pathlib import Path

from modelpress import data
from modelpress.export import runtime

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "pipelines" / "run_local.py"), *args,
                           "--pipeline-root", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_training_pipeline_runs_locally_and_caches(tmp_path):
    proc = _run(tmp_path, "training", "--set", "epochs=4", "--set", "model_args={channels: [8, 16]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary_path = next((tmp_path / "runs").glob("training-*/summary.json"))
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "SUCCESS"
    assert [t["task"] for t in summary["tasks"]] == ["make-dataset", "train", "export-onnx"]
    assert all(t["status"] == "SUCCESS" and t["seconds"] > 0 for t in summary["tasks"])
    train, export = summary["tasks"][1], summary["tasks"][2]
    assert train["metrics"]["epochs_run"] == 4 and "test_accuracy" in train["metrics"]
    onnx_dir = export["artifacts"]["onnx_model"]
    ds = data.load_dataset(summary["tasks"][0]["artifacts"]["dataset"])
    logits = runtime.run_logits(runtime.session(onnx_dir), ds.test.x)
    assert float((logits.argmax(1) == ds.test.y).mean()) == export["metrics"]["test_accuracy"]
    assert "pipeline training: SUCCESS" in proc.stdout and str(summary_path) in proc.stdout
    assert (summary_path.parent / "run.log").exists()

    again = _run(tmp_path, "training", "--set", "epochs=4", "--set", "model_args={channels: [8, 16]}")
    assert again.returncode == 0
    second = json.loads(sorted((tmp_path / "runs").glob("training-*/summary.json"))[-1].read_text())
    assert [t["status"] for t in second["tasks"]] == ["CACHED"] * 3
    assert second["tasks"][2]["artifacts"]["onnx_model"] == onnx_dir


def test_bad_config_value_fails_before_running(tmp_path):
    proc = _run(tmp_path, "training", "--set", "epocs=3")
    assert proc.returncode == 2
    assert "did you mean 'epochs'" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run(tmp_path, "training", "--set", "learning_rate=-1")
    assert proc.returncode == 2 and "learning_rate must be" in proc.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("training-*"))


def test_failing_task_is_reported_with_its_error(tmp_path):
    bad = tmp_path / "bad.csv"  # exists, so it passes the checks before the run; fails inside the step
    bad.write_text("a,label\n1,x\n2,y\nthree,x\n")
    proc = _run(tmp_path, "training", "--set", f"source={bad}", "--set", "architecture=mlp")
    assert proc.returncode == 1
    reason = "line 4, column 'a': 'three' is not a number"
    assert "make-dataset: FAILURE" in proc.stdout
    # one clear line on the console, repeated in the summary, and last on stderr
    assert f"make-dataset failed: {bad} {reason}" in proc.stdout and "Traceback" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: make-dataset failed: {bad} {reason}")
    summary = json.loads(next((tmp_path / "runs").glob("training-*/summary.json")).read_text())
    assert summary["status"] == "FAILURE"
    assert reason in summary["tasks"][0]["error"]


def test_a_missing_source_is_refused_before_running(tmp_path):
    proc = _run(tmp_path, "training", "--set", f"source={tmp_path / 'missing.csv'}")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_docker_runner_without_an_engine_names_the_fix(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path / 'no-engine.sock'}"}
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "run_local.py"), "training", "--runner", "docker",
                           "--pipeline-root", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"no Docker engine answers at unix://{tmp_path}" in proc.stderr
    assert "`docker info`" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "model_repository").exists()


def test_docker_runner_mounts_the_host_paths_tasks_use(tmp_path):
    from pipelines import local_run, run_local

    csv = tmp_path / "data.csv"
    csv.write_text("a,label\n1,0\n")
    root = tmp_path / "runs"
    paths = run_local.host_paths({"source": str(csv), "repository": str(tmp_path / "repo"), "warm_start": "",
                                  "epochs": 3}, root)
    assert paths == [tmp_path / "repo", csv] and (tmp_path / "repo").is_dir()  # the repository is written to
    # built-in dataset names, paths under the (already mounted) root and missing inputs stay out
    assert run_local.host_paths({"source": "digits", "repository": str(root / "repo"),
                                 "warm_start": str(tmp_path / "missing")}, root) == []
    args = local_run.docker_runner(paths).container_run_args
    assert [(m["Source"], m["Target"], m["Type"]) for m in args["mounts"]] == [(str(p), str(p), "bind") for p in paths]
    assert args["user"] == f"{os.getuid()}:{os.getgid()}"  # writes to the mounts, files owned by the caller


def test_image_option_needs_the_docker_runner(capsys):
    from pipelines import run_local

    assert run_local.main(["training", "--image", "modelpress-cpu:abc"]) == 2
    assert "--image applies to --runner docker only" in capsys.readouterr().err
