"""The optimise pipeline through kfp.local: it deploys a blessed model, then refuses a worse one."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from modelpress.deploy import repository

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "epochs=10", "--set", "model_args={channels: [16, 32]}", "--set", "prune_finetune_epochs=2",
         "--set", "student_args={channels: [4, 8]}", "--set", "distil_epochs=3",
         "--set", "quantisation_methods=[static-int8, dynamic-int8]", "--set", "calibration_samples=64",
         "--set", "window_seconds=0.05", "--set", "max_windows=4", "--set", "tolerance=0.02",
         "--set", "accuracy_floor=0.5"]


def _run(tmp_path, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "run_local.py"), "optimise", *SMALL, *args,
                           "--set", f"repository={tmp_path / 'repo'}", "--pipeline-root", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)
    summaries = sorted((tmp_path / "runs").glob("optimise-*/summary.json"))
    return proc, json.loads(summaries[-1].read_text()) if summaries else None


def _raw_test_digits():
    """scikit-learn's digits exactly as it ships them (0..16), the test split's rows."""
    from sklearn.datasets import load_digits

    from modelpress import data

    digits = load_digits()
    test = data.split_indices(digits.target, val_fraction=0.15, test_fraction=0.2, seed=0)["test"]
    return digits.images[test][:, None].astype(np.float32), digits.target[test]


def _serve_raw_digits(tmp_path, bench, tasks):
    """What the pipeline deployed, plus its pruned and quantised variants, served by `modelpress serve`
    and sent raw digits by Triton's client: the pipeline's own accuracy on the same rows."""
    import tritonclient.http as httpclient

    from tests.serving.conftest import start_server, stop_server

    rows = {r["name"]: r for r in bench["variants"]}
    deployed = json.loads((tmp_path / "repo" / "digits" / "1" / "meta.json").read_text())
    for name, variant in (("digits-pruned", "pruned fp32"), ("digits-int8", "static-int8")):
        repository.deploy(rows[variant]["path"], tmp_path / "repo", name)
    x, y = _raw_test_digits()
    server = start_server(tmp_path / "repo", tmp_path)
    try:
        client = httpclient.InferenceServerClient(server.host)
        meta = client.get_model_metadata("digits")
        assert meta["parameters"]["input"]["value_range"] == [0.0, 16.0]  # tells a client what to send
        assert meta["parameters"]["input"]["layout"] == "NCHW"
        for name, variant in (("digits", deployed["variant"]), ("digits-pruned", "pruned fp32"),
                              ("digits-int8", "static-int8")):
            logits = []
            for i in range(0, len(x), 64):  # the deployed config's max_batch_size
                inp = httpclient.InferInput("input", list(x[i:i + 64].shape), "FP32")
                inp.set_data_from_numpy(x[i:i + 64])
                out = client.infer(name, [inp], outputs=[httpclient.InferRequestedOutput("logits")])
                logits.append(out.as_numpy("logits"))
            logits = np.concatenate(logits)
            accuracy = float((logits.argmax(1) == y).mean())
            assert accuracy == rows[variant]["accuracy"], (name, variant)
            if name == "digits":
                assert accuracy >= 0.95
    finally:
        stop_server(server)


def test_optimise_deploys_then_gates_a_worse_challenger(tmp_path):
    proc, summary = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    tasks = {t["task"]: t for t in summary["tasks"]}
    assert {"train", "prune", "distil", "benchmark", "select", "deploy-local"} <= set(tasks)
    quantise_tasks = [t for t in summary["tasks"] if t["task"].startswith("quantise")]
    # two methods x three models; kfp.local runs loop iterations concurrently
    assert len(quantise_tasks) == 6 and all(t["status"] == "SUCCESS" for t in quantise_tasks)
    assert all(t["status"] == "SUCCESS" for t in summary["tasks"])
    result = summary["result"]
    assert result["blessed"] is True and result["deployed_version"] == 1
    assert result["selected_variant"] and result["ratios"]["speedup_p50_vs_torch"] > 1
    assert repository.versions(tmp_path / "repo", "digits") == [1]
    assert repository.read_config(tmp_path / "repo", "digits").max_batch_size == 64
    card = (tmp_path / "repo" / "digits" / "1" / "model_card.md").read_text()  # the version's model card
    assert f"- **Variant:** {result['selected_variant']}" in card and "- **Blessing:** **blessed**" in card
    bench = json.loads(Path(tasks["benchmark"]["artifacts"]["results"]).read_text())
    names = {r["name"] for r in bench["variants"]}
    assert {"torch eager fp32", "onnx fp32", "pruned fp32", "student fp32", "static-int8",
            "pruned static-int8", "student static-int8"} <= names
    assert all(r["latency_ms"]["n"] > 0 for r in bench["variants"])
    report = Path(result["report"]).read_text()
    assert "data:image/png;base64," in report and "★" in report
    assert tasks["benchmark"]["overhead_seconds"] is not None
    assert "selected:" in proc.stdout and "deployed: version 1" in proc.stdout
    assert (Path(summary["run_dir"]) / "report.html").read_text().startswith("<!doctype html>")
    assert f"report: {summary['run_dir']}/report.html" in proc.stdout  # opens in a browser from there

    _serve_raw_digits(tmp_path, bench, tasks)

    # A crippled challenger (one epoch at a tiny learning rate) is scored against champion v1
    # on the same test split and is not deployed.
    proc, summary = _run(tmp_path, "--set", "epochs=1", "--set", "learning_rate=0.00001", "--set", "distil_epochs=1",
                         "--set", "prune_finetune_epochs=1", "--set", "accuracy_floor=0.8")
    assert proc.returncode == 0, proc.stdout[-4000:]
    result = summary["result"]
    assert result["blessed"] is False and result["deployed_version"] is None
    assert "below the floor" in result["reason"] or "regresses" in result["reason"]
    bench_task = next(t for t in summary["tasks"] if t["task"] == "benchmark")
    bench = json.loads(Path(bench_task["artifacts"]["results"]).read_text())
    assert any(r["role"] == "champion" and r["name"] == "champion v1" for r in bench["variants"])
    assert repository.versions(tmp_path / "repo", "digits") == [1]
    assert "deployed: nothing (not blessed)" in proc.stdout
