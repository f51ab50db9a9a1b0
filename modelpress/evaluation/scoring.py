"""Scores on a split from a model's outputs, whichever runtime produced them: numpy only, so
ONNX steps (quantisation, benchmarking, serving checks) score without importing torch.

Two tasks: classification (outputs are logits, one column per class; headline: accuracy)
and regression (one output column; headline: RMSE, lower is better). `score_outputs` is the
one entry point; `quality_metric(task)` says which score a task is judged by and which way
is better, so selection, blessing and the reports read one value whatever the task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelpress.core.errors import ModelpressError

TASKS = ("classification", "regression")
REGRESSION_SCORES = ("rmse", "mae", "r2")


@dataclass(frozen=True)
class QualityMetric:
    name: str  # the key in a score dict and in model metadata
    higher_is_better: bool
    label: str  # how reports and logs name it

    def better(self, a: float, b: float) -> bool:
        """True when `a` is strictly better than `b`."""
        return a > b if self.higher_is_better else a < b

    def loss_of(self, reference: float, value: float) -> float:
        """How much worse `value` is than `reference` (positive: worse), in the metric's units."""
        return reference - value if self.higher_is_better else value - reference


QUALITY = {"classification": QualityMetric("accuracy", True, "accuracy"),
           "regression": QualityMetric("rmse", False, "RMSE")}


def _known_task(task: str) -> str:
    if task not in TASKS:
        raise ModelpressError(f"task must be one of {list(TASKS)} (or 'auto' for the dataset step), got {task!r}")
    return task


def quality_metric(task: str | None) -> QualityMetric:
    return QUALITY[_known_task(task or "classification")]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[list[int]]:
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m.tolist()


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of integer labels under softmax(logits), in float64 (no torch needed)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def score_logits(logits: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    pred = logits.argmax(axis=1)
    loss = cross_entropy(logits, y)
    return {"accuracy": float((pred == y).mean()), "loss": loss,
            "confusion_matrix": confusion_matrix(y, pred, num_classes)}


def score_regression(outputs: np.ndarray, y: np.ndarray) -> dict:
    """RMSE, MAE and R² of one-column predictions; `loss` is the MSE (what training minimises)."""
    pred = np.asarray(outputs, dtype=np.float64).reshape(len(y), -1)
    if pred.shape[1] != 1:
        raise ModelpressError(f"a regression model has one output per example; this one gives {pred.shape[1]}")
    err = pred[:, 0] - np.asarray(y, dtype=np.float64)
    mse = float(np.mean(err ** 2))
    total = float(np.sum((y - np.mean(y)) ** 2))
    r2 = 1.0 - float(np.sum(err ** 2)) / total if total > 0 else 0.0
    return {"rmse": mse ** 0.5, "mae": float(np.mean(np.abs(err))), "r2": r2, "loss": mse}


def score_outputs(outputs: np.ndarray, y: np.ndarray, task: str = "classification",
                  num_classes: int | None = None) -> dict:
    """The task's scores: classification {accuracy, loss, confusion_matrix};
    regression {rmse, mae, r2, loss}."""
    if _known_task(task) == "regression":
        return score_regression(outputs, y)
    n = int(num_classes if num_classes is not None else outputs.shape[1])
    if outputs.ndim != 2 or outputs.shape[1] != n:  # e.g. a regression model scored on classes
        raise ModelpressError(f"a classifier of {n} classes gives {n} logits per example; this model gives "
                              f"outputs of shape {list(outputs.shape)}")
    return score_logits(outputs, y, n)
