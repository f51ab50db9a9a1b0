"""Scores on a split from logits, whichever runtime produced them: numpy only, so ONNX steps
(quantisation, benchmarking, serving checks) score without importing torch."""

from __future__ import annotations

import numpy as np


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
