from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def export_onnx(
    model: Input[Model],
    dataset: Input[Dataset],
    onnx_model: Output[Model],
    metrics: Output[Metrics],
    imported: Input[Model] = None,
    opset: int = 18,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    start_fingerprint: str = "",
):
    """Export a torch model to ONNX (dynamic batch) and verify it against torch, or take your ONNX file.

    Args:
        model: The torch model to export. When its step was skipped because the run starts from an ONNX
            file, `imported` is checked against the dataset and becomes this step's output instead.
        dataset: The dataset artifact; its test split verifies the export and scores it.
        imported: The ONNX file the run starts from (dsl.importer), given to the baseline's export only.
        opset: The ONNX opset to export to.
        rtol: Relative tolerance of the logits against torch's.
        atol: Absolute tolerance of the logits against torch's; any logit beyond atol + rtol * |torch|
            fails the step.
        start_fingerprint: The content fingerprints of weights, onnx_model and code_dir (run_local.py and
            submit.py fill it in): part of this step's cache key, so a file changed in place reruns it.

    Returns:
        onnx_model: The ONNX model (model.onnx with embedded weights + meta.json); its metadata is the
            model card with the opset, the input a client sends, the size and the torch model it came from.
        metrics: ONNX Runtime test accuracy, the largest differences from torch, size, opset.
    """
    from components._io import record, skip_if
    from modelpress.core.results import skipped

    if imported is not None and skipped(model.path) and skipped(model.path).get("step") == "train":
        from modelpress.export import onnx_import

        return record(onnx_import.import_onnx(imported.path, dataset.path, onnx_model.path),
                      artifact=onnx_model, metrics=metrics)
    if skip_if("export-onnx", [], [model], [onnx_model], [metrics]):
        return
    from modelpress.export import onnx_export

    record(onnx_export.export_onnx(model.path, dataset.path, onnx_model.path, opset=opset, rtol=rtol, atol=atol),
           artifact=onnx_model, metrics=metrics)
