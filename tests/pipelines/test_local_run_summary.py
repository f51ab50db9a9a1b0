"""The local run's printed summary says the task's quality metric and whether there was a torch model."""

import json

from pipelines import local_run


def _row(name, role, p50, **scores):
    return {"name": name, "role": role, "kind": "torch" if role == "baseline" else "onnx", "size_bytes": 1000,
            "latency_ms": {"p50": p50, "stable": True}, **scores}


def _tasks(tmp_path, rows, metrics, task=None):
    results = {"variants": rows}
    if task:
        results.update(task=task, quality_metric={"name": "rmse", "higher_is_better": False, "label": "RMSE"})
    (tmp_path / "results.json").write_text(json.dumps(results))
    bench = {"task": "benchmark", "artifacts": {"results": str(tmp_path / "results.json")}}
    select = {"task": "select", "status": "SUCCESS", "parameters": {"Output": True}, "metrics": metrics,
              "artifacts": {"report": "report.html", "table": "table.md"},
              "artifact_metadata": {"chosen": {"variant": "int8", "reason": "int8 has the best p50"}}}
    tasks = [bench, select]
    for t in tasks:
        t.update(status="SUCCESS", seconds=1.0, overhead_seconds=None, metrics=t.get("metrics", {}),
                 artifacts=t["artifacts"])
    return tasks


def _printed(tasks) -> str:
    res = local_run._highlights(tasks)
    return local_run.format_summary({"pipeline": "optimise", "status": "SUCCESS", "seconds": 2.0, "tasks": tasks,
                                     "result": res})


def test_a_regression_summary_prints_rmse_against_the_baseline(tmp_path):
    rows = [_row("torch eager fp32", "baseline", 1.0, rmse=54.4), _row("onnx fp32", "baseline-onnx", 0.2, rmse=54.4),
            _row("int8", "candidate", 0.1, rmse=53.9)]
    metrics = {"speedup_p50_vs_torch": 10.0, "size_ratio_vs_torch": 0.25, "rmse_delta_vs_torch": -0.5,
               "stable_vs_torch": 1.0, "rmse": 53.9}
    out = _printed(_tasks(tmp_path, rows, metrics, task="regression"))
    assert "  RMSE 53.9 (baseline 54.4)" in out.splitlines()
    assert "vs torch eager fp32: 10.00x faster" in out and "0.250x the size, RMSE -0.5" in out
    assert "accuracy" not in out and "no torch model" not in out


def test_a_run_from_onnx_says_so_and_compares_with_onnx_fp32_only(tmp_path):
    rows = [_row("onnx fp32", "baseline-onnx", 0.2, accuracy=0.98), _row("int8", "candidate", 0.1, accuracy=0.975)]
    metrics = {"speedup_p50_vs_onnx_fp32": 2.0, "size_ratio_vs_onnx_fp32": 0.3, "accuracy_delta_vs_onnx_fp32": -0.005,
               "stable_vs_onnx_fp32": 1.0, "accuracy": 0.975}
    out = _printed(_tasks(tmp_path, rows, metrics))
    lines = out.splitlines()
    assert "  accuracy 0.9750 (baseline 0.9800)" in lines
    assert any(line.startswith("  no torch model: started from ONNX") for line in lines)
    assert "vs torch eager" not in out and "vs ONNX fp32: 2.00x faster" in out and "accuracy -0.50 points" in out
