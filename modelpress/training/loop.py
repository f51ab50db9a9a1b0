"""The training loop shared by train, prune (fine-tune), distil and the distributed workers.

Two tasks: classification (cross-entropy on logits) and regression (MSE on the model's one
output). A regression model answers in the target's own units (models.InputNormalised
de-standardises inside it), so its losses here are taken on standardised values,
((prediction - y) / target_std)^2, keeping them near 1 whatever the target's scale; RMSE,
MAE and R² are reported in the target's units.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ModelpressError
from modelpress.data.dataset import Dataset
from modelpress.evaluation.torch_scoring import evaluate

OPTIMISERS = ("adamw", "adam", "sgd")
# loss(outputs, y, aux) -> scalar, where aux is the batch's rows of `fit(aux=...)` (or None);
# distillation passes the teacher's outputs there.
LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class TrainSettings:
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 5  # epochs without validation-loss improvement before stopping; 0 = never
    device: str = "auto"

    def validate(self) -> "TrainSettings":
        problems = []
        # 0 is "take the trained model as it is" (train with weights); fit() itself needs >= 1
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 0:
            problems.append(f"epochs must be a whole number >= 0 (0: take your trained model as it is), "
                            f"got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 10):
            problems.append(f"learning_rate must be in (0, 10), got {self.learning_rate!r}")
        if self.optimizer not in OPTIMISERS:
            problems.append(f"optimizer must be one of {list(OPTIMISERS)}, got {self.optimizer!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.patience, int) or self.patience < 0:
            problems.append(f"patience must be a whole number >= 0, got {self.patience!r}")
        if self.device not in ("auto", "cpu") and not str(self.device).startswith("cuda"):
            problems.append(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if problems:
            raise ModelpressError("invalid training settings: " + "; ".join(problems))
        return self


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ModelpressError(f"device {device!r} asked for, but torch sees no CUDA GPU; "
                              "use device 'auto' or 'cpu'")
    return torch.device(device)


def make_optimiser(params, settings: TrainSettings, total_steps: int):
    """The optimiser the settings name, under a one-cycle learning-rate schedule."""
    params = [p for p in params if p.requires_grad]
    if settings.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=settings.learning_rate, momentum=0.9,
                              weight_decay=settings.weight_decay, nesterov=True)
    elif settings.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.learning_rate,
                                                total_steps=total_steps)
    return opt, sched


def check_finite(loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise ModelpressError(f"training loss became {loss.item()} at epoch {epoch}; "
                              "lower learning_rate")


def require_epochs(settings: TrainSettings) -> None:
    if settings.epochs < 1:
        raise ModelpressError(f"training needs epochs >= 1, got {settings.epochs}; epochs 0 (the model as it is, "
                              "not trained) is for the train step with weights set")


def target_std(ds: Dataset) -> float:
    """The regression target's training-split std: the scale regression losses are taken on."""
    target = (ds.schema.get("normalisation") or {}).get("target") or {}
    std = float(target.get("std") or np.std(ds.train.y) or 1.0)
    return std if std > 1e-12 else 1.0


def standardised_mse(pred: torch.Tensor, y: torch.Tensor, std: float) -> torch.Tensor:
    """Mean of ((pred - y) / std)^2 over one-column predictions (target units in, ~1 out)."""
    return (((pred.reshape(len(y), -1)[:, 0] - y) / std) ** 2).mean()


def task_loss(ds: Dataset) -> LossFn:
    """The training loss of the dataset's task: cross-entropy, or MSE on standardised targets."""
    if ds.task == "regression":
        std = target_std(ds)
        return lambda out, y, _aux: standardised_mse(out, y, std)
    return lambda logits, y, _aux: F.cross_entropy(logits, y)


def validation_scores(model: nn.Module, ds: Dataset, device) -> dict:
    """The validation split's scores; for regression `loss` is put on the training loss's
    (standardised) scale so train and validation losses compare, `rmse` stays in target units."""
    val = evaluate(model, ds.validation.x, ds.validation.y, ds.num_outputs, device, task=ds.task)
    if ds.task == "regression":
        val["loss"] = val["loss"] / target_std(ds) ** 2
    return val


class Progress:
    """Per-epoch history and log lines, early stopping on validation loss, the best weights."""

    def __init__(self, settings: TrainSettings, log: Callable[[str], None], label: str):
        self.settings, self.log, self.label = settings, log, label
        self.history: list[dict] = []
        self.best_state, self.best_val, self.best_epoch, self.stale = None, math.inf, 0, 0

    def end_epoch(self, epoch: int, train_loss: float, seen: int, val: dict, seconds: float,
                  model: nn.Module, **extra) -> bool:
        """Record the epoch; keep the weights if validation improved. True: stop training."""
        regression = "rmse" in val
        score = {"val_rmse": val["rmse"]} if regression else {"val_accuracy": val["accuracy"]}
        self.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], **score,
                             "seconds": seconds, **extra})
        shown = f"val_rmse {val['rmse']:.4g}" if regression else f"val_acc {val['accuracy']:.4f}"
        self.log(f"[{self.label}] epoch {epoch}/{self.settings.epochs}  train_loss {train_loss:.4f}  "
                 f"val_loss {val['loss']:.4f}  {shown}  "
                 f"{seen / seconds:,.0f} samples/s  {seconds:.1f}s")
        if val["loss"] < self.best_val - 1e-6:
            self.best_val, self.best_epoch, self.stale = val["loss"], epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.stale += 1
        if self.settings.patience and self.stale >= self.settings.patience:
            self.log(f"[{self.label}] early stop: validation loss has not improved for "
                     f"{self.settings.patience} epochs (best at epoch {self.best_epoch})")
            return True
        return False

    def finish(self, model: nn.Module) -> dict:
        """Load the best weights into `model`; summarise the run."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        model.eval()
        return {"history": self.history, "epochs_run": len(self.history), "best_epoch": self.best_epoch,
                "final_train_loss": self.history[-1]["train_loss"], "best_val_loss": self.best_val}


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time them finished
        torch.cuda.synchronize(device)


def _mean_loss(total: float, seen: int) -> tuple[float, int]:
    return total / seen, seen


def batch_step(model: nn.Module, opt, sched, x: torch.Tensor, y: torch.Tensor, device: torch.device, *,
               loss_fn: LossFn | None = None, aux: torch.Tensor | None = None) -> Callable[[object, int], float]:
    """`step(indices, epoch)`: one optimiser step on those examples; returns their loss total."""
    loss_fn = loss_fn or (lambda logits, yb, _aux: F.cross_entropy(logits, yb))

    def step(idx, epoch: int) -> float:
        xb, yb = x[idx].to(device), y[idx].to(device)
        ab = aux[idx].to(device) if aux is not None else None
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb, ab)
        check_finite(loss, epoch)
        loss.backward()
        opt.step()
        sched.step()
        return loss.item() * len(idx)

    return step


def run_epochs(model: nn.Module, settings: TrainSettings, *, batches: Callable[[int], Iterable[Sequence[int]]],
               step: Callable[[Sequence[int], int], float], validate: Callable[[], dict], device: torch.device,
               examples_per_epoch: int, log: Callable[[str], None] = print, label: str = "train",
               trained: nn.Module | None = None,
               train_loss: Callable[[float, int], tuple[float, int]] = _mean_loss) -> tuple[dict, list[float]]:
    """The epoch loop of every trainer (fit, the DDP and pipeline workers): timed steps,
    validation, log lines, early stopping; the best weights end up in `model`.

    `batches(epoch)` lists the epoch's batches of example indices; `step(indices, epoch)` trains
    on one and returns its loss total; `train_loss(total, seen)` gives the epoch's mean loss and
    example count (a distributed worker combines the ranks' totals there); `validate()` scores
    the validation split (a worker returns the same scores on every rank, so all stop
    together). `trained` is the module put in train mode every epoch (a DDP wrapper, a
    pipeline stage; `model` by default). Returns the run's summary and every step's seconds.
    """
    require_epochs(settings)
    trained = model if trained is None else trained
    progress = Progress(settings, log, label)
    step_seconds = []
    start = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        trained.train()
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        for indices in batches(epoch):
            ts = time.perf_counter()
            total += step(indices, epoch)
            sync(device)
            step_seconds.append(time.perf_counter() - ts)
            seen += len(indices)
        train_seconds = time.perf_counter() - t0
        loss, seen = train_loss(total, seen)
        if progress.end_epoch(epoch, loss, seen, validate(), time.perf_counter() - t0, model,
                              train_seconds=train_seconds):
            break
    seconds = time.perf_counter() - start
    summary = progress.finish(model)
    return {**summary, "seconds": seconds, "examples_per_epoch": examples_per_epoch,
            "samples_seen": examples_per_epoch * summary["epochs_run"], "device": str(device)}, step_seconds


def fit(model: nn.Module, ds: Dataset, settings: TrainSettings, *, loss_fn: LossFn | None = None,
        aux: np.ndarray | None = None, log: Callable[[str], None] = print,
        label: str = "train") -> dict:
    """Train in place with early stopping on validation loss; keep the best weights.

    The loss is the dataset's task loss (`task_loss`) unless `loss_fn` is given."""
    settings.validate()
    require_epochs(settings)
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model.to(device)
    n, batch = len(ds.train.x), settings.batch_size
    opt, sched = make_optimiser(model.parameters(), settings, settings.epochs * math.ceil(n / batch))
    step = batch_step(model, opt, sched, torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y), device,
                      loss_fn=loss_fn or task_loss(ds), aux=torch.from_numpy(aux) if aux is not None else None)
    fitted, _ = run_epochs(
        model, settings, step=step, device=device, examples_per_epoch=n, log=log, label=label,
        batches=lambda _epoch: torch.randperm(n, generator=gen).split(batch),  # a new order every epoch
        validate=lambda: validation_scores(model, ds, device))
    return fitted
