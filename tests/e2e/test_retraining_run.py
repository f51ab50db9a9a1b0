"""The retraining pipeline through kfp.local: deploy a first challenger, warm start the next, gate a bad one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelpress.deploy import repository

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "epochs=6", "--set", "learning_rate=0.005", "--set", "model_args={channels: [8, 16]}",
         "--set", "window_seconds=0.05", "--set", "max_windows=3", "--set", "accuracy_floor=0.8",
         "--set", "tolerance=0.02"]


def _run(tmp_path, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "run_local.py"), "retraining", *SMALL, *args,
                           "--set", f"repository={tmp_path / 'repo'}", "--pipeline-root", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    summaries = sorted((tmp_path / "runs").glob("retraining-*/summary.json"))
    summary = json.loads(summaries[-1].read_text()) if summaries else None
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc, summary, {t["task"]: t for t in summary["tasks"]}


def _scores(tasks) -> dict:
    results = json.loads(Path(tasks["score-challenger"]["artifacts"]["results"]).read_text())
    return {r["role"]: r for r in results["variants"]}


def test_a_first_challenger_is_blessed_by_the_floor_and_deployed(tmp_path):
    proc, summary, tasks = _run(tmp_path)
    assert [t["task"] for t in summary["tasks"]] == ["make-dataset", "train-challenger", "export-onnx",
                                                      "score-challenger", "select", "deploy-local"]
    assert all(t["status"] == "SUCCESS" for t in summary["tasks"])
    assert "champion" not in _scores(tasks)
    result = summary["result"]
    assert result["blessed"] is True and result["deployed_version"] == 1
    assert "no champion deployed" in result["reason"]
    assert repository.versions(tmp_path / "repo", "digits") == [1]
    assert "deployed: version 1" in proc.stdout


@pytest.mark.slow
def test_warm_started_challenger_is_scored_against_the_champion_and_a_regression_is_gated(tmp_path):
    _, _, first = _run(tmp_path)
    champion_model = first["train-challenger"]["artifacts"]["model"]
    champion_accuracy = _scores(first)["candidate"]["accuracy"]

    # Warm start from the champion's weights: one epoch at a tiny learning rate keeps its accuracy.
    _, summary, tasks = _run(tmp_path, "--set", f"warm_start={champion_model}", "--set", "epochs=1",
                             "--set", "learning_rate=0.00001")
    trained = tasks["train-challenger"]
    assert trained["artifact_metadata"]["model"]["warm_start"] == champion_model
    assert trained["metrics"]["warm_start_accuracy"] == pytest.approx(champion_accuracy)
    scores = _scores(tasks)
    assert scores["champion"]["name"] == "champion v1"
    assert scores["champion"]["accuracy"] == pytest.approx(champion_accuracy)  # same test split
    assert summary["result"]["blessed"] is True and summary["result"]["deployed_version"] == 2

    # The same settings from scratch learn nothing: refused, the champion stays.
    proc, summary, tasks = _run(tmp_path, "--set", "epochs=1", "--set", "learning_rate=0.00001")
    assert _scores(tasks)["champion"]["name"] == "champion v2"
    assert summary["result"]["blessed"] is False and summary["result"]["deployed_version"] is None
    assert "deploy-local" not in tasks
    assert repository.versions(tmp_path / "repo", "digits") == [1, 2]
    assert "deployed: nothing (not blessed)" in proc.stdout
