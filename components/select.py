from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def select(
    results: Input[Artifact],
    chosen: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    table: Output[Markdown],
    tolerance: float = 0.01,
    tolerance_mode: str = "absolute",
    p95_budget_ms: float = 0.0,
    size_budget_bytes: int = 0,
    objective: str = "p50",
    accuracy_floor: float = 0.9,
    rmse_ceiling: float = 0.0,
) -> bool:
    """Pick the best variant within the accuracy tolerance and budgets; bless it against the champion.

    Args:
        results: The benchmark's results JSON (every variant's figures, the champion's row included).
        tolerance: The quality a variant may lose against the fp32 baseline (and, for the blessing,
            against the champion): accuracy, or RMSE for regression.
        tolerance_mode: absolute (accuracy points / 100, or RMSE in the target's units) or relative (a share
            of the reference's value).
        p95_budget_ms: The most p95 batch-1 latency a variant may have, in ms (0: no budget).
        size_budget_bytes: The most bytes a variant's model file may take (0: no budget).
        objective: What the chosen variant is best at: p50, p95, size, throughput or edge (the smallest
            model within p95_budget_ms, which edge requires). Variants within the measured noise of the best
            are a tie, won by the smaller, then the better on the quality metric.
        accuracy_floor: Classification: the least test accuracy a blessed model has, champion or not.
        rmse_ceiling: Regression: the most test RMSE a blessed model has, in the target's units (0: none).

    Returns:
        chosen: A copy of the chosen model with decision.json; its metadata names the variant, the
            reason, the blessing and the champion, with the chosen model's accuracy, size and cost.
        metrics: The chosen variant's accuracy, latency and size, its speed-up and size ratios against
            the torch and ONNX fp32 baselines, and whether it is blessed (1.0 or 0.0).
        report: The HTML report: every variant, the constraint table and the reasons.
        table: The decision and the variants' table in Markdown.
        Output: Whether the chosen variant is blessed: the pipeline deploys it only then.
    """
    from components._io import from_arguments, record
    from modelpress.selection import decision

    policy = from_arguments(decision.Policy, locals())
    out = decision.write_decision(results.path, policy, chosen.path, report.path, table.path)
    record(out, artifact=chosen, metrics=metrics)
    # one plain return value (not a NamedTuple) keeps `dsl.If(select.output == True)` resolvable by kfp.local
    return out["blessed"]
