from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def score_challenger(
    dataset: Input[Dataset],
    torch_model: Input[Model],
    onnx_model: Input[Model],
    results: Output[Artifact],
    metrics: Output[Metrics],
    repository: str = "",
    model_name: str = "digits",
    threads: int = 2,
    window_seconds: float = 0.2,
    max_windows: int = 5,
):
    """Score the challenger and the champion (latest version in `repository`) on the same test split."""
    from components._io import record
    from modelpress.selection import retraining

    result = retraining.score(dataset.path, torch_model.path, onnx_model.path, results.path,
                              champion_repository=repository, model_name=model_name, threads=threads,
                              window_seconds=window_seconds, max_windows=max_windows)
    rows = {r["role"]: r for r in result["variants"]}
    figures = {"work_seconds": result["work_seconds"], "challenger_accuracy": rows["candidate"]["accuracy"]}
    if "champion" in rows:
        figures["champion_accuracy"] = rows["champion"]["accuracy"]
    record({"metadata": {"variants": [r["name"] for r in result["variants"]]}, "metrics": figures},
                  artifact=results, metrics=metrics)
