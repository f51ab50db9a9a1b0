"""Compile-time settings for a pipeline, and the steps that differ by target. No environment reads.

One module per target holds what differs (`local.py`, `vertex.py`); each provides

- ``CONFIG_KEYS``: the top-level keys of configs/<target>.yaml;
- ``from_config(data, path, image_tag)``: the Target and the run settings that file describes;
- ``configure(target, task)``: per-task settings beyond the image and caching every task gets;
- ``train(target, dataset, **hyperparameters)``, ``deploy(target, model, repository, model_name)`` and
  ``batch_predict(target, **parameters)``: the steps a pipeline factory leaves to the target;
- ``path_parameter(key, value, must_exist=...)``: what a local path given as a parameter becomes.

A Target is frozen and hashable, so that what is built from it (pipelines, their signatures,
the Vertex custom-job op) is built once per Target.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelpress.deploy.vertex import Serving
    from modelpress.deploy.vertex.batch_job import BatchPrediction
    from modelpress.deploy.vertex.ray_cluster import RayCluster
    from pipelines.targets.vertex import TrainingJob

TARGETS = ("local", "vertex")


def module(name: str) -> ModuleType:
    """The module that holds target `name`'s behaviour (imported on first use: local runs never
    import the Vertex SDKs)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose one of {list(TARGETS)}")
    return importlib.import_module(f"{__name__}.{name}")


@dataclass(frozen=True)
class Target:
    name: str = "local"
    image: str = "modelpress-cpu:dev"
    cpu_limit: str = "2"
    memory_limit: str = "8G"
    # vertex only (read by targets/vertex.py)
    project: str = ""
    region: str = ""
    service_account: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # pairs, so that a Target is hashable
    serving: Serving | None = None
    training_job: TrainingJob | None = None
    ray: RayCluster | None = None  # the Ray on Vertex cluster when training_job.engine is ray
    batch_prediction: BatchPrediction | None = None  # the batch prediction job's machines and formats

    def __post_init__(self):
        module(self.name)  # refuses an unknown name

    @property
    def kind(self) -> ModuleType:
        return module(self.name)

    def apply(self, task, cache: bool = True):
        """Per-task settings every step shares: the image and caching, then the target's own."""
        task.set_container_image(self.image)
        task.set_caching_options(cache)
        return self.kind.configure(self, task)

    def train(self, dataset, **hyperparameters):
        """The training step: `train` locally, a distributed custom job on Vertex."""
        return self.kind.train(self, dataset, **hyperparameters)

    def deploy(self, model, repository, model_name):
        """Deploy a blessed model: the next version of a local model repository, or a Vertex endpoint."""
        return self.kind.deploy(self, model, repository, model_name)

    def batch_predict(self, **parameters):
        """Score a source offline: the batch-predict step locally, a batch prediction job on Vertex."""
        return self.kind.batch_predict(self, **parameters)

    @property
    def tunes_serving(self) -> bool:
        """Whether a tune-serving step can follow the deploy: it measures the machine it runs on,
        which is the serving machine only where the step and the server share it (local)."""
        return self.name == "local"
