from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def distil(
    teacher: Input[Model],
    dataset: Input[Dataset],
    student: Output[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    student_architecture: str = "cnn",
    student_args: dict = {"channels": [8, 16]},
    temperature: float = 4.0,
    alpha: float = 0.9,
    epochs: int = 20,
    learning_rate: float = 2e-3,
    seed: int = 0,
    code_dir: str = "",
    recipe: list = ["prune", "distil", "quantise"],
):
    """Knowledge distillation: a small student learns the teacher's soft targets (Hinton loss).

    Args:
        teacher: The trained torch model to learn from.
        dataset: The teacher's dataset artifact; the student trains on its train split and both are
            scored on its test split.
        student_architecture: The student's architecture: a built-in (mlp, cnn, mobilenet_v2), torchvision:,
            timm: or package.module:callable; for a text teacher: from-teacher (its own class with fewer
            layers, each from every other teacher layer: DistilBERT-style) or bert (a fresh one).
        student_args: The student architecture's arguments, e.g. {"channels": [8, 16]}; from-teacher:
            {"layers": N} (default half the teacher's).
        temperature: The softmax temperature of the soft targets (> 0).
        alpha: The soft-target share of the loss, in [0, 1]; the rest is cross-entropy on the labels.
        epochs: Training epochs (no early stopping).
        learning_rate: The peak learning rate of the one-cycle schedule.
        seed: Seed of the student's initial weights and the batch order.
        code_dir: The folder holding the student's code when student_architecture is package.module:callable.
        recipe: The run's compression steps; without "distil" (or with a skipped teacher) the step writes a skip note.

    Returns:
        student: The student torch model; its metadata is the model card with the teacher's accuracy.
        metrics: Student and teacher accuracy and params, their ratios, epochs run.
        classification: The student's confusion matrix on the test split.
    """
    from components._io import record, skip_if, train_settings

    if skip_if("distil", recipe, [teacher], [student], [metrics, classification]):
        return
    from modelpress.compression import distillation

    result = distillation.distil(teacher.path, dataset.path, student.path,
                                 student_architecture=student_architecture, student_args=student_args, code_dir=code_dir,
                                 temperature=temperature, alpha=alpha, settings=train_settings(locals(), patience=0))
    record(result, artifact=student, metrics=metrics, classification=classification)
