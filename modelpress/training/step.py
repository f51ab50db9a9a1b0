"""The train step: build the model a spec names, start it (from scratch, from your weights, or
as it is with epochs 0), train it with `loop.fit`, score it on the test split and save it."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from typing import Callable

import torch
from torch import nn

from modelpress import models
from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path
from modelpress.core.results import ModelCard, StepResult
from modelpress.core.timing import timed
from modelpress.data.dataset import Dataset, lineage, load_dataset
from modelpress.data.text import is_text_dataset
from modelpress.evaluation import REGRESSION_SCORES
from modelpress.evaluation.torch_scoring import evaluate
from modelpress.models import flops as flops_mod
from modelpress.training.loop import TrainSettings, fit, resolve_device, validation_scores


def prepare(dataset_dir: str, architecture: str, model_args: dict | None,
            settings: TrainSettings, code_dir: str = "") -> tuple[Dataset, dict, nn.Module]:
    """Load the dataset artifact and build the seeded model it asks for."""
    ds = load_dataset(dataset_dir)
    spec = models.make_spec(architecture, ds.feature_shape, ds.num_outputs,
                            normalisation=ds.schema.get("normalisation"), code_dir=code_dir, **(model_args or {}))
    torch.manual_seed(settings.seed)
    return ds, spec, models.build(spec)


def describe(model: nn.Module, ds: Dataset, spec: dict, settings: TrainSettings, label: str,
             log: Callable[[str], None]) -> int:
    """Log the model's size and cost; return its forward FLOPs per example."""
    fwd = flops_mod.forward_flops(model, ds.feature_shape)
    log(f"[{label}] {spec['architecture']} with {models.count_params(model):,} parameters, "
        f"{fwd / 1e6:.2f} MFLOPs per example; {len(ds.train.x)} training examples; "
        f"settings {asdict(settings)}")
    return fwd


def scores_by_task(ds: Dataset, test: dict) -> tuple[dict, dict]:
    """The card's fields and the metrics of the test split's scores, by task."""
    if ds.task == "regression":
        scores = {k: test[k] for k in REGRESSION_SCORES}
        return ({"accuracy": None, "task": "regression", "scores": scores},
                {f"test_{k}": v for k, v in scores.items()})
    return ({"accuracy": test["accuracy"], "task": "classification"},
            {"test_accuracy": test["accuracy"], "test_loss": test["loss"]})


def quality_line(test: dict) -> str:
    if "rmse" in test:
        return f"test RMSE {test['rmse']:.4g}, MAE {test['mae']:.4g}, R² {test['r2']:.4f}"
    return f"test accuracy {test['accuracy']:.4f}"


def finish(model: nn.Module, spec: dict, ds: Dataset, settings: TrainSettings, fitted: dict | None,
           fwd: int, out_dir: str, *, label: str = "train", log: Callable[[str], None] = print,
           start: dict | None = None) -> dict:
    """Score the model on the test split, save it, and build the train result.

    `fitted` is None when the model was taken as it is (epochs 0): no training figures then.
    `start` says where the weights came from ({"start", "weights", "weights_sha256", ...})."""
    params = models.count_params(model)
    device = fitted["device"] if fitted else resolve_device(settings.device)
    test = evaluate(model, ds.test.x, ds.test.y, ds.num_outputs, device, task=ds.task)
    card_scores, test_metrics = scores_by_task(ds, test)
    start = dict(start or {"start": "scratch"})
    card = ModelCard(framework="pytorch", class_names=ds.class_names, architecture=spec["architecture"],
                     params=params, flops=fwd, input_shape=list(ds.feature_shape), **card_scores,
                     extra={k: v for k, v in start.items() if k in ("start", "weights", "weights_sha256")})
    models.save_model(model, spec, out_dir, extra={"train_settings": asdict(settings), "class_names": ds.class_names,
                                                   "task": ds.task, "dataset": lineage(ds.schema), **start})
    metrics = {**test_metrics, "params": params, "forward_flops_per_example": int(fwd)}
    if fitted:
        compute = flops_mod.training_compute(fwd, fitted["examples_per_epoch"], fitted["epochs_run"],
                                             fitted["seconds"])
        metrics.update({
            "final_train_loss": fitted["final_train_loss"], "best_val_loss": fitted["best_val_loss"],
            "epochs_run": fitted["epochs_run"], "wall_seconds": fitted["seconds"],
            "samples_per_s": fitted["samples_seen"] / fitted["seconds"] if fitted["seconds"] else 0.0, **compute})
        log(f"[{label}] {quality_line(test)}; {compute['training_flops']:.3g} training FLOPs "
            f"({compute['training_pflop_days']:.3g} PF-days), achieved "
            f"{compute['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s")
    else:
        metrics["epochs_run"] = 0
        log(f"[{label}] taken as it is (not trained): {quality_line(test)}")
    if "start_val_loss" in start:
        metrics["start_val_loss"] = start["start_val_loss"]
    return StepResult(card, metrics, confusion_matrix=test.get("confusion_matrix"),
                      extra={"history": fitted["history"] if fitted else []}).as_dict()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(local_path(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source(architecture: str, code_dir: str) -> str:
    """How the log names where the model's code comes from."""
    kind, _, name = architecture.partition(":")
    if kind in ("torchvision", "timm") and name:
        return f"{kind} model {name!r}"
    if ":" in architecture:
        return f"your code {architecture!r}" + (f" from {code_dir}" if code_dir else "")
    return f"built-in architecture {architecture!r}"


def check_start(settings: TrainSettings, weights: str, replace_head: bool) -> str:
    """Which start the arguments ask for (scratch, fine-tune, as-is), or an error naming the fix."""
    if settings.epochs == 0 and not weights:
        raise ModelpressError("epochs 0 takes your trained model as it is: set weights to its .safetensors/.pth "
                              "file (or, in the optimise pipeline, onnx_model to an .onnx file), or set epochs >= 1 "
                              "to train")
    if replace_head and not weights:
        raise ModelpressError("replace_head swaps the classifier of your weights for the dataset's classes; "
                              "set weights to your checkpoint, or drop replace_head")
    if replace_head and settings.epochs == 0:
        raise ModelpressError("replace_head with epochs 0 would score an untrained classifier; fine-tune it "
                              "(epochs >= 1) or drop replace_head")
    return "as-is" if settings.epochs == 0 else ("fine-tune" if weights else "scratch")


@timed
def train(dataset_dir: str, out_dir: str, *, architecture: str = "mlp",
          model_args: dict | None = None, settings: TrainSettings | None = None, weights: str = "",
          replace_head: bool = False, code_dir: str = "", log: Callable[[str], None] = print) -> dict:
    """Build a model (built-in, torchvision:, timm: or your package.module:callable), start it
    from scratch or from `weights`, train it (or, with epochs 0, take it as it is), score it on
    the test split, save it and return the result."""
    settings = (settings or TrainSettings()).validate()
    if is_text_dataset(dataset_dir):
        from modelpress.training.text_step import train_text_step

        return train_text_step(dataset_dir, out_dir, architecture=architecture, model_args=model_args,
                               settings=settings, weights=weights, replace_head=replace_head, log=log)
    kind = check_start(settings, weights, replace_head)
    ds, spec, model = prepare(dataset_dir, architecture, model_args, settings, code_dir=code_dir)
    start: dict = {"start": kind}
    if weights:
        models.load_weights(model, weights, replace_head=replace_head, log=log)
        start.update(weights=str(weights), weights_sha256=_sha256(weights), replace_head=bool(replace_head))
    what = {"scratch": "from scratch (random weights)", "fine-tune": f"fine-tune from weights {weights}",
            "as-is": f"as-is: your trained model from {weights}, not trained"}[kind]
    log(f"[train] start: {what}; model: {_source(architecture, code_dir)}")
    fwd = describe(model, ds, spec, settings, "train", log)
    if kind == "as-is":
        return finish(model, spec, ds, settings, None, fwd, out_dir, log=log, start=start)
    if weights:  # where fine-tuning starts from, on the scale of the epochs' val_loss
        start["start_val_loss"] = validation_scores(model, ds, resolve_device(settings.device))["loss"]
        log(f"[train] validation loss of the loaded weights before training: {start['start_val_loss']:.4f}")
    fitted = fit(model, ds, settings, log=log)
    return finish(model, spec, ds, settings, fitted, fwd, out_dir, log=log, start=start)
