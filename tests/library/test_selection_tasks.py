"""Selection and blessing in the task's quality metric: RMSE for regression (lower is better),
accuracy for classification; and the starting points without a torch model."""

import json

import pytest

from modelpress.core.errors import ModelpressError
from modelpress.selection import decision, quality

REGRESSION = {"task": "regression", "quality_metric": {"name": "rmse", "higher_is_better": False, "label": "RMSE"}}


def reg_row(name, rmse, p50, size=1000, role="candidate", kind="onnx", sha=None, windows=None):
    return {"name": name, "role": role, "kind": kind, "task": "regression", "rmse": rmse, "mae": rmse * 0.8,
            "r2": 0.5, "size_bytes": size, "gzip_bytes": size // 2, "sha256": sha, "path": f"/nowhere/{name}",
            "latency_ms": {"p50": p50, "p95": p50 * 1.2, "stable": True}, "throughput_per_s": 1000 / p50,
            "window_p50_ms": windows or [p50] * 3}


def reg_results(*rows, torch=True):
    base = [reg_row("onnx fp32", 54.1, 0.2, 3000, role="baseline-onnx")]
    if torch:
        base.insert(0, reg_row("torch eager fp32", 54.1, 1.0, 4000, role="baseline", kind="torch"))
    return {**REGRESSION, "variants": [*base, *rows]}


def entry(d, name):
    return next(t for t in d["table"] if t["name"] == name)


def test_regression_picks_the_fastest_within_an_absolute_rmse_tolerance():
    r = reg_results(reg_row("int8", 56.0, 0.1, 900), reg_row("tiny", 60.0, 0.05, 100))
    d = decision.select(r, decision.Policy(tolerance=2.8))
    assert d["chosen"] == "int8"
    assert d["rmse_bar"] == pytest.approx(56.9) and d["quality_bar"] == pytest.approx(56.9)
    assert entry(d, "tiny")["checks"]["rmse"] is False and not entry(d, "tiny")["eligible"]
    assert entry(d, "int8")["checks"]["rmse"] is True and "accuracy" not in entry(d, "int8")["checks"]
    assert "RMSE <= 56.9 (baseline 54.1 + tolerance 2.8)" in d["reason"]
    assert d["reason"].endswith("int8: RMSE 56") and "accuracy" not in d["reason"]
    # a lower RMSE is better: a variant better than the baseline passes any tolerance
    assert decision.select(reg_results(reg_row("int8", 50.0, 0.1)), decision.Policy(tolerance=0))["chosen"] == "int8"


def test_regression_relative_tolerance_is_a_share_of_the_baseline_rmse():
    policy = decision.Policy(tolerance=0.05, tolerance_mode="relative")  # bar 54.1 * 1.05 = 56.805
    assert decision.select(reg_results(reg_row("int8", 56.7, 0.1)), policy)["chosen"] == "int8"
    d = decision.select(reg_results(reg_row("int8", 56.9, 0.1)), policy)
    assert d["chosen"] == "onnx fp32" and d["rmse_bar"] == pytest.approx(56.805)
    assert "baseline 54.1 + tolerance 5% of it, 2.705" in d["reason"]


def test_regression_ties_go_to_the_smaller_then_the_lower_rmse():
    r = reg_results(reg_row("a", 55.0, 0.100, 500), reg_row("b", 54.5, 0.101, 500))
    d = decision.select(r, decision.Policy(tolerance=2.0))
    assert d["chosen"] == "b" and set(d["ties"]) == {"a", "b"}
    assert "won by size, then RMSE" in d["reason"] and "better on RMSE (54.5 vs 55)" in d["reason"]


def test_policy_validation_knows_the_task():
    regression_tolerance = decision.Policy(tolerance=2.8)
    assert regression_tolerance.validate("regression") is regression_tolerance
    regression_tolerance.validate(None)  # the task is not known yet (config checks): what holds for both
    with pytest.raises(ModelpressError, match=r"tolerance must be in \[0, 1\) for classification"):
        regression_tolerance.validate()  # classification by default, as before tasks
    for task in ("classification", "regression", None):
        with pytest.raises(ModelpressError, match=r"relative tolerance .* \[0, 1\)"):
            decision.Policy(tolerance=1.5, tolerance_mode="relative").validate(task)
        with pytest.raises(ModelpressError, match="tolerance must be >= 0"):
            decision.Policy(tolerance=-1).validate(task)
    with pytest.raises(ModelpressError, match="rmse_ceiling must be >= 0"):
        decision.Policy(rmse_ceiling=-1).validate("regression")
    with pytest.raises(ModelpressError, match="task must be one of"):
        decision.Policy().validate("ranking")
    # select validates against the results' task
    with pytest.raises(ModelpressError, match="for classification"):
        decision.select({"variants": [reg_row("t", 1, 1, role="baseline", kind="torch")]}, decision.Policy(tolerance=3))


def test_regression_blessing_uses_the_rmse_ceiling_and_the_champion():
    p = decision.Policy(tolerance=2.0, rmse_ceiling=58.0, accuracy_floor=0.9)  # the floor is classification's
    high = decision.bless(reg_row("c", 59.0, 0.1), None, p)
    assert high == {"blessed": False, "reason": "RMSE 59 is above the ceiling 58"}
    ok = decision.bless(reg_row("c", 55.0, 0.1), None, p)
    assert ok["blessed"] is True and ok["reason"] == "no champion deployed; RMSE 55 is within the ceiling 58"
    no_ceiling = decision.bless(reg_row("c", 5000.0, 0.1), None, decision.Policy(tolerance=2.0))
    assert no_ceiling["blessed"] is True and "no RMSE ceiling set" in no_ceiling["reason"]
    champ = reg_row("champion v1", 52.0, 0.1, role="champion", sha="aaa")
    worse = decision.bless(reg_row("c", 55.0, 0.1, sha="bbb"), champ, p)
    assert worse["blessed"] is False and "regresses" in worse["reason"]
    assert "RMSE 55 regresses beyond the tolerance against the champion's RMSE 52" in worse["reason"]
    assert "bar RMSE <= 54 (champion 52 + tolerance 2)" in worse["reason"]
    within = decision.bless(reg_row("c", 53.5, 0.1, sha="bbb"), champ, p)
    assert within["blessed"] is True and "RMSE 53.5 vs champion RMSE 52" in within["reason"]
    # decide blesses against the champion row of the same results, in RMSE
    r = reg_results(reg_row("int8", 55.0, 0.1, sha="bbb"), champ)
    out = decision.decide(r, p)
    assert out["decision"]["chosen"] == "int8" and out["champion"] == "champion v1"
    assert out["blessing"]["blessed"] is False and "RMSE" in out["blessing"]["reason"]


def test_ratios_carry_the_quality_delta_in_the_metrics_units():
    out = decision.decide(reg_results(reg_row("int8", 55.0, 0.1, 900)), decision.Policy(tolerance=2.0))
    assert out["ratios"]["rmse_delta_vs_torch"] == pytest.approx(0.9)
    assert out["ratios"]["speedup_p50_vs_onnx_fp32"] == pytest.approx(2.0)
    assert not any(k.startswith("accuracy") for k in out["ratios"])


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_without_a_torch_model_the_onnx_fp32_export_sets_the_bar(task):
    if task == "regression":
        r = reg_results(reg_row("int8", 56.0, 0.1, 900), torch=False)
        policy = decision.Policy(tolerance=2.0)  # bar 56.1
    else:
        from tests.library.test_selection import row

        r = {"variants": [row("onnx fp32", 0.98, 0.2, 3000, role="baseline-onnx"), row("int8", 0.975, 0.1, 900)]}
        policy = decision.Policy(tolerance=0.01)
    out = decision.decide(r, policy)
    d = out["decision"]
    assert d["baseline"] == "onnx fp32" and d["baseline_role"] == "baseline-onnx" and d["chosen"] == "int8"
    assert d["note"] == quality.NO_TORCH and quality.NO_TORCH in d["reason"]
    assert "baseline onnx fp32" in d["reason"]
    assert out["ratios"]["speedup_p50_vs_onnx_fp32"] == pytest.approx(2.0)
    assert not any(k.endswith("_vs_torch") for k in out["ratios"])
    with pytest.raises(ModelpressError, match="no scored baseline"):
        decision.select({**r, "variants": r["variants"][1:]}, policy)


def test_classification_keeps_its_keys():
    from tests.library.test_selection import results, row

    d = decision.select(results(row("int8", 0.975, 0.1, 900)), decision.Policy(tolerance=0.01))
    assert d["baseline_accuracy"] == 0.98 and d["accuracy_bar"] == pytest.approx(0.97)
    assert entry(d, "int8")["accuracy"] == 0.975 and entry(d, "int8")["checks"]["accuracy"] is True
    assert "accuracy >= 0.9700 (baseline 0.9800 - tolerance 0.0100)" in d["reason"]
    assert "note" not in d


def test_write_decision_records_the_regression_scores(tmp_path):
    model = tmp_path / "int8"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"onnx")
    r = reg_results({**reg_row("int8", 55.0, 0.1, 900), "path": str(model)})
    (tmp_path / "results.json").write_text(json.dumps(r))
    out = decision.write_decision(str(tmp_path / "results.json"), decision.Policy(tolerance=2.0),
                                  str(tmp_path / "chosen"), str(tmp_path / "report.html"), str(tmp_path / "table.md"),
                                  log=lambda s: None)
    assert out["variant"] == "int8" and out["blessed"] is True
    assert {k: out["metrics"][k] for k in ("rmse", "mae", "r2")} == {"rmse": 55.0, "mae": 44.0, "r2": 0.5}
    assert "accuracy" not in out["metrics"] and "accuracy" not in out["metadata"]
    assert out["metadata"]["task"] == "regression" and out["metadata"]["rmse"] == 55.0
    assert (tmp_path / "chosen" / "model.onnx").read_bytes() == b"onnx"
    table = (tmp_path / "table.md").read_text()
    assert "RMSE <= 56.1" in table and "| RMSE | MAE | R² |" in table and "accura" not in table.lower()
