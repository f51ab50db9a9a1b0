"""The report in the task's metric: RMSE, MAE and R² for regression, never accuracy; and what it
says when the run had no torch model or the recipe left steps out."""

import re

from modelpress.selection import decision, report, report_plots


def _row(name, rmse, p50, role="candidate", kind="onnx", size=10_000):
    return {"name": name, "role": role, "kind": kind, "task": "regression", "rmse": rmse, "mae": rmse * 0.8,
            "r2": 1 - rmse / 100, "size_bytes": size, "gzip_bytes": size // 2, "params": 100, "macs": 1000,
            "throughput_per_s": 1000 / p50, "runtime": "onnxruntime", "note": None,
            "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p95": p50 * 1.2, "p99": p50 * 1.5, "mean": p50,
                           "n": 100, "stable": True, "windows": 3},
            "window_p50_ms": [p50] * 3}


def _results(torch=True, left_out=()):
    rows = [_row("onnx fp32", 54.1, 0.2, role="baseline-onnx", size=39_000), _row("dynamic int8", 55.2, 0.05),
            _row("static int8", 61.0, 0.04, size=11_000)]
    if torch:
        rows.insert(0, _row("torch eager fp32", 54.1, 1.0, role="baseline", kind="torch", size=40_000))
    return {"task": "regression", "quality_metric": {"name": "rmse", "higher_is_better": False, "label": "RMSE"},
            "variants": rows, "left_out": list(left_out), "gpu": [],
            "dataset": {"source": "diabetes", "test_examples": 89, "class_names": []},
            "machine": {"cpu_model": "x", "cpu_count": 2, "threads": 2, "cpu_flags": ["avx2"], "vnni": False}}


def test_a_regression_report_speaks_rmse_and_never_accuracy():
    results = _results()
    out = decision.decide(results, decision.Policy(tolerance=2.0, rmse_ceiling=60.0))
    assert out["decision"]["chosen"] == "dynamic int8" and out["blessing"]["blessed"] is True
    page = report.render_html(results, out["decision"], out["blessing"])
    assert "accura" not in page.lower()
    main = page.split("<table>")[1].split("</table>")[0]
    assert "<th>RMSE</th><th>MAE</th><th>R²</th>" in main
    assert re.search(r"<tr class=\"chosen\"><td>dynamic int8 ★</td><td>candidate</td><td>55.20</td><td>44.16</td>"
                     r"<td>0.4480</td>", main)
    assert "RMSE &lt;= 56.1 (baseline 54.1 + tolerance 2)" in page  # the reason, escaped
    assert "<b>Chosen variant:</b> RMSE 55.2, MAE 44.16, R² 0.4480" in page
    assert "RMSE 55.2 is within the ceiling 60" in page
    assert "<h2>Latency vs RMSE</h2>" in page and "Confusion matrix" not in page
    constraints = page.split("<h2>Constraints</h2>")[1].split("</table>")[0]
    assert "<th>RMSE</th>" in constraints and "rmse: FAIL" in constraints  # static int8 is over the bar
    assert "test RMSE (lower is better)" in page
    md = report.markdown_table(results, out["decision"])
    assert md.splitlines()[0].startswith("| variant | role | RMSE | MAE | R² | p50 |")
    assert "| dynamic int8 **(chosen)** | candidate | 55.20 | 44.16 | 0.4480 |" in md
    assert "accura" not in md.lower()


def test_the_report_says_when_there_was_no_torch_model_and_what_was_left_out():
    left = [{"name": "pruned fp32", "step": "prune", "reason": "the recipe leaves prune out"},
            {"name": "pruned dynamic-int8", "step": "prune", "reason": "the recipe leaves prune out"}]
    results = _results(torch=False, left_out=left)
    out = decision.decide(results, decision.Policy(tolerance=2.0))
    assert out["decision"]["baseline"] == "onnx fp32"
    page = report.render_html(results, out["decision"], out["blessing"])
    assert "no torch model: started from ONNX: the ONNX fp32 export sets the RMSE bar" in page
    assert "Left out: pruned fp32, pruned dynamic-int8 (prune skipped: the recipe leaves prune out)." in page
    assert "torch eager fp32" not in page and "Only ONNX variants are deployment candidates" not in page
    md = report.markdown_table(results, out["decision"])
    assert "no torch model: started from ONNX" in md and "Left out: pruned fp32" in md


def test_the_pareto_front_of_an_error_prefers_lower():
    points = [("fast bad", 0.1, 60.0), ("slow good", 1.0, 50.0), ("slow bad", 1.0, 70.0)]
    assert report_plots.pareto_front(points, higher_is_better=False) == ["fast bad", "slow good"]
    assert report_plots.pareto_front(points) == ["fast bad", "slow bad"]
    pts = [{"key": i, "name": n, "p50": p, "rmse": q, "stable": True, "window_range": None}
           for i, (n, p, q) in enumerate(points, 1)]
    fig, ax, labels = report_plots.latency_accuracy(pts, "slow good", 56.0, metric="rmse", label="test RMSE",
                                                    higher_is_better=False)
    assert ax.get_ylabel() == "test RMSE (lower is better)" and len(labels) == 3
    assert "RMSE bar (tolerance)" in ax.get_legend_handles_labels()[1]
    report_plots.pyplot().close(fig)
