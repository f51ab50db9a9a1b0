"""Quality-aware selection and blessing, for either task.

Every score is the task's quality metric (`evaluation.quality_metric`): accuracy for
classification (higher is better), RMSE for regression (lower is better). The tolerance is
in the metric's own units (absolute: accuracy points/100, or RMSE in the target's units) or
a share of the reference (relative); a variant passes when it loses no more than that.

Selection: among the deployable (ONNX) variants within the tolerance of the baseline (torch
fp32; with no torch model, an ONNX start, the ONNX fp32 export) and that meet the optional
p95-latency and size budgets, take the best on the objective (default: lowest p50 latency; `edge`:
the smallest model, for a device, with the p95 budget required).
Variants within the measured noise of the best are ties, broken by size, then the quality metric.

Blessing (the TFX rule): the chosen model must clear an absolute bar (classification: the
accuracy floor; regression: the RMSE ceiling) and must not regress beyond the tolerance
against the deployed champion, scored on the same test split in the same run. With no
champion, the absolute bar alone decides. A challenger identical to the champion (same
bytes) is not deployed again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from modelpress.core.errors import ModelpressError
from modelpress.core.results import Role
from modelpress.evaluation import QualityMetric, quality_metric
from modelpress.selection import quality
from modelpress.selection.quality import fmt, said
from modelpress.selection.report import UNITS

OBJECTIVES = {"p50": ("latency_ms", "p50", 1), "p95": ("latency_ms", "p95", 1),
              "size": ("size_bytes", None, 1), "throughput": ("throughput_per_s", None, -1),
              # for a device: the smallest model within the quality tolerance and the p95 budget (required)
              "edge": ("size_bytes", None, 1)}
GOALS = {"edge": "size within the p95 budget"}  # how the reason names an objective, where not by its key
UNKNOWN_TASK = (None, "auto")  # config validation before the dataset step has said the task


@dataclass
class Policy:
    tolerance: float = 0.01  # quality that may be lost against the reference: metric units, or a share
    tolerance_mode: str = "absolute"  # "absolute" (the metric's own units) or "relative" (share of reference)
    p95_budget_ms: float = 0.0  # 0: no budget
    size_budget_bytes: int = 0  # 0: no budget
    objective: str = "p50"
    accuracy_floor: float = 0.0  # classification: the least test accuracy a blessed model has
    rmse_ceiling: float = 0.0  # regression: the most test RMSE a blessed model has (0: no ceiling)
    min_noise: float = 0.02  # ties: never finer than 2% of the best value

    def validate(self, task: str | None = "classification") -> "Policy":
        """Check the ranges; those of an absolute tolerance depend on the task (`None` or "auto":
        not known yet, so only what holds for every task is checked)."""
        if self.tolerance_mode not in ("absolute", "relative"):
            raise ModelpressError(f"tolerance_mode must be 'absolute' or 'relative', got {self.tolerance_mode!r}")
        if task not in UNKNOWN_TASK:
            quality_metric(task)  # an unknown task names the known ones
        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ModelpressError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.tolerance_mode == "relative" and self.tolerance >= 1:
            raise ModelpressError(f"a relative tolerance is a share of the reference, in [0, 1), got {self.tolerance}")
        if task == "classification" and self.tolerance >= 1:
            raise ModelpressError(f"tolerance must be in [0, 1) for classification (accuracy points / 100), "
                                  f"got {self.tolerance}")
        if self.objective not in OBJECTIVES:
            raise ModelpressError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "edge" and not self.p95_budget_ms > 0:
            raise ModelpressError("objective 'edge' is the smallest model within a latency budget: set p95_budget_ms "
                                  "> 0 (the most p95 batch-1 ms the device allows), or use objective 'size'")
        if not 0 <= self.accuracy_floor <= 1:
            raise ModelpressError(f"accuracy_floor must be in [0, 1], got {self.accuracy_floor}")
        if not math.isfinite(self.rmse_ceiling) or self.rmse_ceiling < 0:
            raise ModelpressError(f"rmse_ceiling must be >= 0 in the target's units (0 means no ceiling), "
                                  f"got {self.rmse_ceiling}")
        if self.p95_budget_ms < 0 or self.size_budget_bytes < 0:
            raise ModelpressError("budgets must be >= 0 (0 means no budget)")
        return self

    def allowed_loss(self, reference: float) -> float:
        """How much worse than `reference` a variant may be, in the metric's units."""
        return self.tolerance * abs(reference) if self.tolerance_mode == "relative" else self.tolerance

    def bar(self, reference: float, metric: QualityMetric | None = None) -> float:
        """The worst value that still passes (accuracy: the least; RMSE: the most)."""
        metric = metric or quality_metric("classification")
        loss = self.allowed_loss(reference)
        return reference - loss if metric.higher_is_better else reference + loss

    def passes(self, reference: float, value: float, metric: QualityMetric) -> bool:
        return metric.loss_of(reference, value) <= self.allowed_loss(reference) + 1e-12

    def bar_text(self, reference: float, metric: QualityMetric, against: str = "baseline") -> str:
        """'RMSE <= 56.9 (baseline 54.1 + tolerance 2.8)', 'accuracy >= 0.9700 (baseline 0.9800 - tolerance 0.0100)'."""
        sign, op = ("-", ">=") if metric.higher_is_better else ("+", "<=")
        loss = fmt(metric.name, self.allowed_loss(reference), trim=True)
        tol = f"{self.tolerance * 100:g}% of it, {loss}" if self.tolerance_mode == "relative" else loss
        return (f"{metric.label} {op} {fmt(metric.name, self.bar(reference, metric), trim=True)} "
                f"({against} {fmt(metric.name, reference, trim=True)} {sign} tolerance {tol})")

    def absolute_bar(self, value: float, metric: QualityMetric) -> tuple[bool, str]:
        """(passes, why) for the bar that holds champion or not: the accuracy floor or the RMSE ceiling."""
        score = said(metric.name, value)
        if metric.higher_is_better:
            floor = fmt(metric.name, self.accuracy_floor, trim=True)
            if value < self.accuracy_floor:
                return False, f"{score} is below the floor {floor}"
            return True, f"{score} clears the floor {floor}"
        if not self.rmse_ceiling:
            return True, f"{score}, no {metric.label} ceiling set (rmse_ceiling 0)"
        ceiling = fmt(metric.name, self.rmse_ceiling, trim=True)
        if value > self.rmse_ceiling:
            return False, f"{score} is above the ceiling {ceiling}"
        return True, f"{score} is within the ceiling {ceiling}"


def instability(row: dict | None) -> str:
    """'' for a stable latency measurement, else ' (unstable, spread 35 %)', as the report says it."""
    from modelpress.selection.report import stability_label

    return stability_label(row or {})


def _value(row: dict, objective: str) -> float | None:
    key, sub, _ = OBJECTIVES[objective]
    v = row.get(key)
    if sub and v is not None:
        v = v.get(sub)
    return v


def _noise(row: dict, policy: Policy) -> float:
    """Relative spread of the variant's window medians: what the measurement can resolve."""
    lat = row.get("latency_ms") or {}
    if lat.get("spread") is not None:  # the spread of the windows its figures pool
        return max(policy.min_noise, lat["spread"])
    w = row.get("window_p50_ms") or []
    spread = (max(w[-3:]) - min(w[-3:])) / min(w[-3:]) if len(w) >= 2 and min(w[-3:]) > 0 else 0.0
    return max(policy.min_noise, spread)


def select(results: dict, policy: Policy) -> dict:
    """Choose a variant; return the decision with the constraint table that explains it."""
    metric = quality.metric_of(results)
    policy.validate(quality.task_of(results))
    name = metric.name
    rows = results["variants"]
    baseline = quality.baseline_row(rows)
    if baseline is None or baseline.get(name) is None:
        raise ModelpressError(f"the results have no scored baseline (role 'baseline', or 'baseline-onnx' when the "
                              f"run started from ONNX): cannot set the {metric.label} bar")
    reference = baseline[name]
    bar = policy.bar(reference, metric)
    torch_baseline = baseline["role"] == Role.BASELINE
    bar_text = policy.bar_text(reference, metric, "baseline" if torch_baseline else f"baseline {baseline['name']}")
    table = []
    for r in rows:
        if r["role"] == Role.CHAMPION:
            continue
        checks = {
            "deployable": r["kind"] == "onnx",
            "measured": r.get("latency_ms") is not None and r.get(name) is not None,
        }
        if checks["measured"]:
            checks[name] = policy.passes(reference, r[name], metric)
            if policy.p95_budget_ms:
                checks["p95_budget"] = r["latency_ms"]["p95"] <= policy.p95_budget_ms
            if policy.size_budget_bytes:
                checks["size_budget"] = r["size_bytes"] <= policy.size_budget_bytes
        table.append({"name": r["name"], name: r.get(name),
                      "objective_value": _value(r, policy.objective) if checks["measured"] else None,
                      "size_bytes": r["size_bytes"], "checks": checks, "eligible": all(checks.values())})
    eligible = [t for t in table if t["eligible"]]
    decision = {"policy": asdict(policy), "task": quality.task_of(results), "metric": quality.describe(metric),
                "baseline": baseline["name"], "baseline_role": str(baseline["role"]),
                f"baseline_{name}": reference, f"{name}_bar": bar, "quality_bar": bar, "bar_text": bar_text,
                "table": table, "chosen": None, "ties": [], "reason": ""}
    if not torch_baseline:
        decision["note"] = quality.NO_TORCH
    if not eligible:
        failing = "; ".join(f"{t['name']}: fails {[k for k, ok in t['checks'].items() if not ok]}" for t in table)
        decision["reason"] = f"no variant meets the constraints ({bar_text}): {failing}"
        return decision
    sign = OBJECTIVES[policy.objective][2]
    eligible.sort(key=lambda t: sign * t["objective_value"])
    best = eligible[0]
    best_row = next(r for r in rows if r["name"] == best["name"])
    noise = _noise(best_row, policy)
    ties = [t for t in eligible if abs(t["objective_value"] - best["objective_value"])
            <= noise * abs(best["objective_value"])]
    better_first = -1 if metric.higher_is_better else 1
    ties.sort(key=lambda t: (t["size_bytes"], better_first * t[name]))
    chosen = ties[0]
    decision.update(chosen=chosen["name"], ties=[t["name"] for t in ties], noise=noise)
    rows_by_name = {r["name"]: r for r in rows}

    def figure(t):  # "0.0233 ms" plus the instability, if any, next to the figure itself
        return f"{t['objective_value']:.4g} {UNITS[policy.objective]}{instability(rows_by_name[t['name']])}"

    goal = GOALS.get(policy.objective, policy.objective)
    if chosen is best:
        why = (f"{chosen['name']} has the best {goal} ({figure(chosen)}) among "
               f"{len(eligible)} variant(s) meeting {bar_text}")
        if len(ties) > 1:
            why += (f"; {', '.join(t['name'] for t in ties if t is not chosen)} within the measured noise "
                    f"({noise:.0%}) of it, but not smaller")
    else:
        why = (f"a tie within the measured noise ({noise:.0%}), won by size, then {metric.label}: {best['name']} "
               f"measured the best {goal} ({figure(best)}), {chosen['name']} ({figure(chosen)}) is "
               "within the noise "
               + (f"and smaller ({chosen['size_bytes'] / 1e3:,.1f} kB vs {best['size_bytes'] / 1e3:,.1f} kB); "
                  if chosen["size_bytes"] < best["size_bytes"] else
                  f"and as small ({chosen['size_bytes'] / 1e3:,.1f} kB) and better on {metric.label} "
                  f"({fmt(name, chosen[name], trim=True)} vs {fmt(name, best[name], trim=True)}); ") +
               f"{len(eligible)} variant(s) meet {bar_text}")
    why += f"; {chosen['name']}: {said(name, chosen[name])}"
    if not torch_baseline:
        why += f" ({quality.NO_TORCH})"
    decision["reason"] = why
    return decision


def bless(challenger: dict | None, champion: dict | None, policy: Policy,
          metric: QualityMetric | None = None) -> dict:
    """TFX-style blessing of the chosen row against the deployed champion's row, on `metric`
    (default: the challenger row's task's metric)."""
    if challenger is None:
        return {"blessed": False, "reason": "nothing was selected"}
    metric = metric or quality_metric(challenger.get("task"))
    name = metric.name
    value = challenger.get(name)
    if value is None:
        return {"blessed": False, "reason": f"the chosen variant has no test {metric.label}"}
    ok, why = policy.absolute_bar(value, metric)
    if not ok:
        return {"blessed": False, "reason": why}
    if champion is None:
        return {"blessed": True, "reason": f"no champion deployed; {why}"}
    if champion.get("sha256") and champion["sha256"] == challenger.get("sha256"):
        return {"blessed": False, "reason": "the challenger is byte-identical to the deployed champion"}
    reference = champion[name]
    bar_text = policy.bar_text(reference, metric, "champion")
    if not policy.passes(reference, value, metric):
        return {"blessed": False, "reason": f"{said(name, value)} regresses beyond the tolerance against the "
                                            f"champion's {said(name, reference)} (bar {bar_text}), same test split"}
    return {"blessed": True, "reason": f"{said(name, value)} vs champion {said(name, reference)} on the same "
                                       f"test split: within tolerance (bar {bar_text})"}


def ratios(results: dict, name: str) -> dict:
    """The chosen variant's speed-up, size ratio and quality delta (value minus reference, in the
    metric's units) against the torch and ONNX fp32 baselines; those against torch are absent
    when there is no torch model (an ONNX start)."""
    metric = quality.metric_of(results).name
    rows = {r["name"]: r for r in results["variants"]}
    chosen = rows[name]
    out = {}
    for label, role in (("torch", Role.BASELINE), ("onnx_fp32", Role.BASELINE_ONNX)):
        ref = next((r for r in results["variants"] if r["role"] == role), None)
        if ref is None or not ref.get("latency_ms") or not chosen.get("latency_ms"):
            continue
        out[f"speedup_p50_vs_{label}"] = ref["latency_ms"]["p50"] / chosen["latency_ms"]["p50"]
        out[f"size_ratio_vs_{label}"] = chosen["size_bytes"] / ref["size_bytes"]
        if chosen.get(metric) is not None and ref.get(metric) is not None:
            out[f"{metric}_delta_vs_{label}"] = chosen[metric] - ref[metric]
        # a ratio is only as steady as both figures: 1.0 when both measurements were stable
        out[f"stable_vs_{label}"] = float(not instability(ref) and not instability(chosen))
    return out


def decide(results: dict, policy: Policy) -> dict:
    """Select, then bless against the champion row (role 'champion') of the same results."""
    metric = quality.metric_of(results)
    decision = select(results, policy)
    rows = {r["name"]: r for r in results["variants"]}
    chosen = rows.get(decision["chosen"]) if decision["chosen"] else None
    champion = next((r for r in results["variants"]
                     if r["role"] == Role.CHAMPION and r.get(metric.name) is not None), None)
    blessing = bless(chosen, champion, policy, metric)
    return {"decision": decision, "blessing": blessing, "chosen_row": chosen,
            "champion": champion["name"] if champion else None,
            "ratios": ratios(results, decision["chosen"]) if chosen else {}}


def write_decision(results_path: str, policy: Policy, chosen_dir: str, report_path: str,
                   table_path: str, log=print) -> dict:
    """The select step: decide, copy the chosen model, write the report; return the record."""
    import shutil

    from modelpress.selection import report
    from modelpress.core.fileio import atomic_dir, local_path, read_json, write_json_atomic

    results = read_json(local_path(results_path))
    task = quality.task_of(results)
    out = decide(results, policy)
    decision, blessing, row = out["decision"], out["blessing"], out["chosen_row"]
    with atomic_dir(local_path(chosen_dir)) as tmp:
        if row is not None:
            src = local_path(row["path"])
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
                elif f.is_dir():  # a text model's tokenizer/: it is served with its own
                    shutil.copytree(f, tmp / f.name)
        # the chosen row's figures and the machine they were measured on travel with the model (its card)
        chosen_row = {k: v for k, v in row.items() if k not in ("path", "file")} if row else None
        write_json_atomic(tmp / "decision.json", {**out, "chosen_row": chosen_row, "machine": results.get("machine"),
                                                  "dataset": results.get("dataset")})
    with open(report_path, "w") as f:
        f.write(report.render_html(results, decision, blessing, title="modelpress: optimisation report"))
    with open(table_path, "w") as f:
        f.write(report.markdown_decision(decision, blessing))
        f.write(report.markdown_table(results, decision))
    log(f"[select] {decision['reason']}")
    log(f"[select] {'blessed' if blessing['blessed'] else 'NOT blessed'}: {blessing['reason']}")
    for k, v in out["ratios"].items():
        log(f"[select] {k} = {v:.3f}")
    metrics = dict(out["ratios"])
    metadata = {"variant": decision["chosen"], "blessed": blessing["blessed"],
                "reason": f"{decision['reason']}. {blessing['reason']}", "champion": out["champion"]}
    if task != "classification":
        metadata["task"] = task
    if row is not None:
        scores = {k: row.get(k) for k in quality.score_names(task)}
        metrics.update(**scores, p50_ms=row["latency_ms"]["p50"], p95_ms=row["latency_ms"]["p95"],
                       size_bytes=row["size_bytes"])
        metadata.update(**scores, size_bytes=row["size_bytes"], precision=row.get("precision"),
                        params=row.get("params"), macs=row.get("macs"), framework="onnx")
    metrics["blessed"] = float(blessing["blessed"])
    return {"metadata": metadata, "metrics": metrics, "blessed": blessing["blessed"],
            "variant": decision["chosen"] or "", "reason": f"{decision['reason']}. {blessing['reason']}"}
