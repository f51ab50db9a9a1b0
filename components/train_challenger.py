from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def train_challenger(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    warm_start: str = "",
    repository: str = "",
    model_name: str = "digits",
    architecture: str = "cnn",
    model_args: dict = {},
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    optimizer: str = "adamw",
    weight_decay: float = 1e-4,
    seed: int = 0,
    patience: int = 5,
    device: str = "auto",
):
    """Train a challenger like `train`. warm_start: a torch model dir or gs:// URI, or "champion" (the
    weights the latest version of `model_name` in `repository` was exported from); "" = from scratch."""
    from components._io import record
    from modelpress.selection import retraining
    from modelpress import training

    settings = training.TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                      optimizer=optimizer, weight_decay=weight_decay, seed=seed,
                                      patience=patience, device=device)
    result = retraining.train_challenger(dataset.path, model.path, warm_start=warm_start,
                                         architecture=architecture, model_args=model_args, settings=settings,
                                         champion_repository=repository, model_name=model_name)
    record(result, artifact=model, metrics=metrics, classification=classification)
