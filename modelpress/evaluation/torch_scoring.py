"""Logits and scores of a torch model on a split."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from modelpress.evaluation.scoring import score_outputs


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, device: torch.device | str = "cpu",
                   batch_size: int = 512) -> np.ndarray:
    model.eval()
    device = torch.device(device)
    model.to(device)
    out = []
    xt = torch.from_numpy(np.ascontiguousarray(x))
    for i in range(0, len(xt), batch_size):
        out.append(model(xt[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(out).numpy()


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, num_classes: int,
             device: torch.device | str = "cpu", task: str = "classification") -> dict:
    """The task's scores (scoring.score_outputs) of `model` on (x, y)."""
    return score_outputs(predict_logits(model, x, device), y, task, num_classes)
