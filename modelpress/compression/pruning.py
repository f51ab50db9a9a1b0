"""Pruning: global magnitude (unstructured) and channel removal (structured).

Unstructured pruning zeroes individual weights: it buys compressed size, not speed, since
dense kernels still multiply the zeros. Structured pruning removes whole channels with
Torch-Pruning's dependency graph (residual adds, depthwise convolutions and batch norms are
coupled), so the saved model is genuinely smaller; the new widths go into spec.json.
Both fine-tune afterwards (train, prune, retrain: Han et al. 2015), with the dataset's task
loss, and report the task's score (accuracy, or RMSE/MAE/R² for regression) before and after.
The model's output layer (`models.head`) is never pruned, whatever its source (built-in,
torchvision, timm or the user's own module).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from modelpress.models import flops as flops_mod
from modelpress import models
from modelpress.data.dataset import load_dataset
from modelpress.data.text import is_text_dataset
from modelpress.core.errors import ModelpressError
from modelpress.core.results import ModelCard, StepResult
from modelpress.core.timing import timed
from modelpress.evaluation import REGRESSION_SCORES
from modelpress.evaluation.torch_scoring import evaluate
from modelpress.training.loop import TrainSettings, fit

METHODS = ("unstructured", "structured")
WITHOUT_PRUNE = ("leave pruning out of the recipe (steps: [distil, quantise]), or try method: unstructured")


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The output layer (models.head) and anything inside it: pruning leaves it whole."""
    return list(models.head(model)[1].modules())


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv and linear layers global magnitude pruning may touch.

    Left dense: the output layer and depthwise convolutions. Their weights are few (about 1% of
    a MobileNetV2) and sit on another scale than the 1x1 convolutions, so one global
    threshold zeroes whole layers of them, and the network collapses (seen: MobileNetV2 at
    60% sparsity lost every depthwise filter of its last blocks and fell to chance).
    """
    head = {id(m) for m in head_modules(model)}
    return [(n, m) for n, m in weight_layers(model) if id(m) not in head and not _depthwise(m)]


def weight_sparsity(model: nn.Module, layers: list[tuple[str, nn.Module]] | None = None) -> float:
    """Share of exactly-zero weights over the prunable layers (or the given ones)."""
    zeros = total = 0
    for _, m in (prunable_layers(model) if layers is None else layers):
        zeros += int((m.weight == 0).sum())
        total += m.weight.numel()
    return zeros / total if total else 0.0


def cubic_target(sparsity: float, step: int, steps: int) -> float:
    """Sparsity after `step` of `steps` rounds: s * (1 - (1 - step/steps)^3)."""
    return sparsity * (1.0 - (1.0 - step / steps) ** 3)


def prune_unstructured(model: nn.Module, ds, sparsity: float, steps: int, settings: TrainSettings,
                       log: Callable[[str], None] = print) -> list[dict]:
    """Global L1 pruning to `sparsity` in `steps` rounds (cubic schedule), fine-tuning after each."""
    if not 0.0 <= sparsity < 1.0:
        raise ModelpressError(f"sparsity must be in [0, 1), got {sparsity}: 1.0 would zero every weight")
    if steps < 1:
        raise ModelpressError(f"steps must be >= 1, got {steps}")
    params = [(m, "weight") for _, m in prunable_layers(model)]
    rounds = []
    for step in range(1, steps + 1):
        # Gradual pruning's cubic schedule (Zhu & Gupta 2017): prune hard early, while many
        # redundant weights remain, and gently at the end. Each round prunes the share of the
        # surviving weights that takes the total to its target.
        target, previous = cubic_target(sparsity, step, steps), cubic_target(sparsity, step - 1, steps)
        amount = 1.0 - (1.0 - target) / (1.0 - previous)
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
        reached = weight_sparsity(model)
        log(f"[prune] round {step}/{steps}: sparsity {reached:.3f} (target {target:.3f}); fine-tuning")
        fit(model, ds, replace(settings, seed=settings.seed + step), log=log, label=f"prune {step}/{steps}")
        rounds.append({"round": step, "target": target, "sparsity": reached})
    for m, name in params:  # masks become permanent zeros; no pruning hooks are saved
        torch_prune.remove(m, name)
    return rounds


def check_structured_ratio(model: nn.Module, ratio: float, ignored: list[nn.Module]) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ModelpressError(f"pruning ratio {ratio} would remove every channel of every layer; "
                              "use a ratio in [0, 1), e.g. 0.5 for about half the channels")
    skip = {id(m) for m in ignored}
    for name, m in weight_layers(model):
        if id(m) in skip:
            continue
        width = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        if int(width * (1.0 - ratio)) < 1:
            raise ModelpressError(f"pruning ratio {ratio} would remove every channel of layer {name!r} "
                                  f"({width} channels); lower the ratio below {1 - 1 / width:.3f}")


def prune_structured(model: nn.Module, example: torch.Tensor, ratio: float, steps: int = 1,
                     round_to: int | None = None, name: str = "") -> None:
    """Remove about `ratio` of the channels of each layer (the output layer's outputs kept).

    A model Torch-Pruning cannot trace or prune (data-dependent control flow, an op it does
    not know) is a ModelpressError naming the reason and the way round it."""
    import torch_pruning as tp

    ignored = head_modules(model)
    check_structured_ratio(model, ratio, ignored)
    what = name or type(models.unwrap(model)).__name__
    try:
        pruner = tp.pruner.BasePruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, iterative_steps=steps, ignored_layers=ignored,
                                      round_to=round_to)
        for _ in range(steps):
            pruner.step()
        with torch.no_grad():
            model.eval()(example)  # channels removed on one side of a coupling only fail here
    except Exception as exc:  # noqa: BLE001 -- Torch-Pruning fails in many ways on graphs it does not know
        raise ModelpressError(f"structured pruning cannot handle {what}: Torch-Pruning failed with "
                              f"{type(exc).__name__}: {str(exc)[:300]}; {WITHOUT_PRUNE}") from None


def check_rebuilds(model: nn.Module, spec: dict, name: str) -> None:
    """The pruned model is rebuilt from spec.json alone (its layer_shapes), or an error says
    which layer's new shape spec.json cannot record."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        rebuilt = {k: tuple(v.shape) for k, v in models.build(spec).state_dict().items()}
    except ModelpressError as exc:
        raise ModelpressError(f"structured pruning changed {name} in a way spec.json cannot record ({exc}); "
                              f"{WITHOUT_PRUNE}") from None
    wrong = [f"{k}: pruned {expected[k]} vs rebuilt {rebuilt.get(k)}" for k in expected if rebuilt.get(k) != expected[k]]
    if wrong:
        raise ModelpressError(f"structured pruning changed layers of {name} that spec.json cannot record "
                              f"({'; '.join(wrong[:3])}); {WITHOUT_PRUNE}")


def _scores(model: nn.Module, ds) -> dict:
    test = evaluate(model, ds.test.x, ds.test.y, ds.num_outputs, task=ds.task)
    keys = REGRESSION_SCORES if ds.task == "regression" else ("accuracy",)
    return {k: test[k] for k in keys}


@timed
def prune(model_dir: str, dataset_dir: str, out_dir: str, *, method: str = "structured",
          amount: float = 0.5, steps: int = 3, settings: TrainSettings | None = None,
          log: Callable[[str], None] = print) -> dict:
    """Prune a torch model artifact, fine-tune it, save it; report the before/after figures.

    `amount` is the target sparsity (unstructured) or the channel ratio (structured).
    """
    if method not in METHODS:
        raise ModelpressError(f"unknown pruning method {method!r}; choose one of {list(METHODS)}")
    if not 0.0 <= amount < 1.0:
        what = "sparsity" if method == "unstructured" else "pruning ratio"
        raise ModelpressError(f"{what} must be in [0, 1), got {amount}: 1.0 would remove everything")
    settings = (settings or TrainSettings(epochs=3, learning_rate=1e-3)).validate()
    if is_text_dataset(dataset_dir):
        from modelpress.compression.text_steps import prune_text_step

        return prune_text_step(model_dir, dataset_dir, out_dir, method=method, amount=amount, settings=settings, log=log)
    model, spec = models.load_model(model_dir)
    ds = load_dataset(dataset_dir)
    shape, regression = ds.feature_shape, ds.task == "regression"
    quality = "rmse" if regression else "accuracy"
    label = "RMSE" if regression else "accuracy"
    before = {"params": models.count_params(model), "macs": flops_mod.forward_flops(model, shape) // 2,
              **_scores(model, ds)}
    t0 = time.perf_counter()
    if method == "unstructured":
        rounds = prune_unstructured(model, ds, amount, steps, settings, log)
        after_prune = None
    else:
        model.eval()
        prune_structured(model, torch.from_numpy(ds.train.x[:2]), amount, steps=1, name=spec["architecture"])
        spec = copy.deepcopy(spec)
        spec["layer_shapes"] = models.layer_shapes(model)
        check_rebuilds(model, spec, spec["architecture"])
        after_prune = _scores(model, ds)
        log(f"[prune] structured ratio {amount}: params {before['params']:,} -> "
            f"{models.count_params(model):,}; {label} before fine-tuning {after_prune[quality]:.4g}")
        fit(model, ds, settings, log=log, label="prune fine-tune")
        rounds = []
    seconds = time.perf_counter() - t0
    model.eval()
    after = {"params": models.count_params(model), "macs": flops_mod.forward_flops(model, shape) // 2,
             **_scores(model, ds)}
    sparsity = weight_sparsity(model)
    nonzero = sum(int((m.weight != 0).sum()) for _, m in weight_layers(model))
    models.save_model(model, spec, out_dir, extra={
        "pruning": {"method": method, "amount": amount, "steps": steps,
                    "finetune": asdict(settings)}, "class_names": ds.class_names, "task": ds.task})
    log(f"[prune] {method}: {label} {before[quality]:.4g} -> {after[quality]:.4g}, params "
        f"{before['params']:,} -> {after['params']:,}, MACs {before['macs']:,} -> {after['macs']:,}, "
        f"weight sparsity {sparsity:.3f}, {seconds:.1f}s")
    metrics = {
        "sparsity": sparsity, "sparsity_all_weights": weight_sparsity(model, weight_layers(model)),
        "params_before": before["params"], "params_after": after["params"],
        "nonzero_weights": nonzero, "macs_before": before["macs"], "macs_after": after["macs"],
        "wall_seconds": seconds,
    }
    for key in REGRESSION_SCORES if regression else ("accuracy",):
        metrics.update({f"{key}_before": before[key], f"{key}_after": after[key],
                        f"{key}_after_finetune": after[key]})
        if after_prune is not None:
            metrics[f"{key}_before_finetune"] = after_prune[key]
    scores = {"accuracy": None, "task": "regression", "scores": {k: after[k] for k in REGRESSION_SCORES}} \
        if regression else {"accuracy": after["accuracy"], "task": "classification"}
    card = ModelCard(framework="pytorch", class_names=ds.class_names, **scores,
                     architecture=spec["architecture"], params=after["params"], flops=after["macs"] * 2,
                     extra={"sparsity": sparsity, "pruning_method": method, "pruning_amount": amount})
    return StepResult(card, metrics, extra={"rounds": rounds}).as_dict()
