"""Every pipeline modelpress ships, by name: its factory takes a Target."""

from pipelines import training

PIPELINES = {
    "training": training.build,
}
