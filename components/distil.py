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
):
    """Knowledge distillation: the student learns the teacher's soft targets (Hinton loss)."""
    from modelpress.compression import distillation
    from components._io import record
    from modelpress import training

    settings = training.TrainSettings(epochs=epochs, learning_rate=learning_rate, seed=seed, patience=0)
    result = distillation.distil(teacher.path, dataset.path, student.path,
                                 student_architecture=student_architecture, student_args=student_args,
                                 temperature=temperature, alpha=alpha, settings=settings)
    record(result, artifact=student, metrics=metrics, classification=classification)
