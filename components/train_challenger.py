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
    """Train a challenger to the deployed champion, from scratch or warm-started from given weights.

    Args:
        dataset: The (new) dataset artifact; trained on its train split, scored on its test split.
        warm_start: A torch model folder or gs:// URI to start from; "champion": the weights the latest
            version of `model_name` in `repository` was exported from; "": train from scratch. A warm
            start keeps that model's architecture.
        repository: The model repository the champion is deployed to (for warm_start "champion").
        model_name: The deployed model's name in `repository`.
        architecture: From scratch only: the registry architecture (mlp, cnn or mobilenet_v2).
        model_args: From scratch only: the architecture's arguments, e.g. {"channels": [8, 16]}.
        epochs: The most epochs to train.
        batch_size: Examples per optimiser step.
        learning_rate: The peak learning rate of the one-cycle schedule.
        optimizer: adamw, adam or sgd (Nesterov momentum 0.9).
        weight_decay: The optimiser's weight decay.
        seed: Seed of the initial weights (from scratch) and the batch order.
        patience: Epochs without validation-loss improvement before stopping early; 0 never stops early.
        device: auto (a CUDA GPU when torch sees one, else the CPU), cpu or cuda[:N].

    Returns:
        model: The challenger torch model; its metadata is the model card (and `warm_start`, when used).
        metrics: Test accuracy and loss, the accuracy before training (warm start), losses, epochs run.
        classification: The confusion matrix on the test split.
    """
    from components._io import record, train_settings
    from modelpress.selection import retraining

    result = retraining.train_challenger(dataset.path, model.path, warm_start=warm_start,
                                         architecture=architecture, model_args=model_args,
                                         settings=train_settings(locals()), champion_repository=repository,
                                         model_name=model_name)
    record(result, artifact=model, metrics=metrics, classification=classification)
