"""Every pipeline modelpress ships, by name: its factory takes a Target."""

from __future__ import annotations

import functools

from pipelines import batch_prediction, optimise, retraining, training
from pipelines.targets import Target

PIPELINES = {
    "training": training.build,
    "optimise": optimise.build,
    "retraining": retraining.build,
    "batch_prediction": batch_prediction.build,
}


@functools.lru_cache(maxsize=None)
def build(name: str, target: Target):
    """Pipeline `name` for `target`, built once: loading a config, --help, compiling and running
    all ask for it, and building one wraps every component again."""
    return PIPELINES[name](target)
