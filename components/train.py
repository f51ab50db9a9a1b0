from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    architecture: str = "cnn",
    model_args: dict = {},
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    optimizer: str = "adamw",
    weight_decay: float = 1e-4,
    seed: int = 0,
    patience: int = 5,
    device: str = "auto",
    weights: str = "",
    replace_head: bool = False,
    code_dir: str = "",
    onnx_model: str = "none",
    start_fingerprint: str = "",
):
    """Train (from scratch or your weights) or take your trained model as it is, and score it.

    Args:
        dataset: The dataset artifact; trained on its train split, scored on its test split.
        architecture: A built-in (mlp, cnn, mobilenet_v2), torchvision:<name>, timm:<name>, or your
            package.module:callable returning an nn.Module; for text: bert (built from model_args) or
            hf:<folder> (a Hugging Face save_pretrained folder with safetensors weights).
        model_args: The architecture's arguments, e.g. {"hidden": [64]} (mlp), {"channels": [8, 16]} (cnn),
            {"width_mult": 0.35} (mobilenet_v2), {"layers": 4, "hidden": 256, "heads": 4, "intermediate": 1024}
            (bert).
        epochs: The most epochs to train; 0 takes the model in `weights` (text: the hf: folder) as it is.
        batch_size: Examples per optimiser step.
        learning_rate: The peak learning rate of the one-cycle schedule.
        optimizer: adamw, adam or sgd (Nesterov momentum 0.9).
        weight_decay: The optimiser's weight decay.
        seed: Seed of the initial weights and the batch order.
        patience: Epochs without validation-loss improvement before stopping early; 0 never stops early.
        device: auto (a CUDA GPU when torch sees one, else the CPU), cpu or cuda[:N].
        weights: Your weights to start from: a .safetensors file or a torch.save(model.state_dict()) file
            (read with weights_only=True), local or gs://; "" starts from random weights.
        replace_head: Swap the classifier in `weights` for one sized to the dataset's classes (fine-tune).
        code_dir: The folder holding your package when `architecture` is package.module:callable.
        onnx_model: The run starts from this ONNX file instead ("none": it does not); the step is skipped.
        start_fingerprint: The content fingerprints of weights, onnx_model and code_dir (run_local.py and
            submit.py fill it in): part of this step's cache key, so a file changed in place reruns it.

    Returns:
        model: The trained torch model (weights.safetensors + spec.json); its metadata is the model
            card: architecture, params, MACs, FLOPs, test accuracy, precision, class names, input shape.
        metrics: Test accuracy and loss, training and validation losses, epochs run, samples/s and
            training compute (FLOPs, PF-days, achieved FLOP/s).
        classification: The confusion matrix on the test split.
    """
    from components._io import record, skip, train_settings
    from modelpress.compression.recipe import onnx_start

    if onnx_start(onnx_model):
        return skip("train", f"the run starts from the ONNX file {onnx_model}", [model], [metrics, classification])
    from modelpress import training

    result = training.train(dataset.path, model.path, architecture=architecture, model_args=model_args,
                            weights=weights, replace_head=replace_head, code_dir=code_dir,
                            settings=train_settings(locals()))
    record(result, artifact=model, metrics=metrics, classification=classification)
