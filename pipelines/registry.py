"""Every pipeline modelpress ships, by name: its factory takes a Target."""

from pipelines import optimise, training

PIPELINES = {
    "training": training.build,
    "optimise": optimise.build,
}
