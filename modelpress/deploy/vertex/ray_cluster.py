"""Ray on Vertex AI: the cluster the training pipeline's train step runs on (``engine: ray``), and
the Ray job it submits there.

The cluster is a Vertex AI persistent resource with a Ray runtime: a head pool and an
autoscaling worker pool, on modelpress's own training image (Ray at the project's pin: the
prebuilt Ray on Vertex images carry Ray 2.47, and a Ray client must match its cluster's version;
for the same reason the SDK's ``vertex_ray`` helper, whose extra pins ``ray<=2.47.1``, is not
used: the requests are the GAPIC ones it sends). `ensure_cluster` gets it, or creates it when the
``ray:`` block allows. The training then runs as a Ray job submitted through Ray's job submission
API to the cluster's dashboard address: ``python -m modelpress.deploy.vertex.ray_job``, which
trains with the Ray engine (the DDP worker in Ray Train workers) and writes the model artifact and
its result to Cloud Storage.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable

from modelpress.core.errors import ModelpressError
from modelpress.deploy.vertex.checks import check_accelerator, check_immutable
from modelpress.deploy.vertex.client import client, location_parent

HEAD_POOL, WORKER_POOL = "head-node", "worker-pool1"
DASHBOARD_URI = "RAY_DASHBOARD_URI"  # the persistent resource's access URI the job submission client takes
CREATE_TIMEOUT_S = 3600  # a new cluster takes 10-20 minutes
POLL_S = 10.0
_CLUSTER_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class RayCluster:
    """The `ray:` block of configs/vertex.yaml."""

    cluster: str  # the persistent resource id (or its full name projects/.../persistentResources/ID)
    image: str = ""  # the nodes' image: modelpress's training image (Ray installed); needed to create
    create: bool = True  # false: the cluster must exist already
    head_machine_type: str = "n1-standard-8"
    worker_machine_type: str = "n1-standard-8"
    min_workers: int = 1  # worker nodes: Vertex scales the pool between these
    max_workers: int = 2
    accelerator_type: str = ""  # worker nodes' GPUs, e.g. NVIDIA_TESLA_T4
    accelerator_count: int = 0
    num_workers: int = 2  # Ray Train workers (processes) for a training run
    cpus_per_worker: int = 4
    use_gpu: bool = False

    def validate(self, where: str = "ray") -> "RayCluster":
        resource_id = self.cluster.rsplit("/", 1)[-1]
        if not _CLUSTER_ID.match(resource_id):
            raise ModelpressError(f"{where}.cluster {self.cluster!r}: a cluster id is 1-63 of a-z, 0-9 and '-', "
                                  "starting with a letter")
        if self.create:
            if not self.image:
                raise ModelpressError(f"{where}.image is needed to create the cluster: the training image with Ray "
                                      "(make images builds it), or set create: false for an existing cluster")
            check_immutable(self.image, f"{where}.image")
        if not 0 <= self.min_workers <= self.max_workers or self.max_workers < 1:
            raise ModelpressError(f"{where}: workers must satisfy 0 <= min_workers <= max_workers, max_workers >= 1; "
                                  f"got {self.min_workers} and {self.max_workers}")
        if self.num_workers < 1 or self.cpus_per_worker < 1:
            raise ModelpressError(f"{where}: num_workers and cpus_per_worker must be >= 1")
        if self.use_gpu and not self.accelerator_count:
            raise ModelpressError(f"{where}: use_gpu needs GPU workers: set accelerator_type and accelerator_count")
        check_accelerator(self.accelerator_type, self.accelerator_count, where)
        return self

    def name(self, project: str, location: str) -> str:
        if self.cluster.startswith("projects/"):
            return self.cluster
        return f"{location_parent(project, location)}/persistentResources/{self.cluster}"


def _types():
    from google.cloud.aiplatform_v1.types import (machine_resources, persistent_resource,
                                                  persistent_resource_service)
    return machine_resources, persistent_resource, persistent_resource_service


def get_cluster_request(cluster: RayCluster, project: str, location: str):
    _, _, svc = _types()
    return svc.GetPersistentResourceRequest(name=cluster.name(project, location))


def create_cluster_request(cluster: RayCluster, project: str, location: str, *, service_account: str,
                           labels: dict | None = None):
    """CreatePersistentResource: a head pool of one node and an autoscaling worker pool, both on `image`,
    with the Ray runtime, running as `service_account`."""
    mr, pr, svc = _types()
    head = pr.ResourcePool(id=HEAD_POOL, replica_count=1,
                           machine_spec=mr.MachineSpec(machine_type=cluster.head_machine_type),
                           disk_spec=mr.DiskSpec(boot_disk_type="pd-ssd", boot_disk_size_gb=100))
    worker_spec = mr.MachineSpec(machine_type=cluster.worker_machine_type)
    if cluster.accelerator_type:
        worker_spec.accelerator_type = cluster.accelerator_type
        worker_spec.accelerator_count = cluster.accelerator_count
    workers = pr.ResourcePool(id=WORKER_POOL, replica_count=cluster.min_workers, machine_spec=worker_spec,
                              disk_spec=mr.DiskSpec(boot_disk_type="pd-ssd", boot_disk_size_gb=100),
                              autoscaling_spec=pr.ResourcePool.AutoscalingSpec(
                                  min_replica_count=cluster.min_workers, max_replica_count=cluster.max_workers))
    runtime = pr.ResourceRuntimeSpec(
        ray_spec=pr.RaySpec(resource_pool_images={HEAD_POOL: cluster.image, WORKER_POOL: cluster.image},
                            head_node_resource_pool_id=HEAD_POOL),
        service_account_spec=pr.ServiceAccountSpec(enable_custom_service_account=True,
                                                   service_account=service_account))
    resource = pr.PersistentResource(display_name=cluster.cluster.rsplit("/", 1)[-1],
                                     resource_pools=[head, workers], resource_runtime_spec=runtime,
                                     labels=dict(labels or {}))
    return svc.CreatePersistentResourceRequest(parent=location_parent(project, location), persistent_resource=resource,
                                               persistent_resource_id=cluster.cluster.rsplit("/", 1)[-1])


def ensure_cluster(cluster: RayCluster, project: str, location: str, *, service_account: str,
                   labels: dict | None = None, log: Callable[[str], None] = print) -> str:
    """The cluster's Ray dashboard address, creating the cluster first where it is missing and allowed."""
    from google.api_core import exceptions
    from google.cloud.aiplatform_v1 import PersistentResourceServiceClient

    api = client(PersistentResourceServiceClient, location)
    try:
        resource = api.get_persistent_resource(request=get_cluster_request(cluster, project, location))
    except exceptions.NotFound:
        if not cluster.create:
            raise ModelpressError(f"Ray cluster {cluster.name(project, location)} does not exist and ray.create is "
                                  "false: create it, or set create: true") from None
        log(f"[ray-train] creating Ray cluster {cluster.cluster} ({cluster.min_workers}-{cluster.max_workers} "
            f"{cluster.worker_machine_type} workers); this takes 10-20 minutes")
        request = create_cluster_request(cluster, project, location, service_account=service_account, labels=labels)
        resource = api.create_persistent_resource(request=request).result(timeout=CREATE_TIMEOUT_S)
    uri = dict(resource.resource_runtime.access_uris).get(DASHBOARD_URI)
    if not uri:
        raise ModelpressError(f"Ray cluster {resource.name} has no {DASHBOARD_URI} (state "
                              f"{getattr(resource.state, 'name', resource.state)}); is it a Ray cluster, and running?")
    return uri if "://" in uri else f"https://{uri}"


def job_submission(*, dataset_uri: str, model_uri: str, result_uri: str, architecture: str, model_args: dict,
                   settings: dict, layout: dict, cluster: RayCluster, submission_id: str) -> dict:
    """The keyword arguments of JobSubmissionClient.submit_job for one training run."""
    args = {"dataset": dataset_uri, "model": model_uri, "result": result_uri, "architecture": architecture,
            "model_args": model_args, "settings": settings, "layout": layout,
            "scaling": {"num_workers": cluster.num_workers, "use_gpu": cluster.use_gpu,
                        "resources_per_worker": {"CPU": cluster.cpus_per_worker}}}
    return {"entrypoint": f"python -m modelpress.deploy.vertex.ray_job '{json.dumps(args, sort_keys=True)}'",
            "submission_id": submission_id,
            "runtime_env": {"env_vars": {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(cluster.cpus_per_worker)}},
            "metadata": {"app": "modelpress", "step": "ray-train"}}


def run_job(address: str, submission: dict, *, log: Callable[[str], None] = print, client_factory=None,
            poll_s: float = POLL_S, timeout_s: float | None = None) -> None:
    """Submit the job and follow it to the end, printing its log as it grows; a failed job is a
    ModelpressError ending with the job's last log lines (the worker's own error)."""
    if client_factory is None:
        from ray.job_submission import JobSubmissionClient as client_factory
    jobs = client_factory(address)
    job_id = jobs.submit_job(**submission)
    log(f"[ray-train] submitted Ray job {job_id} to {address}")
    shown, start = 0, time.monotonic()
    while True:
        status = str(jobs.get_job_status(job_id)).rsplit(".", 1)[-1]
        logs = jobs.get_job_logs(job_id) or ""
        for line in logs[shown:].splitlines():
            log(line)
        shown = len(logs)
        if status == "SUCCEEDED":
            return
        if status in ("FAILED", "STOPPED"):
            lines = logs.strip().splitlines()
            said = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]  # ray_job's own last line
            why = said[-1] if said else " | ".join(lines[-6:])[-1500:] or "no log"
            raise ModelpressError(f"Ray job {job_id} {status.lower()}: {why}")
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise ModelpressError(f"Ray job {job_id} still {status.lower()} after {timeout_s:g} s; stop it with "
                                  f"`ray job stop {job_id} --address {address}`")
        time.sleep(poll_s)


def planned(cluster: RayCluster, project: str, location: str, *, service_account: str, labels: dict | None,
            example: dict) -> list[dict]:
    """What a training run on the cluster sends (for --dry-run): the cluster lookup, its creation where it is
    missing, and the Ray job submission (`example`: job_submission's arguments with placeholder URIs)."""
    from modelpress.deploy.vertex.client import to_json

    out = [{"method": "PersistentResourceService.GetPersistentResource", "when": "the train step starts",
            "request": to_json(get_cluster_request(cluster, project, location))}]
    if cluster.create:
        out.append({"method": "PersistentResourceService.CreatePersistentResource",
                    "when": "no cluster has this id",
                    "request": to_json(create_cluster_request(cluster, project, location,
                                                              service_account=service_account, labels=labels))})
    out.append({"method": "JobSubmissionClient.submit_job", "when": "at the cluster's RAY_DASHBOARD_URI",
                "request": job_submission(cluster=cluster, **example)})
    return out


def train_on_cluster(cluster: RayCluster, *, project: str, location: str, service_account: str, labels: dict,
                     dataset_uri: str, model_uri: str, architecture: str, model_args: dict, settings: dict,
                     layout: dict, log: Callable[[str], None] = print) -> dict:
    """The ray-train step: the cluster (got or created), the Ray job submitted and followed, rank 0's
    result read back from Cloud Storage (the model artifact is already at `model_uri`)."""
    import tempfile
    from pathlib import Path

    from modelpress.core.fileio import read_json
    from modelpress.deploy.vertex import storage

    address = ensure_cluster(cluster, project, location, service_account=service_account, labels=labels, log=log)
    result_uri = model_uri.rstrip("/") + "-ray-result"
    submission = job_submission(dataset_uri=dataset_uri, model_uri=model_uri, result_uri=result_uri,
                                architecture=architecture, model_args=model_args, settings=settings, layout=layout,
                                cluster=cluster, submission_id=f"modelpress-train-{int(time.time())}")
    run_job(address, submission, log=log)
    with tempfile.TemporaryDirectory() as tmp:
        storage.download_prefix(result_uri, Path(tmp))
        return read_json(Path(tmp) / "result.json")


def settings_dict(cluster: RayCluster) -> dict:
    return asdict(cluster)
