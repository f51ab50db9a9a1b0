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
) -> bool:
    """Pick the fastest variant within the accuracy tolerance; return whether it is blessed.

    The choice and the reasons are on the `chosen` artifact's metadata (variant, reason).
    A single return value keeps `dsl.If(select.output == True)` resolvable by kfp.local.
    """
    from components._io import record
    from modelpress.selection import decision

    policy = decision.Policy(tolerance=tolerance, tolerance_mode=tolerance_mode, p95_budget_ms=p95_budget_ms,
                              size_budget_bytes=size_budget_bytes, objective=objective,
                              accuracy_floor=accuracy_floor)
    out = decision.write_decision(results.path, policy, chosen.path, report.path, table.path)
    record(out, artifact=chosen, metrics=metrics)
    return out["blessed"]
