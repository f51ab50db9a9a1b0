from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def prune(
    model: Input[Model],
    dataset: Input[Dataset],
    pruned: Output[Model],
    metrics: Output[Metrics],
    method: str = "structured",
    amount: float = 0.5,
    steps: int = 3,
    finetune_epochs: int = 5,
    learning_rate: float = 1e-3,
    seed: int = 0,
):
    """Structured (channels removed) or unstructured (global L1) pruning, then fine-tuning.

    amount: channel ratio for structured, target weight sparsity for unstructured.
    """
    from components._io import record
    from modelpress.compression import pruning
    from modelpress import training

    settings = training.TrainSettings(epochs=finetune_epochs, learning_rate=learning_rate, seed=seed,
                                      patience=0)
    result = pruning.prune(model.path, dataset.path, pruned.path, method=method, amount=amount,
                           steps=steps, settings=settings)
    record(result, artifact=pruned, metrics=metrics)
