"""Retraining: train a challenger (from scratch, or warm-started from the champion's weights)
and score it beside the deployed champion on the same test split, for the blessing rule in
`modelpress.selection`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable

from modelpress.selection import comparison
from modelpress import models
from modelpress.export import runtime
from modelpress import training
from modelpress.data.dataset import load_dataset
from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path
from modelpress.core.results import ModelCard, Role, StepResult, Variant
from modelpress.core.timing import timed
from modelpress.evaluation import torch_scoring


def _check_compatible(spec: dict, ds, warm_start: str) -> None:
    args = spec.get("args", {})
    shape = [int(d) for d in args.get("input_shape", [])]
    classes = (spec.get("info") or {}).get("class_names")
    problems = []
    if shape != list(ds.feature_shape):
        problems.append(f"input shape {shape} vs the dataset's {list(ds.feature_shape)}")
    if int(args.get("num_classes", -1)) != len(ds.class_names) or classes and list(classes) != ds.class_names:
        problems.append(f"classes {classes or args.get('num_classes')} vs the dataset's {ds.class_names}")
    if problems:
        raise ModelpressError(f"cannot warm start from {warm_start}: {'; '.join(problems)}. Train from scratch "
                              "(warm_start: \"\") or warm start from a model trained on data of this shape")


CHAMPION = "champion"


def champion_weights(champion_repository: str, model_name: str, log: Callable[[str], None] = print) -> str:
    """The torch model the deployed champion was exported from ("" when nothing is deployed).

    Each deployed version's meta.json names it (`source_model`, written by export-onnx and
    kept through quantisation); it lives in the pipeline root of the run that produced it.
    """
    latest = comparison.deployed_champion(champion_repository, model_name)
    if latest is None:
        log(f"[train-challenger] warm_start=champion but no {model_name!r} is deployed in "
            f"{champion_repository or '(no repository)'}: training from scratch")
        return ""
    source = runtime.read_meta(latest).get("source_model")
    if not source or not (local_path(source) / models.SPEC_FILE).exists():
        raise ModelpressError(f"the champion {latest} does not name torch weights that still exist "
                              f"(source_model: {source!r}); pass warm_start=<torch model folder> or \"\" to train "
                              "from scratch")
    log(f"[train-challenger] champion {latest.name} of {model_name!r} was exported from {source}")
    return source


@timed
def train_challenger(dataset_dir: str, out_dir: str, *, warm_start: str = "", architecture: str = "cnn",
                     model_args: dict | None = None, settings: training.TrainSettings | None = None,
                     champion_repository: str = "", model_name: str = "digits",
                     log: Callable[[str], None] = print) -> dict:
    """Train the challenger; with `warm_start` (a torch model artifact, or "champion": the
    weights the deployed champion came from) start from its weights.

    A warm start keeps the champion's architecture (its spec.json, pruned widths included);
    `architecture` and `model_args` apply to training from scratch only.
    """
    if warm_start == CHAMPION:
        warm_start = champion_weights(champion_repository, model_name, log)
    if not warm_start:
        return training.train(dataset_dir, out_dir, architecture=architecture, model_args=model_args,
                              settings=settings, log=log)
    settings = (settings or training.TrainSettings()).validate()
    ds = load_dataset(dataset_dir)
    model, spec = models.load_model(warm_start)
    _check_compatible(spec, ds, warm_start)
    n_classes = len(ds.class_names)
    start = torch_scoring.evaluate(model, ds.test.x, ds.test.y, n_classes)
    log(f"[train-challenger] warm start from {warm_start} ({spec['architecture']}, "
        f"{models.count_params(model):,} parameters): test accuracy {start['accuracy']:.4f} before training")
    fitted = training.fit(model, ds, settings, log=log, label="train-challenger")
    test = torch_scoring.evaluate(model, ds.test.x, ds.test.y, n_classes, fitted["device"])
    models.save_model(model, spec, out_dir, extra={"train_settings": asdict(settings), "class_names": ds.class_names,
                                                   "warm_start": warm_start})
    log(f"[train-challenger] test accuracy {test['accuracy']:.4f} (from {start['accuracy']:.4f})")
    card = ModelCard(framework="pytorch", accuracy=test["accuracy"], class_names=ds.class_names,
                     architecture=spec["architecture"], params=models.count_params(model),
                     input_shape=list(ds.feature_shape), extra={"warm_start": warm_start})
    metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "warm_start_accuracy": start["accuracy"],
               "best_val_loss": fitted["best_val_loss"], "epochs_run": fitted["epochs_run"],
               "wall_seconds": fitted["seconds"]}
    return StepResult(card, metrics, confusion_matrix=test["confusion_matrix"]).as_dict()


def score(dataset_dir: str, torch_model: str, onnx_model: str, out_json: str, *, champion_repository: str = "",
          model_name: str = "digits", threads: int = 2, window_seconds: float = 0.2, max_windows: int = 5,
          log: Callable[[str], None] = print) -> dict:
    """Challenger (torch fp32 as the baseline, its ONNX export as the candidate) and the champion,
    the latest version in `champion_repository`, measured side by side on the same test split."""
    variants = comparison.with_champion([Variant("challenger torch fp32", torch_model, "torch", Role.BASELINE),
                                         Variant("challenger onnx fp32", onnx_model, "onnx", Role.CANDIDATE)],
                                        champion_repository, model_name, log=log, label="score")
    return comparison.benchmark(variants, dataset_dir, out_json, threads=threads, window_seconds=window_seconds,
                                max_windows=max_windows, log=log)


def summary(results: dict) -> dict:
    """The score step's record: the challenger's accuracy and the champion's, when one is deployed."""
    rows = {r["role"]: r for r in results["variants"]}
    figures = {"challenger_accuracy": rows[Role.CANDIDATE]["accuracy"]}
    if Role.CHAMPION in rows:
        figures["champion_accuracy"] = rows[Role.CHAMPION]["accuracy"]
    return comparison.summary(results, figures)
