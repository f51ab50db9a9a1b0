"""DistilBERT-style distillation of a text classifier.

The student starts from the teacher (``student_from_teacher``: half the layers, layer i from teacher
layer 2i, embeddings and head copied) and learns from both the teacher's soft targets and the labels:
  loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
(``kd_loss``, shared with the image models; T^2 keeps the soft gradients on the hard ones' scale),
with the text training loop (``training.text_loop``: AdamW, linear warm-up and decay, batches cut
to their longest row, the best validation epoch kept).
"""

from __future__ import annotations

import copy
import os
from typing import Callable

import numpy as np
from torch import nn

from modelpress.compression.distillation import kd_loss
from modelpress.core.errors import ModelpressError
from modelpress.models.text import load_text_model, student_from_teacher, student_layers
from modelpress.training.loop import resolve_device
from modelpress.training.text_loop import check_settings, count_params, fit_text, predict_text, score_text, split_arrays


def distil_text(teacher: nn.Module | str | os.PathLike, student: nn.Module | int | None = None, train_split=None,
                val_split=None, *, temperature: float = 2.0, alpha: float = 0.5, epochs: int = 3,
                learning_rate: float = 5e-5, batch_size: int = 32, seed: int = 0, warmup_fraction: float = 0.1,
                weight_decay: float = 0.01, device: str = "auto", test_split=None,
                log: Callable[[str], None] = print) -> dict:
    """Distil ``teacher`` (a sequence classifier, or a text model artifact's folder) into ``student``:
    a model (used as it is), a number of layers, or None for half the teacher's depth (both started
    from the teacher with ``student_from_teacher``). The teacher is never trained and is returned to
    its device. Returns {"model" (the student: best validation weights, eval mode, on the CPU),
    "history", "scores" (student and teacher validation accuracy and loss, params; test accuracy and
    loss too where ``test_split`` is given), "settings"}."""
    if train_split is None or val_split is None:
        raise ModelpressError("distil_text needs train_split and val_split (load_text_dataset(...).train and "
                              ".validation)")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ModelpressError(f"temperature must be > 0 (DistilBERT and Hinton et al.: 2 to 4), got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ModelpressError(f"alpha (the soft-target loss's weight) must be in [0, 1], got {alpha!r}")
    check_settings(epochs, learning_rate, batch_size, warmup_fraction, weight_decay)
    if isinstance(teacher, (str, os.PathLike)):
        teacher, _ = load_text_model(str(teacher))
    if student is None or isinstance(student, int):
        student = student_from_teacher(teacher, student)
        start = f"from the teacher's layers {_picked(teacher, student)}"
    else:
        student = copy.deepcopy(student)  # the caller's model stays as it was
        start = "as given"
    t_n, s_n = int(teacher.config.num_labels), int(student.config.num_labels)
    if t_n != s_n:
        raise ModelpressError(f"the student classifies {s_n} labels but the teacher {t_n}; a student must "
                              "predict the teacher's labels (build it with student_from_teacher)")
    dev = resolve_device(device)
    teacher_device = next(teacher.parameters()).device
    teacher.to(dev)
    train_arrays, _ = split_arrays(train_split, "train_split")
    val_arrays, val_y = split_arrays(val_split, "val_split")
    # once, in eval mode: the teacher's targets for each row do not change between epochs
    teacher_logits = predict_text(teacher, train_arrays, device=dev).astype(np.float32)
    teacher_val = score_text(teacher, {**val_arrays, "y": val_y}, dev)
    teacher.to(teacher_device)
    t_layers, s_layers = int(teacher.config.num_hidden_layers), int(student.config.num_hidden_layers)
    log(f"[distil-text] teacher {t_layers} layers ({count_params(teacher):,} params, val accuracy "
        f"{teacher_val['accuracy']:.4f}) -> student {s_layers} layers ({count_params(student):,} params, {start}); "
        f"T={temperature}, alpha={alpha}")
    settings = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed,
                "warmup_fraction": warmup_fraction, "weight_decay": weight_decay}
    student.to(dev)
    history, scores = fit_text(student, train_split, val_split, teacher_logits=teacher_logits, device=dev, log=log,
                           loss_fn=lambda s, y, t: kd_loss(s, t, y, temperature, alpha), label="distil-text",
                           **settings)
    student.to("cpu")
    params, t_params = count_params(student), count_params(teacher)
    ratio = scores["val_accuracy"] / teacher_val["accuracy"] if teacher_val["accuracy"] else 0.0
    result_scores = {**scores, "teacher_val_accuracy": teacher_val["accuracy"], "teacher_val_loss": teacher_val["loss"],
                     "accuracy_ratio": ratio, "student_params": params, "teacher_params": t_params,
                     "params_ratio": params / t_params, "student_layers": s_layers, "teacher_layers": t_layers}
    if test_split is not None:  # each model where it now is: the student on the CPU, the teacher on its own device
        test_arrays, test_y = split_arrays(test_split, "test_split")
        for who, model in (("student", student), ("teacher", teacher)):
            test = score_text(model, {**test_arrays, "y": test_y}, next(model.parameters()).device)
            result_scores[f"{who}_test_accuracy"], result_scores[f"{who}_test_loss"] = test["accuracy"], test["loss"]
    log(f"[distil-text] student val accuracy {scores['val_accuracy']:.4f} vs teacher {teacher_val['accuracy']:.4f} "
        f"with {params / t_params:.1%} of its params (epoch {scores['best_epoch']} kept)")
    return {"model": student, "history": history, "scores": result_scores,
            "settings": {**settings, "temperature": temperature, "alpha": alpha, "device": str(dev),
                         "student_start": start}}


def _picked(teacher: nn.Module, student: nn.Module) -> list[int]:
    return student_layers(int(teacher.config.num_hidden_layers), int(student.config.num_hidden_layers))
