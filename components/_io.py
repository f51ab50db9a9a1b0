"""What every component body shares: its settings built from its arguments, and recording a
library result on the step's KFP artifacts (by duck typing: no KFP import needed).

A result is ``{"metadata": {...}, "metrics": {...}, "confusion_matrix": {...}}`` (a
`modelpress.core.results.StepResult` as a dict): metadata goes onto the output artifact
(readable by later steps and the Vertex UI), numeric metrics are logged and also written as
JSON to ``metrics.path`` (without a file there the local cache treats the task as a miss
every time).
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Number
from typing import Mapping

from modelpress.core.fileio import write_json_atomic


def _plain(value):
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return _plain(value.item())
    return str(value)


def from_arguments(cls, arguments: Mapping, **overrides):
    """A settings dataclass from a component's arguments: pass it `locals()`.

    Components name their parameters after the settings' fields, so each field is taken by
    name and the other arguments (artifacts, paths) are passed over; `overrides` sets the
    fields a component names otherwise or fixes.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}; fields: {sorted(names)}")
    return cls(**{**{k: v for k, v in arguments.items() if k in names}, **overrides})


def train_settings(arguments: Mapping, **overrides):
    """`TrainSettings` from a component's arguments (`locals()`), as `from_arguments` takes them:
    the one place the train, prune, distil, train-challenger and distributed-train steps build it.
    Prune passes ``epochs=finetune_epochs``; fine-tuning and distillation fix ``patience=0``."""
    from modelpress.training import TrainSettings  # here, not at the top: steps that do not train skip torch

    return from_arguments(TrainSettings, arguments, **overrides)


def record(result, *, artifact=None, metrics=None, classification=None) -> None:
    """Put a result (a dict, or anything with ``as_dict()``) on the step's output artifacts."""
    if hasattr(result, "as_dict"):
        result = result.as_dict()
    if artifact is not None:
        artifact.metadata.update(_plain(result.get("metadata", {})))
    if metrics is not None:
        numeric = {k: float(v) for k, v in result.get("metrics", {}).items()
                   if isinstance(v, Number) and not isinstance(v, bool) and math.isfinite(float(v))}
        for name, value in numeric.items():
            metrics.log_metric(name, value)
        write_json_atomic(metrics.path, numeric)
    cm = result.get("confusion_matrix")
    if classification is not None and cm:
        classification.log_confusion_matrix(cm["class_names"], cm["matrix"])
        write_json_atomic(classification.path, cm)


def skip(step: str, reason: str, outputs, metrics=()) -> None:
    """Write a skip note into every output folder (later steps pass it over) and an empty JSON
    into every metrics file (without one the local cache treats the task as a miss)."""
    from modelpress.core.results import write_skipped

    for art in outputs:
        write_skipped(art.path, step, reason)
        art.metadata.update({"skipped": True, "reason": reason})
    for art in metrics:
        write_json_atomic(art.path, {})
    print(f"[{step}] skipped: {reason}", flush=True)


def skip_if(step: str, steps, inputs, outputs, metrics=()) -> bool:
    """Skip `step` (see `skip`) when the recipe `steps` does not list it or one of `inputs` was
    skipped. Returns True when it is skipped."""
    from modelpress.compression.recipe import skip_reason
    from modelpress.core.results import skipped

    reason = skip_reason(step, steps, *(skipped(art.path) for art in inputs))
    if reason is not None:
        skip(step, reason, outputs, metrics)
    return reason is not None
