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
from modelpress.data.dataset import dataset_task, load_dataset
from modelpress.data.text import is_text_dataset
from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path
from modelpress.core.results import ModelCard, Role, StepResult, Variant
from modelpress.core.timing import timed
from modelpress.evaluation import quality_metric, torch_scoring
from modelpress.selection import quality


def _check_compatible(spec: dict, ds, warm_start: str) -> None:
    args = spec.get("args", {})
    shape = [int(d) for d in args.get("input_shape", [])]
    info = spec.get("info") or {}
    classes = info.get("class_names")
    outputs = int(args.get("num_classes", args.get("num_outputs", -1)))
    problems = []
    if shape != list(ds.feature_shape):
        problems.append(f"input shape {shape} vs the dataset's {list(ds.feature_shape)}")
    task = info.get("task") or ("regression" if (spec.get("normalisation") or {}).get("target") else None)
    if task and task != ds.task:
        problems.append(f"a {task} model vs a {ds.task} dataset")
    elif ds.task == "regression":
        if outputs != ds.num_outputs:
            problems.append(f"{outputs} outputs vs the one a regression model gives")
    elif outputs != ds.num_outputs or classes and list(classes) != ds.class_names:
        problems.append(f"classes {classes or outputs} vs the dataset's {ds.class_names}")
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
    if is_text_dataset(dataset_dir):
        raise ModelpressError("warm_start for a text model is not supported yet: retrain it from scratch "
                              "(warm_start: \"\"), or fine-tune the deployed model with the optimise pipeline "
                              "(architecture: hf:<the version's torch model folder>)")
    ds = load_dataset(dataset_dir)
    model, spec = models.load_model(warm_start)
    _check_compatible(spec, ds, warm_start)
    task, metric = ds.task, quality_metric(ds.task).name
    start = torch_scoring.evaluate(model, ds.test.x, ds.test.y, ds.num_outputs, task=task)
    log(f"[train-challenger] warm start from {warm_start} ({spec['architecture']}, "
        f"{models.count_params(model):,} parameters): test {quality.said(metric, start[metric])} before training")
    fitted = training.fit(model, ds, settings, log=log, label="train-challenger")
    test = torch_scoring.evaluate(model, ds.test.x, ds.test.y, ds.num_outputs, fitted["device"], task=task)
    models.save_model(model, spec, out_dir, extra={"train_settings": asdict(settings), "class_names": ds.class_names,
                                                   "task": task, "warm_start": warm_start})
    log(f"[train-challenger] test {quality.said(metric, test[metric])} (from {quality.fmt(metric, start[metric])})")
    scores = {k: test[k] for k in quality.score_names(task)}
    regression = task == "regression"
    card = ModelCard(framework="pytorch", accuracy=None if regression else test["accuracy"],
                     class_names=ds.class_names, task=task if regression else None,
                     scores=scores if regression else {}, architecture=spec["architecture"],
                     params=models.count_params(model), input_shape=list(ds.feature_shape),
                     extra={"warm_start": warm_start})
    metrics = {**{f"test_{k}": v for k, v in scores.items()}, "test_loss": test["loss"],
               f"warm_start_{metric}": start[metric], "best_val_loss": fitted["best_val_loss"],
               "epochs_run": fitted["epochs_run"], "wall_seconds": fitted["seconds"]}
    return StepResult(card, metrics, confusion_matrix=test.get("confusion_matrix")).as_dict()


def score(dataset_dir: str, torch_model: str, onnx_model: str, out_json: str, *, champion_repository: str = "",
          model_name: str = "digits", threads: int = 2, window_seconds: float = 0.2, max_windows: int = 5,
          log: Callable[[str], None] = print) -> dict:
    """Challenger (torch fp32 as the baseline, its ONNX export as the candidate) and the champion,
    the latest version in `champion_repository`, measured side by side on the same test split."""
    variants = comparison.with_champion([Variant("challenger torch fp32", torch_model, "torch", Role.BASELINE),
                                         Variant("challenger onnx fp32", onnx_model, "onnx", Role.CANDIDATE)],
                                        champion_repository, model_name, log=log, label="score",
                                        task=dataset_task(dataset_dir))
    return comparison.benchmark(variants, dataset_dir, out_json, threads=threads, window_seconds=window_seconds,
                                max_windows=max_windows, log=log)


def summary(results: dict) -> dict:
    """The score step's record: the challenger's quality metric (accuracy, or rmse) and the
    champion's, when one is deployed."""
    metric = quality.metric_of(results).name
    rows = {r["role"]: r for r in results["variants"]}
    figures = {f"challenger_{metric}": rows[Role.CANDIDATE][metric]}
    if Role.CHAMPION in rows:
        figures[f"champion_{metric}"] = rows[Role.CHAMPION][metric]
    return comparison.summary(results, figures)
