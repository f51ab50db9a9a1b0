from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def batch_predict(
    source: str,
    predictions: Output[Dataset],
    errors: Output[Dataset],
    metrics: Output[Metrics],
    repository: str = "",
    model_name: str = "",
    version: int = 0,
    onnx_model: str = "",
    key_column: str = "",
    label_column: str = "label",
    text_column: str = "",
    output_format: str = "jsonl",
    batch_size: int = 64,
    threads: int = 2,
    chunk_rows: int = 10000,
) -> int:
    """Score every instance of a source with a deployed model (or an ONNX model), streamed in chunks.

    Args:
        source: The instances: a .csv, .jsonl or .npz file, a folder of images, or 'digits'/'diabetes' (local or gs://).
        repository: The Triton-layout model repository holding the model (ignored with onnx_model).
        model_name: The model's name in `repository`.
        version: The version to score with; 0: the deployed champion (the newest version served).
        onnx_model: An ONNX model folder (model.onnx + meta.json) to score with instead of the repository's.
        key_column: A column (JSONL key, NPZ array) carried through to each prediction; images are keyed by path.
        label_column: A column to ignore when the model's meta.json does not name its feature columns.
        text_column: A text model's column (CSV) or key (JSONL); empty: "text".
        output_format: jsonl, csv or parquet (parquet needs pyarrow).
        batch_size: Instances per ONNX Runtime run.
        threads: ONNX Runtime intra-op threads.
        chunk_rows: Instances read, scored and written at a time (memory follows it, not the input's size).

    Returns:
        predictions: predictions.<format> (key, predicted class or value, logits) and summary.json.
        errors: errors.jsonl: each malformed row with its row number, key, the row as read and the reason.
        metrics: Rows read, predicted and failed, seconds and rows per second.
        Output: The number of rows predicted.
    """
    import os

    from components._io import from_arguments, record
    from modelpress import batch

    model = batch.resolve_model(repository=repository, model_name=model_name, version=version, onnx_model=onnx_model)
    settings = from_arguments(batch.BatchSettings, locals(), text_column=text_column or "text")
    summary = batch.predict(source, model, predictions.path, settings,
                            errors_path=os.path.join(errors.path, batch.ERRORS_FILE))
    record(batch.step_result(summary), artifact=predictions, metrics=metrics)
    return summary["rows_predicted"]
