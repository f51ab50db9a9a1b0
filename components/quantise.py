from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def quantise(
    onnx_model: Input[Model],
    dataset: Input[Dataset],
    quantised: Output[Model],
    metrics: Output[Metrics],
    method: str = "static-int8",
    calibration_samples: int = 256,
    calibration_method: str = "MinMax",
    per_channel: bool = True,
    reduce_range: str = "auto",
):
    """ONNX Runtime quantisation: static-int8 (QDQ, calibrated), dynamic-int8 or fp16.

    reduce_range: "auto" (on for x86 CPUs without VNNI), "true" or "false".
    """
    from components._io import record
    from modelpress.compression import quantisation

    result = quantisation.quantise(onnx_model.path, dataset.path, quantised.path, method=method,
                                   calibration_samples=calibration_samples,
                                   calibration_method=calibration_method, per_channel=per_channel,
                                   reduce_range=quantisation.parse_reduce_range(reduce_range))
    record(result, artifact=quantised, metrics=metrics)
