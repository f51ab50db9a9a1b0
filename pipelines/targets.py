"""Compile-time settings for a pipeline, and the steps that differ by target. No environment reads.

local: every step is a lightweight component that kfp.local runs in this virtual environment.
vertex: training runs as a Vertex custom job over worker pools (distributed-train), and the
deploy step uploads to the Model Registry and deploys to an endpoint.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

from modelpress.core.errors import ModelpressError
from modelpress.deploy.vertex import Serving, check_accelerator

TARGETS = ("local", "vertex")


@dataclass(frozen=True)
class TrainingJob:
    """The `distributed:` block of configs/vertex.yaml: the training step as a custom job."""

    replica_count: int = 1  # machines: workerpool0 holds the primary, workerpool1 the others
    machine_type: str = "n1-standard-4"
    accelerator_type: str = ""  # e.g. NVIDIA_TESLA_T4; "" trains on the CPUs
    accelerator_count: int = 0  # per machine
    image: str = ""  # "" = the target's image; with accelerators, the GPU image
    nproc_per_node: int = 0  # processes per machine: 0 = one per GPU, else one per CPU core

    def validate(self, where: str = "distributed") -> "TrainingJob":
        if self.replica_count < 1:
            raise ModelpressError(f"{where}.replica_count must be >= 1, got {self.replica_count}")
        if self.nproc_per_node < 0:
            raise ModelpressError(f"{where}.nproc_per_node must be >= 0 (0: one per GPU or CPU core), "
                                  f"got {self.nproc_per_node}")
        check_accelerator(self.accelerator_type, self.accelerator_count, where)
        return self


@dataclass(frozen=True)
class Target:
    name: str = "local"
    image: str = "modelpress-cpu:dev"
    cpu_limit: str = "2"
    memory_limit: str = "8G"
    # vertex only
    project: str = ""
    region: str = ""
    service_account: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # pairs, so that a Target is hashable
    serving: Serving | None = None
    training_job: TrainingJob | None = None

    def __post_init__(self):
        if self.name not in TARGETS:
            raise ValueError(f"unknown target {self.name!r}; choose one of {list(TARGETS)}")

    def apply(self, task, cache: bool = True):
        """Per-task settings every step shares: the image, resources, caching."""
        task.set_container_image(self.image)
        task.set_caching_options(cache)
        if self.name == "vertex":  # compiled into the YAML; the local runner only warns
            task.set_cpu_limit(self.cpu_limit)
            task.set_memory_limit(self.memory_limit)
        return task

    def train(self, dataset, **hyperparameters):
        """The training step: `train` locally, a distributed custom job on Vertex."""
        if self.name == "local":
            from components.train import train

            return self.apply(train(dataset=dataset, **hyperparameters))
        job = self.training_job or TrainingJob()
        # The custom job's launcher has its own image: only caching is set on the task.
        task = _training_job_op(self)(dataset=dataset, nproc_per_node=job.nproc_per_node,
                                      project=self.project, location=self.region, **hyperparameters)
        return task.set_caching_options(True)

    def deploy(self, model, repository, model_name):
        """Deploy a blessed model: the next version of a local model repository, or a Vertex endpoint."""
        if self.name == "local":
            from components.deploy_local import deploy_local

            return self.apply(deploy_local(model=model, repository=repository, model_name=model_name), cache=False)
        from components.deploy_vertex import deploy_vertex

        if self.serving is None:
            raise ModelpressError("the vertex target deploys with the `serving:` block of configs/vertex.yaml; "
                                  "add it (serve_image, model_display_name, endpoint_display_name, ...)")
        s = self.serving
        return self.apply(deploy_vertex(
            model=model, repository=repository, model_name=model_name, project=self.project,
            location=self.region, serve_image=s.serve_image, model_display_name=s.model_display_name,
            endpoint_display_name=s.endpoint_display_name, machine_type=s.machine_type,
            min_replica_count=s.min_replica_count, max_replica_count=s.max_replica_count,
            canary_traffic_percent=s.canary_traffic_percent, accelerator_type=s.accelerator_type,
            accelerator_count=s.accelerator_count, labels=dict(self.labels)), cache=False)


@functools.lru_cache(maxsize=None)
def _training_job_op(target: Target):
    """distributed-train wrapped as a Vertex custom job, built once per Target (kubeflow/pipelines#9320)."""
    from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component

    from components.distributed_train import distributed_train

    job = target.training_job or TrainingJob()
    component = copy.deepcopy(distributed_train)
    # The worker pools run the component's own image: set it before wrapping.
    component.component_spec.implementation.container.image = job.image or target.image
    job_args = dict(display_name="distributed-train", replica_count=job.replica_count,
                    machine_type=job.machine_type, service_account=target.service_account,
                    labels=dict(target.labels))
    if job.accelerator_type:
        job_args.update(accelerator_type=job.accelerator_type, accelerator_count=job.accelerator_count)
    op = create_custom_training_job_from_component(component, **job_args)
    return _check_no_clashing_inputs(op, component)


def _check_no_clashing_inputs(op, component):
    """GCPC merges the component's inputs over the CustomJob's, and the job request reads the
    merged value: a component input named like a CustomJob field (say `strategy`) would be
    sent to Vertex as that field. Refuse at compile time rather than at submission."""
    from google_cloud_pipeline_components.v1.custom_job.component import custom_training_job

    clashes = sorted(set(custom_training_job.component_spec.inputs) & set(component.component_spec.inputs))
    if clashes:
        raise ModelpressError(f"distributed-train inputs {clashes} share names with Vertex CustomJob fields; "
                              "rename them in components/distributed_train.py")
    return op
