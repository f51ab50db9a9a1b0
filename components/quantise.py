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
    recipe: list = ["prune", "distil", "quantise"],
):
    """Post-training quantisation with ONNX Runtime: static-int8 (QDQ, calibrated), dynamic-int8 or fp16.

    Args:
        onnx_model: The fp32 ONNX model to quantise.
        dataset: The dataset artifact; its train split calibrates static-int8, its test split scores.
        method: static-int8, dynamic-int8 or fp16 (fp16 is meant for GPUs); for text models also fused
            (fp32 with ONNX Runtime's transformer fusions: attention, LayerNorm, GELU).
        calibration_samples: Static-int8: training examples (text: token batches) to calibrate on (100-500 is typical).
        calibration_method: Static-int8: MinMax, Entropy or Percentile.
        per_channel: Quantise weights per output channel rather than per tensor.
        reduce_range: auto (on for x86 CPUs without VNNI, where the U8S8 path can saturate), true or false.
        recipe: The run's compression steps; without "quantise" (or with a skipped input) the step writes a skip note.

    Returns:
        quantised: The quantised ONNX model (model.onnx + meta.json); its metadata is the model card with
            the quantisation settings, sizes and the CPU's flags.
        metrics: Size, size ratio to the fp32 model, test accuracy and its change.
    """
    from components._io import record, skip_if

    if skip_if("quantise", recipe, [onnx_model], [quantised], [metrics]):
        return
    from modelpress.compression import quantisation

    result = quantisation.quantise(onnx_model.path, dataset.path, quantised.path, method=method,
                                   calibration_samples=calibration_samples,
                                   calibration_method=calibration_method, per_channel=per_channel,
                                   reduce_range=quantisation.parse_reduce_range(reduce_range))
    record(result, artifact=quantised, metrics=metrics)
