"""The training loop for text classifiers (Hugging Face sequence classifiers), shared by training
from scratch, fine-tuning, pruning's fine-tune and DistilBERT-style distillation.

It is what BERT fine-tuning does: AdamW (no weight decay on biases and LayerNorm weights), a
linear warm-up then linear decay to 0, gradients clipped at norm 1. Each epoch visits the rows
in a seeded random order, and each batch is cut to its own longest row (padding costs time
quadratically in attention and changes no logit under the mask; not sorting by length keeps
the batches as mixed as the data). The weights of the epoch with the best validation accuracy
(lower validation loss breaking ties) are the ones kept; `patience` epochs without a better
one stop the run early.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ModelpressError
from modelpress.data.token_batches import labels_of, token_arrays, trim_batch
from modelpress.evaluation import score_outputs
from modelpress.models.text import model_inputs
from modelpress.training.loop import resolve_device

EVAL_BATCH = 64
PROGRESS_SECONDS = 30
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")
# loss(logits, labels, teacher logits or None) -> scalar
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def split_arrays(data, where: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    arrays = token_arrays(data, where)
    return arrays, labels_of(data, len(arrays["input_ids"]), where)


def check_settings(epochs, learning_rate, batch_size, warmup_fraction, weight_decay, patience=0) -> None:
    problems = []
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        problems.append(f"epochs must be a whole number >= 1, got {epochs!r}")
    if not (isinstance(learning_rate, (int, float)) and 0 < learning_rate < 1):
        problems.append(f"learning_rate must be in (0, 1) (BERT fine-tuning: 2e-5..1e-4; tiny models trained "
                        f"from scratch: ~1e-3), got {learning_rate!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        problems.append(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if not (isinstance(warmup_fraction, (int, float)) and 0 <= warmup_fraction < 1):
        problems.append(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        problems.append(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
        problems.append(f"patience must be a whole number >= 0 (0: never stop early), got {patience!r}")
    if problems:
        raise ModelpressError("invalid text training settings: " + "; ".join(problems))


def _tensors(arrays, rows, names, device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in trim_batch(arrays, rows, names).items()}


@torch.no_grad()
def predict_text(model: nn.Module, data, *, batch_size: int = EVAL_BATCH, device="cpu") -> np.ndarray:
    """float32 logits of every row (in order), eval mode, each batch cut to its longest row."""
    arrays = token_arrays(data, "split")
    names = model_inputs(model)
    was_training = model.training
    model.eval()
    n = len(arrays["input_ids"])
    out = [model(**_tensors(arrays, np.arange(i, min(n, i + batch_size)), names, device)).logits.float().cpu()
           for i in range(0, n, batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy()


def score_text(model: nn.Module, data, device="cpu") -> dict:
    """Accuracy, loss and confusion matrix of a torch text classifier on a split."""
    arrays, y = split_arrays(data, "split")
    logits = predict_text(model, arrays, device=device)
    return score_outputs(logits, y, "classification", logits.shape[1])


def _optimiser(model: nn.Module, learning_rate: float, weight_decay: float, total: int, warmup: int):
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if name.endswith(NO_DECAY) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": plain, "weight_decay": 0.0}], lr=learning_rate)

    def factor(step: int) -> float:  # linear warm-up to the peak, then linear decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit_text(model: nn.Module, train, val, *, loss_fn: LossFn, teacher_logits: np.ndarray | None, epochs: int,
             learning_rate: float, batch_size: int, seed: int, warmup_fraction: float, weight_decay: float,
             device, log: Callable[[str], None], label: str, patience: int = 0) -> tuple[list[dict], dict]:
    """Train `model` in place (see the module docstring); returns (one row per epoch, the best epoch's
    validation scores). `teacher_logits` (one row per training row) are handed to `loss_fn`."""
    (arrays, y), (val_arrays, val_y) = split_arrays(train, "train_split"), split_arrays(val, "val_split")
    classes = int(model.config.num_labels)
    for where, labels in (("train_split", y), ("val_split", val_y)):
        if labels.min() < 0 or labels.max() >= classes:
            raise ModelpressError(f"{where} has labels {int(labels.min())}..{int(labels.max())} but the model "
                                  f"classifies {classes}; use the dataset the model was built for")
    names = model_inputs(model)
    n = len(y)
    total = math.ceil(n / batch_size) * epochs
    opt, sched = _optimiser(model, learning_rate, weight_decay, total, int(warmup_fraction * total))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout
    soft = torch.from_numpy(teacher_logits) if teacher_logits is not None else None
    history, best, best_key, since_best = [], None, None, 0
    for epoch in range(1, epochs + 1):
        t0 = last_note = time.perf_counter()
        model.train()
        total_loss = 0.0
        parts = np.array_split(rng.permutation(n), math.ceil(n / batch_size))
        for i, rows in enumerate(parts):
            if time.perf_counter() - last_note > PROGRESS_SECONDS:  # a line now and then on long epochs
                last_note = time.perf_counter()
                done = sum(len(p) for p in parts[:i])
                log(f"[{label}] epoch {epoch}/{epochs}: {i}/{len(parts)} batches, train loss so far "
                    f"{total_loss / max(1, done):.4f}, {done / (last_note - t0):.0f} texts/s")
            logits = model(**_tensors(arrays, rows, names, device)).logits
            target = torch.from_numpy(y[rows]).to(device)
            loss = loss_fn(logits, target, None if soft is None else soft[rows].to(device))
            if not torch.isfinite(loss):
                raise ModelpressError(f"{label}: the loss became {loss.item()} in epoch {epoch}; lower "
                                      f"learning_rate (now {learning_rate})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total_loss += float(loss.item()) * len(rows)
        scores = score_text(model, {**val_arrays, "y": val_y}, device)
        row = {"epoch": epoch, "train_loss": total_loss / n, "val_loss": scores["loss"],
               "val_accuracy": scores["accuracy"], "learning_rate": float(sched.get_last_lr()[0]),
               "seconds": time.perf_counter() - t0, "samples": int(n)}
        history.append(row)
        key = (scores["accuracy"], -scores["loss"])
        if best_key is None or key > best_key:
            best_key, best, since_best = key, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, 0
            row["best"] = True
        else:
            since_best += 1
        log(f"[{label}] epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"val accuracy {row['val_accuracy']:.4f}{' (best)' if row.get('best') else ''}, {row['seconds']:.1f}s")
        if patience and since_best >= patience and epoch < epochs:
            log(f"[{label}] stopping early: no better validation accuracy for {patience} epoch(s)")
            break
    model.load_state_dict(best)
    model.eval()
    best_row = max(history, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    return history, {"val_accuracy": best_row["val_accuracy"], "val_loss": best_row["val_loss"],
                     "best_epoch": best_row["epoch"], "epochs_run": len(history)}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_text(model: nn.Module, train_split, val_split, *, epochs: int = 3, learning_rate: float = 5e-5,
               batch_size: int = 32, seed: int = 0, warmup_fraction: float = 0.1, weight_decay: float = 0.01,
               patience: int = 0, device: str = "auto", log: Callable[[str], None] = print,
               label: str = "train-text") -> dict:
    """Fine-tune (or train from scratch) a sequence classifier on the labels alone. Returns {"model"
    (best validation weights, eval mode, on the CPU), "history" (one row per epoch), "scores",
    "settings"}."""
    check_settings(epochs, learning_rate, batch_size, warmup_fraction, weight_decay, patience)
    dev = resolve_device(device)
    settings = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "seed": seed,
                "warmup_fraction": warmup_fraction, "weight_decay": weight_decay, "patience": patience,
                "device": str(dev)}
    model.to(dev)
    history, scores = fit_text(model, train_split, val_split, loss_fn=lambda s, y, _t: F.cross_entropy(s, y),
                               teacher_logits=None, device=dev, log=log, label=label,
                               **{k: v for k, v in settings.items() if k != "device"})
    model.to("cpu")
    return {"model": model, "history": history, "scores": {**scores, "params": count_params(model)},
            "settings": settings}
