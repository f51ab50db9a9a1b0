"""Knowledge distillation: a small student learns from a teacher model.

Classification (Hinton et al. 2015), on the teacher's soft targets:
  loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
  The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones.
Regression, on the teacher's outputs (no softmax, so no temperature):
  loss = alpha * MSE(s, t) + (1 - alpha) * MSE(s, y), both on standardised values
  ((s - t) / target_std)^2, as training's regression loss is.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

import torch
import torch.nn.functional as F

from modelpress import models
from modelpress.core.errors import ModelpressError
from modelpress.core.results import ModelCard, StepResult
from modelpress.core.timing import timed
from modelpress.data.dataset import Dataset, lineage, load_dataset
from modelpress.data.text import is_text_dataset
from modelpress.evaluation import REGRESSION_SCORES
from modelpress.evaluation.torch_scoring import evaluate, predict_logits
from modelpress.models import flops as flops_mod
from modelpress.training.loop import TrainSettings, fit, standardised_mse, target_std


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, y)
    return alpha * temperature ** 2 * soft + (1.0 - alpha) * hard


def regression_kd_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, std: float,
                       alpha: float) -> torch.Tensor:
    """alpha * MSE(student, teacher) + (1 - alpha) * MSE(student, y), on standardised values."""
    return (alpha * standardised_mse(student, teacher.reshape(len(y), -1)[:, 0], std)
            + (1.0 - alpha) * standardised_mse(student, y, std))


def model_task(spec: dict) -> str:
    """The task a saved model was trained for (models from before tasks: classification)."""
    task = spec.get("info", {}).get("task")
    if task:
        return task
    return "regression" if (spec.get("normalisation") or {}).get("target") else "classification"


def _check_teacher(teacher_spec: dict, ds: Dataset, student_n: int) -> None:
    teacher_task = model_task(teacher_spec)
    if teacher_task != ds.task:
        raise ModelpressError(f"the teacher is a {teacher_task} model but the dataset is for {ds.task}; "
                              "distil on the teacher's own dataset")
    teacher_n = int(teacher_spec["args"]["num_classes"])
    if ds.task == "classification":
        teacher_classes = teacher_spec.get("info", {}).get("class_names")
        if teacher_n != ds.num_outputs or (teacher_classes is not None and list(teacher_classes) != ds.class_names):
            raise ModelpressError(f"the teacher was trained on classes {teacher_classes or teacher_n} but "
                                  f"the dataset has {ds.class_names}; distil on the teacher's own dataset")
    if student_n != teacher_n:
        what = "classes" if ds.task == "classification" else "outputs"
        raise ModelpressError(f"the student has {student_n} {what} but the teacher has {teacher_n}; "
                              f"a student must predict the teacher's {what}")


def _quality(test: dict) -> float:
    return test["rmse"] if "rmse" in test else test["accuracy"]


@timed
def distil(teacher_dir: str, dataset_dir: str, out_dir: str, *, student_architecture: str = "cnn",
           student_args: dict | None = None, temperature: float = 4.0, alpha: float = 0.9,
           settings: TrainSettings | None = None, code_dir: str = "", log: Callable[[str], None] = print) -> dict:
    """Train a student (built-in, torchvision:, timm: or your package.module:callable, from
    `code_dir`) against a teacher model artifact."""
    if temperature <= 0:
        raise ModelpressError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ModelpressError(f"alpha must be in [0, 1], got {alpha}")
    settings = (settings or TrainSettings()).validate()
    if is_text_dataset(dataset_dir):
        from modelpress.compression.text_steps import distil_text_step

        return distil_text_step(teacher_dir, dataset_dir, out_dir, student_architecture=student_architecture,
                                student_args=student_args, temperature=temperature, alpha=alpha, settings=settings,
                                log=log)
    teacher, teacher_spec = models.load_model(teacher_dir)
    ds = load_dataset(dataset_dir)
    n, regression = ds.num_outputs, ds.task == "regression"
    student_args = dict(student_args or {})
    _check_teacher(teacher_spec, ds, int(student_args.pop("num_classes", n)))
    spec = models.make_spec(student_architecture, ds.feature_shape, n, normalisation=ds.schema.get("normalisation"),
                            code_dir=code_dir, **student_args)
    torch.manual_seed(settings.seed)
    student = models.build(spec)
    t0 = time.perf_counter()
    teacher_outputs = predict_logits(teacher, ds.train.x)  # once: no augmentation, so fixed
    teacher_test = evaluate(teacher, ds.test.x, ds.test.y, n, task=ds.task)
    name = "RMSE" if regression else "accuracy"
    log(f"[distil] teacher {teacher_spec['architecture']} ({models.count_params(teacher):,} params, "
        f"test {name} {_quality(teacher_test):.4g}) -> student {student_architecture} "
        f"({models.count_params(student):,} params); " + (f"alpha={alpha} on the teacher's outputs (regression: "
                                                            "temperature unused)" if regression
                                                            else f"T={temperature}, alpha={alpha}"))
    if regression:
        std = target_std(ds)

        def loss_fn(out, y, t_out):
            return regression_kd_loss(out, t_out, y, std, alpha)
    else:
        def loss_fn(logits, y, t_logits):
            return kd_loss(logits, t_logits, y, temperature, alpha)

    fitted = fit(student, ds, settings, loss_fn=loss_fn, aux=teacher_outputs, log=log, label="distil")
    test = evaluate(student, ds.test.x, ds.test.y, n, task=ds.task)
    seconds = time.perf_counter() - t0
    params, tparams = models.count_params(student), models.count_params(teacher)
    fwd = flops_mod.forward_flops(student, ds.feature_shape)
    models.save_model(student, spec, out_dir, extra={
        "distillation": {"teacher": teacher_spec["architecture"], "temperature": None if regression else temperature,
                         "alpha": alpha, "train_settings": asdict(settings),
                         # how the teacher was made, for the student's model card
                         "teacher_lineage": {k: v for k, v in (teacher_spec.get("info") or {}).items()
                                             if k in ("start", "weights", "train_settings", "pruning")}},
        "class_names": ds.class_names, "task": ds.task, "dataset": lineage(ds.schema)})
    s_q, t_q = _quality(test), _quality(teacher_test)
    ratio = f" ({s_q / t_q:.1%} of it)" if t_q else ""
    log(f"[distil] student test {name} {s_q:.4g} vs teacher {t_q:.4g}{ratio} with {params / tparams:.1%} "
        "of its params")
    sizes = {"student_params": params, "teacher_params": tparams, "params_ratio": params / tparams,
             "epochs_run": fitted["epochs_run"], "wall_seconds": seconds}
    if regression:
        scores = {k: test[k] for k in REGRESSION_SCORES}
        card = ModelCard(framework="pytorch", accuracy=None, class_names=ds.class_names, task="regression",
                         scores=scores, architecture=student_architecture, params=params, flops=fwd,
                         extra={"teacher_rmse": t_q})
        metrics = {**{f"student_{k}": v for k, v in scores.items()}, "teacher_rmse": t_q,
                   "teacher_mae": teacher_test["mae"], "teacher_r2": teacher_test["r2"],
                   "rmse_ratio": s_q / t_q if t_q else 0.0, **sizes}
        return StepResult(card, metrics).as_dict()
    card = ModelCard(framework="pytorch", accuracy=s_q, class_names=ds.class_names, task="classification",
                     architecture=student_architecture, params=params, flops=fwd, extra={"teacher_accuracy": t_q})
    metrics = {"student_accuracy": s_q, "teacher_accuracy": t_q, "accuracy_ratio": s_q / t_q if t_q else 0.0,
               **sizes}
    return StepResult(card, metrics, confusion_matrix=test["confusion_matrix"]).as_dict()
