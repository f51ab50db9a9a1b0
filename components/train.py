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
):
    """Train a registry model; log test accuracy, losses, throughput and compute."""
    from components._io import record
    from modelpress import training

    settings = training.TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                      optimizer=optimizer, weight_decay=weight_decay, seed=seed,
                                      patience=patience, device=device)
    result = training.train(dataset.path, model.path, architecture=architecture,
                            model_args=model_args, settings=settings)
    record(result, artifact=model, metrics=metrics, classification=classification)
