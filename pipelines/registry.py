"""Every pipeline modelpress ships, by name: its factory takes a Target."""

from pipelines import optimise, retraining, training

PIPELINES = {
    "training": training.build,
    "optimise": optimise.build,
    "retraining": retraining.build,
}
