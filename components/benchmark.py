from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def benchmark(
    dataset: Input[Dataset],
    torch_model: Input[Model],
    onnx_model: Input[Model],
    pruned_onnx: Input[Model],
    student_onnx: Input[Model],
    quantised: Input[List[Model]],
    quantised_pruned: Input[List[Model]],
    quantised_student: Input[List[Model]],
    results: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
    repository: str = "",
    model_name: str = "digits",
    threads: int = 2,
    throughput_batch: int = 64,
    window_seconds: float = 0.5,
    max_windows: int = 10,
):
    """Score and time every variant (and the deployed champion) on the same test split."""
    from modelpress.selection import comparison
    from components._io import record
    from modelpress.selection import report as report_mod
    from modelpress.deploy import repository as repo

    variants = [
        {"name": "torch eager fp32", "path": torch_model.path, "kind": "torch", "role": "baseline"},
        {"name": "onnx fp32", "path": onnx_model.path, "kind": "onnx", "role": "baseline-onnx"},
        {"name": "pruned fp32", "path": pruned_onnx.path, "kind": "onnx", "role": "candidate"},
        {"name": "student fp32", "path": student_onnx.path, "kind": "onnx", "role": "candidate"},
    ]
    for prefix, group in (("", quantised), ("pruned ", quantised_pruned), ("student ", quantised_student)):
        for art in group:
            method = art.metadata.get("quantisation", {}).get("method", "quantised")
            variants.append({"name": f"{prefix}{method}".strip(), "path": art.path, "kind": "onnx",
                             "role": "candidate", "metadata": art.metadata})
    champion = repo.latest(repository, model_name) if repository else None
    if champion is not None:
        variants.append({"name": f"champion v{champion.name}", "path": str(champion), "kind": "onnx",
                         "role": "champion"})
    result = comparison.benchmark(variants, dataset.path, results.path, threads=threads,
                                  throughput_batch=throughput_batch, window_seconds=window_seconds,
                                  max_windows=max_windows)
    with open(report.path, "w") as f:
        f.write(report_mod.render_html(result, title="modelpress benchmark"))
    figures = {"work_seconds": result["work_seconds"], "variants": len(result["variants"])}
    for row in result["variants"]:
        if row.get("latency_ms"):
            key = row["name"].replace(" ", "_").replace("-", "_")
            figures[f"{key}_p50_ms"] = row["latency_ms"]["p50"]
            figures[f"{key}_accuracy"] = row["accuracy"]
    record({"metadata": {"variants": [r["name"] for r in result["variants"]]}, "metrics": figures},
                  artifact=results, metrics=metrics)
