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
    recipe: list = ["prune", "distil", "quantise"],
):
    """Prune a torch model, structured (channels removed) or unstructured (global L1), and fine-tune it.

    Args:
        model: The torch model to prune.
        dataset: The dataset artifact; fine-tuned on its train split, scored on its test split.
        method: structured (channels removed: smaller and faster; text models: attention heads and
            feed-forward neurons, or skipped with the reason where Torch-Pruning cannot prune the model) or
            unstructured (weights zeroed: smaller when compressed only).
        amount: The share of channels to remove (structured) or the target weight sparsity
            (unstructured), in [0, 1).
        steps: Unstructured only: pruning rounds on a cubic schedule, each followed by fine-tuning.
        finetune_epochs: Fine-tuning epochs (after each round, for unstructured).
        learning_rate: The peak learning rate of fine-tuning.
        seed: Seed of the fine-tuning batch order.
        recipe: The run's compression steps; without "prune" (or with a skipped model) the step writes a skip note.

    Returns:
        pruned: The pruned torch model (new layer widths in spec.json when structured); its metadata is
            the model card with sparsity, pruning method and amount.
        metrics: Params, MACs and accuracy before and after, weight sparsity and non-zero weights.
    """
    from components._io import record, skip_if, train_settings

    if skip_if("prune", recipe, [model], [pruned], [metrics]):
        return
    from modelpress.compression import pruning

    settings = train_settings(locals(), epochs=finetune_epochs, patience=0)
    record(pruning.prune(model.path, dataset.path, pruned.path, method=method, amount=amount, steps=steps,
                         settings=settings), artifact=pruned, metrics=metrics)
