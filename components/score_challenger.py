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
    """Score the challenger and the deployed champion side by side on the same test split.

    Args:
        dataset: The dataset artifact whose test split both models are scored and timed on.
        torch_model: The challenger torch model: the baseline that sets the accuracy bar.
        onnx_model: The challenger's ONNX export: the candidate to deploy.
        repository: The model repository of the deployed champion (its latest version is measured;
            none deployed: the accuracy floor alone decides).
        model_name: The deployed model's name in `repository`.
        threads: CPU threads for every runtime.
        window_seconds: The length of one batch-1 latency measurement window.
        max_windows: The most windows per variant while waiting for three consecutive ones to agree.

    Returns:
        results: Every figure as JSON, the champion's row included; the select step reads it. Its
            metadata lists the variants.
        metrics: Work seconds, the challenger's accuracy and the champion's (when one is deployed).
    """
    from components._io import record
    from modelpress.selection import retraining

    result = retraining.score(dataset.path, torch_model.path, onnx_model.path, results.path,
                              champion_repository=repository, model_name=model_name, threads=threads,
                              window_seconds=window_seconds, max_windows=max_windows)
    record(retraining.summary(result), artifact=results, metrics=metrics)
