"""The task's quality metric as the results, the decision and the reports read it.

A results file says its task and quality metric once at the top (`comparison.benchmark`);
files from before tasks say neither and are classification. Each row carries the task's
scores under their own names (accuracy; or rmse, mae, r2), so one lookup serves both tasks.
"""

from __future__ import annotations

import math

from modelpress.core.results import Role
from modelpress.evaluation import REGRESSION_SCORES, QualityMetric, quality_metric

LABELS = {"accuracy": "accuracy", "rmse": "RMSE", "mae": "MAE", "r2": "R²"}
NO_TORCH = "no torch model: started from ONNX"


def task_of(results: dict) -> str:
    return results.get("task") or "classification"


def metric_of(results: dict) -> QualityMetric:
    """The metric the results are judged by: as recorded, else the task's."""
    recorded = results.get("quality_metric")
    if recorded:
        return QualityMetric(recorded["name"], bool(recorded["higher_is_better"]), recorded["label"])
    return quality_metric(task_of(results))


def describe(metric: QualityMetric) -> dict:
    return {"name": metric.name, "higher_is_better": metric.higher_is_better, "label": metric.label}


def score_names(task: str | None) -> tuple[str, ...]:
    """The scores a row of this task carries, headline first."""
    return REGRESSION_SCORES if task == "regression" else ("accuracy",)


def label(name: str) -> str:
    return LABELS.get(name, name)


def fmt(name: str, value, trim: bool = False) -> str:
    """A score as the reports print it: accuracy and R² to 4 decimals; errors (RMSE, MAE), which
    are in the target's own units and of any size, to 4 significant digits without an exponent
    (`trim`: without trailing zeros, as sentences say them: 56.9, not 56.90)."""
    if value is None:
        return "–"
    if name in ("accuracy", "r2"):
        return f"{value:.4f}"
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    digits = min(6, max(0, 3 - math.floor(math.log10(abs(value)))))
    text = f"{value:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if trim and "." in text else text


def said(name: str, value) -> str:
    """'RMSE 54.21', 'accuracy 0.9800': a score in a sentence."""
    return f"{label(name)} {fmt(name, value, trim=True)}"


def value(row: dict | None, metric: QualityMetric):
    return None if row is None else row.get(metric.name)


def baseline_row(rows: list[dict]) -> dict | None:
    """What sets the quality bar: the torch fp32 model, or with none (an ONNX start) the ONNX fp32 export."""
    torch = next((r for r in rows if r["role"] == Role.BASELINE), None)
    return torch or next((r for r in rows if r["role"] == Role.BASELINE_ONNX), None)


def has_torch_baseline(results: dict) -> bool:
    return any(r["role"] == Role.BASELINE for r in results["variants"])


# ------------------------------------------------------------------ a run's summary (pipelines.local_run)

def highlights(results: dict, chosen: str | None) -> dict:
    """What a run's summary says about the results: p50 (ms) and its instability for the chosen
    variant and both baselines (`latency`), the chosen variant's quality metric beside the
    baseline's (`quality`), the task, and whether there was a torch model (`torch_baseline`)."""
    from modelpress.selection.report import stability_label

    rows = results.get("variants") or []
    picked = {"chosen": next((r for r in rows if r["name"] == chosen), None),
              "torch": next((r for r in rows if r["role"] == Role.BASELINE), None),
              "onnx_fp32": next((r for r in rows if r["role"] == Role.BASELINE_ONNX), None)}
    out = {"latency": {k: {"name": r["name"], "p50_ms": r["latency_ms"]["p50"], "unstable": stability_label(r)}
                       for k, r in picked.items() if r and r.get("latency_ms")}}
    if not rows:
        return out
    metric, baseline = metric_of(results), baseline_row(rows)
    out.update(task=task_of(results), torch_baseline=picked["torch"] is not None,
               quality={"name": metric.name, "label": metric.label, "chosen": value(picked["chosen"], metric),
                        "baseline": value(baseline, metric), "baseline_name": (baseline or {}).get("name")})
    return out


def summary_lines(res: dict) -> list[str]:
    """The chosen variant's quality metric beside the baseline's ("RMSE 53.9 (baseline 54.4)"),
    with no torch model, that the run started from ONNX, and the edge export's figures if it ran."""
    from modelpress.selection.edge_benchmark import summary_lines as edge_lines  # it imports this module

    q, lines = res.get("quality") or {}, []
    if q.get("chosen") is not None:
        base = f" (baseline {fmt(q['name'], q['baseline'], trim=True)})" if q.get("baseline") is not None else ""
        lines.append(f"  {said(q['name'], q['chosen'])}{base}")
    if res.get("torch_baseline") is False:
        lines.append(f"  {NO_TORCH}: the ONNX fp32 export is the baseline, no ratios vs torch")
    return lines + edge_lines(res.get("edge"))


def delta_text(ratios: dict, key: str) -> str:
    """The chosen variant's quality against a baseline (`decision.ratios`' `<metric>_delta_vs_<key>`):
    accuracy in points, an error such as RMSE in its own units."""
    if f"accuracy_delta_vs_{key}" in ratios:
        return f"accuracy {100 * ratios[f'accuracy_delta_vs_{key}']:+.2f} points"
    d = ratios.get(f"rmse_delta_vs_{key}")
    if d is None:
        return "quality not compared"
    return f"{label('rmse')} {'+' if d >= 0 else '-'}{fmt('rmse', abs(d))}"
