from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def export_onnx(
    model: Input[Model],
    dataset: Input[Dataset],
    onnx_model: Output[Model],
    metrics: Output[Metrics],
    opset: int = 18,
    rtol: float = 1e-3,
    atol: float = 1e-4,
):
    """Export to ONNX (dynamic batch), check it, verify it against torch on test inputs."""
    from modelpress.export import onnx_export
    from components._io import record

    result = onnx_export.export_onnx(model.path, dataset.path, onnx_model.path, opset=opset,
                                rtol=rtol, atol=atol)
    record(result, artifact=onnx_model, metrics=metrics)
