"""Accuracy-aware selection and blessing.

Selection: among the deployable (ONNX) variants whose accuracy is within the tolerance of
the fp32 baseline and that meet the optional p95-latency and size budgets, take the best on
the objective (default: lowest p50 latency). Variants within the measured noise of the best
are ties, broken by size, then accuracy.

Blessing (the TFX rule): the chosen model must clear an absolute accuracy floor and must not
regress beyond the tolerance against the deployed champion, scored on the same test split in
the same run. With no champion, the floor alone decides. A challenger identical to the
champion (same bytes) is not deployed again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from modelpress.core.errors import ModelpressError
from modelpress.core.results import Role

OBJECTIVES = {"p50": ("latency_ms", "p50", 1), "p95": ("latency_ms", "p95", 1),
              "size": ("size_bytes", None, 1), "throughput": ("throughput_per_s", None, -1)}


@dataclass
class Policy:
    tolerance: float = 0.01  # accuracy that may be lost against the fp32 baseline
    tolerance_mode: str = "absolute"  # "absolute" (points/100) or "relative" (share of baseline)
    p95_budget_ms: float = 0.0  # 0: no budget
    size_budget_bytes: int = 0  # 0: no budget
    objective: str = "p50"
    accuracy_floor: float = 0.0  # absolute floor for blessing
    min_noise: float = 0.02  # ties: never finer than 2% of the best value

    def validate(self) -> "Policy":
        if self.tolerance_mode not in ("absolute", "relative"):
            raise ModelpressError(f"tolerance_mode must be 'absolute' or 'relative', got {self.tolerance_mode!r}")
        if not 0 <= self.tolerance < 1:
            raise ModelpressError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if self.objective not in OBJECTIVES:
            raise ModelpressError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if not 0 <= self.accuracy_floor <= 1:
            raise ModelpressError(f"accuracy_floor must be in [0, 1], got {self.accuracy_floor}")
        if self.p95_budget_ms < 0 or self.size_budget_bytes < 0:
            raise ModelpressError("budgets must be >= 0 (0 means no budget)")
        return self

    def bar(self, reference: float) -> float:
        if self.tolerance_mode == "relative":
            return reference * (1.0 - self.tolerance)
        return reference - self.tolerance


UNITS = {"p50": "ms", "p95": "ms", "size": "bytes", "throughput": "rows/s"}


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
    policy.validate()
    rows = results["variants"]
    baseline = next((r for r in rows if r["role"] == Role.BASELINE), None)
    if baseline is None or baseline.get("accuracy") is None:
        raise ModelpressError("the results have no scored baseline (role 'baseline'): cannot set the bar")
    bar = policy.bar(baseline["accuracy"])
    table = []
    for r in rows:
        if r["role"] == Role.CHAMPION:
            continue
        checks = {
            "deployable": r["kind"] == "onnx",
            "measured": r.get("latency_ms") is not None and r.get("accuracy") is not None,
        }
        if checks["measured"]:
            checks["accuracy"] = r["accuracy"] >= bar - 1e-12
            if policy.p95_budget_ms:
                checks["p95_budget"] = r["latency_ms"]["p95"] <= policy.p95_budget_ms
            if policy.size_budget_bytes:
                checks["size_budget"] = r["size_bytes"] <= policy.size_budget_bytes
        table.append({"name": r["name"], "accuracy": r.get("accuracy"),
                      "objective_value": _value(r, policy.objective) if checks["measured"] else None,
                      "size_bytes": r["size_bytes"], "checks": checks, "eligible": all(checks.values())})
    eligible = [t for t in table if t["eligible"]]
    decision = {"policy": asdict(policy), "baseline": baseline["name"], "baseline_accuracy": baseline["accuracy"],
                "accuracy_bar": bar, "table": table, "chosen": None, "ties": [], "reason": ""}
    if not eligible:
        failing = "; ".join(f"{t['name']}: fails {[k for k, ok in t['checks'].items() if not ok]}" for t in table)
        decision["reason"] = f"no variant meets the constraints (accuracy bar {bar:.4f}): {failing}"
        return decision
    sign = OBJECTIVES[policy.objective][2]
    eligible.sort(key=lambda t: sign * t["objective_value"])
    best = eligible[0]
    best_row = next(r for r in rows if r["name"] == best["name"])
    noise = _noise(best_row, policy)
    ties = [t for t in eligible if abs(t["objective_value"] - best["objective_value"])
            <= noise * abs(best["objective_value"])]
    ties.sort(key=lambda t: (t["size_bytes"], -(t["accuracy"] or 0)))
    chosen = ties[0]
    decision.update(chosen=chosen["name"], ties=[t["name"] for t in ties], noise=noise)
    rows_by_name = {r["name"]: r for r in rows}

    def figure(t):  # "0.0233 ms" plus the instability, if any, next to the figure itself
        return f"{t['objective_value']:.4g} {UNITS[policy.objective]}{instability(rows_by_name[t['name']])}"

    if chosen is best:
        why = (f"{chosen['name']} has the best {policy.objective} ({figure(chosen)}) among "
               f"{len(eligible)} variant(s) meeting accuracy >= {bar:.4f}")
        if len(ties) > 1:
            why += (f"; {', '.join(t['name'] for t in ties if t is not chosen)} within the measured noise "
                    f"({noise:.0%}) of it, but not smaller")
    else:
        why = (f"a tie within the measured noise ({noise:.0%}), won by size, then accuracy: {best['name']} measured the best "
               f"{policy.objective} ({figure(best)}), {chosen['name']} ({figure(chosen)}) is within the noise "
               + (f"and smaller ({chosen['size_bytes'] / 1e3:,.1f} kB vs {best['size_bytes'] / 1e3:,.1f} kB); "
                  if chosen["size_bytes"] < best["size_bytes"] else
                  f"and as small ({chosen['size_bytes'] / 1e3:,.1f} kB) and more accurate "
                  f"({chosen['accuracy']:.4f} vs {best['accuracy']:.4f}); ") +
               f"{len(eligible)} variant(s) meet accuracy >= {bar:.4f}")
    decision["reason"] = why
    return decision


def bless(challenger: dict | None, champion: dict | None, policy: Policy) -> dict:
    """TFX-style blessing of the chosen row against the deployed champion's row."""
    if challenger is None:
        return {"blessed": False, "reason": "nothing was selected"}
    acc = challenger["accuracy"]
    if acc < policy.accuracy_floor:
        return {"blessed": False, "reason": f"accuracy {acc:.4f} is below the floor {policy.accuracy_floor:.4f}"}
    if champion is None:
        return {"blessed": True, "reason": f"no champion deployed; accuracy {acc:.4f} clears the floor "
                                           f"{policy.accuracy_floor:.4f}"}
    if champion.get("sha256") and champion["sha256"] == challenger.get("sha256"):
        return {"blessed": False, "reason": "the challenger is byte-identical to the deployed champion"}
    bar = policy.bar(champion["accuracy"])
    if acc < bar - 1e-12:
        return {"blessed": False, "reason": f"accuracy {acc:.4f} regresses beyond the tolerance against the "
                                            f"champion's {champion['accuracy']:.4f} (bar {bar:.4f}), same test split"}
    return {"blessed": True, "reason": f"accuracy {acc:.4f} vs champion {champion['accuracy']:.4f} on the same "
                                       f"test split: within tolerance (bar {bar:.4f})"}


def ratios(results: dict, name: str) -> dict:
    """The chosen variant's speed-up and size ratio against the torch and ONNX fp32 baselines."""
    rows = {r["name"]: r for r in results["variants"]}
    chosen = rows[name]
    out = {}
    for label, role in (("torch", Role.BASELINE), ("onnx_fp32", Role.BASELINE_ONNX)):
        ref = next((r for r in results["variants"] if r["role"] == role), None)
        if ref is None or not ref.get("latency_ms") or not chosen.get("latency_ms"):
            continue
        out[f"speedup_p50_vs_{label}"] = ref["latency_ms"]["p50"] / chosen["latency_ms"]["p50"]
        out[f"size_ratio_vs_{label}"] = chosen["size_bytes"] / ref["size_bytes"]
        out[f"accuracy_delta_vs_{label}"] = chosen["accuracy"] - ref["accuracy"]
        # a ratio is only as steady as both figures: 1.0 when both measurements were stable
        out[f"stable_vs_{label}"] = float(not instability(ref) and not instability(chosen))
    return out


def decide(results: dict, policy: Policy) -> dict:
    """Select, then bless against the champion row (role 'champion') of the same results."""
    decision = select(results, policy)
    rows = {r["name"]: r for r in results["variants"]}
    chosen = rows.get(decision["chosen"]) if decision["chosen"] else None
    champion = next((r for r in results["variants"] if r["role"] == Role.CHAMPION and r.get("accuracy") is not None),
                    None)
    blessing = bless(chosen, champion, policy)
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
    out = decide(results, policy)
    decision, blessing, row = out["decision"], out["blessing"], out["chosen_row"]
    with atomic_dir(local_path(chosen_dir)) as tmp:
        if row is not None:
            src = local_path(row["path"])
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        write_json_atomic(tmp / "decision.json", {**out, "chosen_row": None})
    with open(report_path, "w") as f:
        f.write(report.render_html(results, decision, blessing, title="modelpress: optimisation report"))
    with open(table_path, "w") as f:
        f.write(f"Chosen: **{decision['chosen']}**. {decision['reason']}\n\n"
                f"Deployment gate: {'blessed' if blessing['blessed'] else 'not blessed'}: {blessing['reason']}\n\n")
        f.write(report.markdown_table(results, decision))
    log(f"[select] {decision['reason']}")
    log(f"[select] {'blessed' if blessing['blessed'] else 'NOT blessed'}: {blessing['reason']}")
    for k, v in out["ratios"].items():
        log(f"[select] {k} = {v:.3f}")
    metrics = dict(out["ratios"])
    metadata = {"variant": decision["chosen"], "blessed": blessing["blessed"],
                "reason": f"{decision['reason']}. {blessing['reason']}", "champion": out["champion"]}
    if row is not None:
        metrics.update(accuracy=row["accuracy"], p50_ms=row["latency_ms"]["p50"],
                       p95_ms=row["latency_ms"]["p95"], size_bytes=row["size_bytes"])
        metadata.update(accuracy=row["accuracy"], size_bytes=row["size_bytes"], precision=row.get("precision"),
                        params=row.get("params"), macs=row.get("macs"), framework="onnx")
    metrics["blessed"] = float(blessing["blessed"])
    return {"metadata": metadata, "metrics": metrics, "blessed": blessing["blessed"],
            "variant": decision["chosen"] or "", "reason": f"{decision['reason']}. {blessing['reason']}"}
