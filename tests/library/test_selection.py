import pytest

from modelpress.selection import decision
from modelpress.core.errors import ModelpressError


def row(name, acc, p50, size=1000, role="candidate", kind="onnx", p95=None, windows=None, sha=None):
    return {"name": name, "role": role, "kind": kind, "accuracy": acc, "size_bytes": size, "sha256": sha,
            "latency_ms": {"p50": p50, "p95": p95 or p50 * 1.2, "stable": True}, "throughput_per_s": 1000 / p50,
            "window_p50_ms": windows or [p50, p50, p50]}


def results(*rows):
    return {"variants": [row("torch", 0.98, 1.0, 4000, role="baseline", kind="torch"),
                         row("onnx fp32", 0.98, 0.2, 3000, role="baseline-onnx"), *rows]}


def test_fastest_within_tolerance_wins():
    r = results(row("int8", 0.975, 0.1, 900), row("tiny", 0.90, 0.05, 100))
    d = decision.select(r, decision.Policy(tolerance=0.01))
    assert d["chosen"] == "int8"
    assert d["accuracy_bar"] == pytest.approx(0.97)
    tiny = next(t for t in d["table"] if t["name"] == "tiny")
    assert tiny["checks"]["accuracy"] is False and not tiny["eligible"]
    torch = next(t for t in d["table"] if t["name"] == "torch")
    assert torch["checks"]["deployable"] is False  # torch eager is the baseline, not deployable


def test_relative_tolerance():
    r = results(row("int8", 0.972, 0.1))
    assert decision.select(r, decision.Policy(tolerance=0.01, tolerance_mode="relative"))["chosen"] == "int8"
    # 1% relative of 0.98 is a bar of 0.9702; 0.969 misses it while an absolute 0.02 admits it
    r = results(row("int8", 0.969, 0.1))
    assert decision.select(r, decision.Policy(tolerance=0.01, tolerance_mode="relative"))["chosen"] == "onnx fp32"
    assert decision.select(r, decision.Policy(tolerance=0.02))["chosen"] == "int8"


def test_ties_within_noise_go_to_the_smaller_model():
    r = results(row("a", 0.98, 0.100, 2000), row("b", 0.98, 0.101, 500))
    d = decision.select(r, decision.Policy())
    assert d["chosen"] == "b" and set(d["ties"]) == {"a", "b"}
    assert "within the measured noise" in d["reason"]
    # a gap wider than the noise is not a tie
    r = results(row("a", 0.98, 0.100, 2000), row("b", 0.98, 0.150, 500))
    assert decision.select(r, decision.Policy())["chosen"] == "a"


def test_noisy_measurement_widens_the_tie_band():
    r = results(row("a", 0.98, 0.100, 2000, windows=[0.08, 0.10, 0.12]), row("b", 0.98, 0.115, 500))
    assert decision.select(r, decision.Policy())["chosen"] == "b"


def test_budgets_and_nothing_meeting_the_bar():
    r = results(row("int8", 0.975, 0.1, 900, p95=0.5))
    d = decision.select(r, decision.Policy(p95_budget_ms=0.3))
    assert d["chosen"] == "onnx fp32"
    d = decision.select(r, decision.Policy(size_budget_bytes=100))
    assert d["chosen"] is None and "no variant meets the constraints" in d["reason"]
    assert "size_budget" in d["reason"]


def test_objectives():
    r = results(row("fast", 0.98, 0.1, 2000), row("small", 0.98, 0.3, 100))
    assert decision.select(r, decision.Policy(objective="size"))["chosen"] == "small"
    assert decision.select(r, decision.Policy(objective="throughput"))["chosen"] == "fast"
    with pytest.raises(ModelpressError, match="objective"):
        decision.select(r, decision.Policy(objective="vibes"))


def test_bless_without_champion_uses_the_floor():
    p = decision.Policy(tolerance=0.01, accuracy_floor=0.9)
    assert decision.bless(row("c", 0.95, 0.1), None, p)["blessed"] is True
    low = decision.bless(row("c", 0.85, 0.1), None, p)
    assert low["blessed"] is False and "below the floor" in low["reason"]


def test_bless_against_champion():
    p = decision.Policy(tolerance=0.01, accuracy_floor=0.5)
    champ = row("champion v1", 0.97, 0.1, role="champion", sha="aaa")
    assert decision.bless(row("c", 0.965, 0.1, sha="bbb"), champ, p)["blessed"] is True  # within tolerance
    worse = decision.bless(row("c", 0.95, 0.1, sha="bbb"), champ, p)
    assert worse["blessed"] is False and "regresses" in worse["reason"]
    same = decision.bless(row("c", 0.97, 0.1, sha="aaa"), champ, p)
    assert same["blessed"] is False and "identical" in same["reason"]


def test_decide_reports_ratios_against_both_baselines():
    r = results(row("int8", 0.975, 0.1, 900))
    out = decision.decide(r, decision.Policy())
    assert out["ratios"]["speedup_p50_vs_torch"] == pytest.approx(10.0)
    assert out["ratios"]["size_ratio_vs_onnx_fp32"] == pytest.approx(0.3)
    assert out["blessing"]["blessed"] is True


def test_the_reason_says_what_happened_with_units_and_instability():
    # a tie won by size: the fastest is named with its figure, the winner with its own, in ms
    r = results(row("a", 0.98, 0.100, 2000), row("b", 0.98, 0.101, 500))
    why = decision.select(r, decision.Policy())["reason"]
    assert why.startswith("a tie within the measured noise (2%), won by size")
    assert "a measured the best p50 (0.1 ms)" in why and "b (0.101 ms)" in why and "0.5 kB vs 2.0 kB" in why
    # the fastest alone: "best", with its unit; an unstable figure is labelled where it stands
    shaky = row("c", 0.98, 0.05, 500, windows=[0.05, 0.08, 0.05])
    shaky["latency_ms"].update(stable=False)
    why = decision.select(results(shaky), decision.Policy())["reason"]
    assert "c has the best p50 (0.05 ms (unstable, spread 60 %))" in why
    ratios = decision.ratios(results(shaky), "c")
    assert ratios["stable_vs_torch"] == 0.0  # a speed-up resting on it is not a headline


def test_the_edge_objective_takes_the_smallest_within_tolerance_and_the_latency_budget():
    r = results(row("fast", 0.98, 0.1, 2000, p95=0.12), row("small", 0.975, 0.3, 300, p95=0.4),
                row("tiny but slow", 0.98, 2.0, 100, p95=2.5), row("tiny but wrong", 0.90, 0.1, 50))
    d = decision.select(r, decision.Policy(objective="edge", p95_budget_ms=1.0))
    assert d["chosen"] == "small"  # "tiny but slow" misses the budget, "tiny but wrong" the accuracy bar
    assert "has the best size within the p95 budget (300 bytes)" in d["reason"]
    slow = next(t for t in d["table"] if t["name"] == "tiny but slow")
    assert slow["checks"]["p95_budget"] is False
    # with the budget loosened, the smallest eligible model wins
    assert decision.select(r, decision.Policy(objective="edge", p95_budget_ms=5.0))["chosen"] == "tiny but slow"
    with pytest.raises(ModelpressError, match="objective 'edge'.*set p95_budget_ms > 0"):
        decision.Policy(objective="edge").validate()
