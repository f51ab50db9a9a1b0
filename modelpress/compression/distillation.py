"""Knowledge distillation (Hinton et al. 2015): a small student learns the teacher's soft targets.

loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn.functional as F

from modelpress.models import flops as flops_mod
from modelpress import models
from modelpress.data.dataset import load_dataset
from modelpress.core.errors import ModelpressError
from modelpress.core.results import ModelCard, StepResult
from modelpress.core.timing import timed
from modelpress.evaluation.torch_scoring import evaluate, predict_logits
from modelpress.training.loop import TrainSettings, fit


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, y)
    return alpha * temperature ** 2 * soft + (1.0 - alpha) * hard


@timed
def distil(teacher_dir: str, dataset_dir: str, out_dir: str, *, student_architecture: str = "cnn",
           student_args: dict | None = None, temperature: float = 4.0, alpha: float = 0.9,
           settings: TrainSettings | None = None, log: Callable[[str], None] = print) -> dict:
    """Train a student from the registry against a teacher model artifact."""
    if temperature <= 0:
        raise ModelpressError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ModelpressError(f"alpha must be in [0, 1], got {alpha}")
    settings = (settings or TrainSettings()).validate()
    teacher, teacher_spec = models.load_model(teacher_dir)
    ds = load_dataset(dataset_dir)
    n = len(ds.class_names)
    teacher_classes = teacher_spec.get("info", {}).get("class_names")
    teacher_n = int(teacher_spec["args"]["num_classes"])
    student_args = dict(student_args or {})
    student_n = int(student_args.pop("num_classes", n))
    if teacher_n != n or (teacher_classes is not None and list(teacher_classes) != ds.class_names):
        raise ModelpressError(f"the teacher was trained on classes {teacher_classes or teacher_n} but "
                              f"the dataset has {ds.class_names}; distil on the teacher's own dataset")
    if student_n != teacher_n:
        raise ModelpressError(f"the student has {student_n} classes but the teacher has {teacher_n}; "
                              "a student must predict the teacher's classes")
    spec = models.make_spec(student_architecture, ds.feature_shape, n,
                            normalisation=ds.schema.get("normalisation"), **student_args)
    torch.manual_seed(settings.seed)
    student = models.build(spec)
    t0 = time.perf_counter()
    teacher_logits = predict_logits(teacher, ds.train.x)  # once: no augmentation, so fixed
    teacher_test = evaluate(teacher, ds.test.x, ds.test.y, n)["accuracy"]
    log(f"[distil] teacher {teacher_spec['architecture']} ({models.count_params(teacher):,} params, "
        f"test accuracy {teacher_test:.4f}) -> student {student_architecture} "
        f"({models.count_params(student):,} params); T={temperature}, alpha={alpha}")

    def loss_fn(logits, y, t_logits):
        return kd_loss(logits, t_logits, y, temperature, alpha)

    fitted = fit(student, ds, settings, loss_fn=loss_fn, aux=teacher_logits, log=log, label="distil")
    test = evaluate(student, ds.test.x, ds.test.y, n)
    seconds = time.perf_counter() - t0
    params, tparams = models.count_params(student), models.count_params(teacher)
    fwd = flops_mod.forward_flops(student, ds.feature_shape)
    models.save_model(student, spec, out_dir, extra={
        "distillation": {"teacher": teacher_spec["architecture"], "temperature": temperature,
                         "alpha": alpha, "train_settings": asdict(settings)},
        "class_names": ds.class_names})
    log(f"[distil] student test accuracy {test['accuracy']:.4f} vs teacher {teacher_test:.4f} "
        f"({test['accuracy'] / teacher_test:.1%} of it) with {params / tparams:.1%} of its params")
    card = ModelCard(framework="pytorch", accuracy=test["accuracy"], class_names=ds.class_names,
                     architecture=student_architecture, params=params, flops=fwd,
                     extra={"teacher_accuracy": teacher_test})
    metrics = {"student_accuracy": test["accuracy"], "teacher_accuracy": teacher_test,
               "accuracy_ratio": test["accuracy"] / teacher_test if teacher_test else 0.0,
               "student_params": params, "teacher_params": tparams, "params_ratio": params / tparams,
               "epochs_run": fitted["epochs_run"], "wall_seconds": seconds}
    return StepResult(card, metrics, confusion_matrix=test["confusion_matrix"]).as_dict()
