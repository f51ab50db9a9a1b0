from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def qat(
    model: Input[Model],
    dataset: Input[Dataset],
    quantised: Output[Model],
    metrics: Output[Metrics],
    epochs: int = 3,
    learning_rate: float = 1e-4,
    batch_size: int = 64,
    per_channel: bool = True,
    observer: str = "moving-average-minmax",
    seed: int = 0,
    recipe: list = ["prune", "distil", "quantise"],
):
    """Quantisation-aware training: fine-tune with fake quantisation, then export an int8 ONNX model.

    Fake quantisation is inserted into the trained model (torchao's PT2E flow), the model is fine-tuned,
    converted to int8 and exported to ONNX with QuantizeLinear/DequantizeLinear pairs.

    Args:
        model: The trained torch model (image or table); a text model is skipped with the reason.
        dataset: The dataset artifact; fine-tuned on its train split, scored on its test split.
        epochs: Fine-tuning epochs with fake quantisation (a few suffice: the weights start trained).
        learning_rate: The peak learning rate of fine-tuning (well below training's).
        batch_size: Examples per optimiser step.
        per_channel: Quantise weights per output channel (true) or per tensor.
        observer: How activation ranges are tracked while training (see modelpress.compression.qat).
        seed: Seed of the batch order.
        recipe: The run's compression steps; without "qat" (or with a skipped model) the step writes a skip note.

    Returns:
        quantised: The int8 ONNX model (model.onnx + meta.json); its metadata is the model card with the
            QAT settings, the int8 node counts and sizes.
        metrics: Test accuracy before and after, size, int8 node counts.
    """
    from components._io import record, skip_if, train_settings

    if skip_if("qat", recipe, [model], [quantised], [metrics]):
        return
    from modelpress.compression import qat as qat_lib

    settings = train_settings(locals(), patience=0)
    record(qat_lib.qat(model.path, dataset.path, quantised.path, settings=settings, per_channel=per_channel,
                       observer=observer), artifact=quantised, metrics=metrics)
