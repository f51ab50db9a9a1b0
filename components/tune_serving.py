from kfp import dsl
from kfp.dsl import Artifact, Markdown, Metrics, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def tune_serving(
    repository: str,
    tuning: Output[Artifact],
    table: Output[Markdown],
    metrics: Output[Metrics],
    model_name: str = "digits",
    deployed_version: int = 0,
    concurrency: int = 16,
    p99_budget_ms: float = 0.0,
    search: str = "quick",
    duration_s: float = 5.0,
    max_points: int = 12,
) -> str:
    """Measure serving configs of the deployed model on this machine and write the best into config.pbtxt.

    Each point is a real `modelpress serve` driven by the load generator (modelpress tune-serving);
    the measurements describe the machine this step runs on, so run it where the model is served.

    Args:
        repository: The model repository the deploy step wrote to.
        model_name: The model's name in `repository`.
        deployed_version: The version the deploy step wrote (the newest served version is tuned).
        concurrency: Requests in flight during each measurement (the load you expect).
        p99_budget_ms: The most p99 latency the chosen config may have, in ms (0: no budget).
        search: quick (hill-climb from the current config) or grid (every setting within the cores).
        duration_s: Seconds measured per window; each point takes at least three windows.
        max_points: The most settings the quick search measures.

    Returns:
        tuning: tuning.json, tuning.md and tuning.png: every point measured, the chosen one and why.
        table: The report as Markdown (the UI shows it).
        metrics: The chosen and the previous config's throughput (req/s) and p99 (ms), and their ratio.
        Output: What happened to config.pbtxt (written, unchanged, or no point met the budget).
    """
    from modelpress.loadtest import tuning as tune
    from modelpress.loadtest import tuning_report

    print(f"[tune-serving] {model_name} version {deployed_version} in {repository}")
    try:
        report = tune.tune(repository, model_name, concurrency=concurrency, p99_budget_ms=p99_budget_ms,
                           search=search, duration_s=duration_s, max_points=max_points, report_dir=tuning.path)
    except tune.NoPointMeetsBudget as exc:  # the model is deployed either way: report, do not fail the run
        report = exc.report
        print(f"[tune-serving] {exc}")
    with open(table.path, "w") as f:
        f.write(tuning_report.markdown(report))
    figures = {}
    for role in ("current", "chosen"):
        point = report.get("default" if role == "current" else "chosen") or {}
        figures[f"{role}_throughput_rps"] = point.get("throughput_rps")
        figures[f"{role}_p99_ms"] = (point.get("latency_ms") or {}).get("p99")
    if figures["chosen_throughput_rps"] and figures["current_throughput_rps"]:
        figures["chosen_vs_current_throughput"] = figures["chosen_throughput_rps"] / figures["current_throughput_rps"]
    for key, value in figures.items():
        if value is not None and value == value:  # a point that failed has no figures
            metrics.log_metric(key, round(float(value), 4))
    tuning.metadata.update({"written": report["written"], "write_note": report["write_note"], "why": report["why"]})
    return report["write_note"]
