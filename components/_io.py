"""Record a library result on the step's KFP artifacts (by duck typing: no KFP import needed).

A result is ``{"metadata": {...}, "metrics": {...}, "confusion_matrix": {...}}``:
metadata goes onto the output artifact (readable by later steps and the Vertex UI),
numeric metrics are logged and also written as JSON to ``metrics.path`` (without a file
there the local cache treats the task as a miss every time).
"""

from __future__ import annotations

import math
from numbers import Number

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


def record(result: dict, *, artifact=None, metrics=None, classification=None) -> None:
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
