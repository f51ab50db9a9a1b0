"""vertex: what the pipelines need to run on Vertex AI Pipelines.

- Every task gets CPU and memory limits (compiled into the YAML).
- Training runs distributed-train as a Vertex custom job over worker pools (`distributed:`).
- The deploy step uploads to the Model Registry and deploys to an endpoint (`serving:`).
- Batch prediction is a Vertex AI batch prediction job over the registered model (`batch_prediction:`).
- Images are immutable: a literal GIT_SHA in an image is replaced by the image tag
  (`--image-tag`, else `git rev-parse --short HEAD` of this checkout, the tag
  `make images TAG=$(git rev-parse --short HEAD)` pushed); `:latest` and untagged images are refused.
- Paths are gs:// URIs; enable_caching and labels apply to every PipelineJob and schedule.
"""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from modelpress.core.errors import ModelpressError
from modelpress.deploy.vertex import GIT_SHA, Serving, check_accelerator, resolve_image
from modelpress.deploy.vertex.batch_job import BatchPrediction
from modelpress.deploy.vertex.ray_cluster import RayCluster
from pipelines.config import ROOT, block
from pipelines.targets import Target

CONFIG_KEYS = {"image", "pipeline_root", "parameters", "project", "region", "service_account",
               "labels", "enable_caching", "distributed", "serving", "ray", "batch_prediction"}
REQUIRED = ("image", "pipeline_root", "project", "region", "service_account")


@dataclass(frozen=True)
class TrainingJob:
    """The `distributed:` block of configs/vertex.yaml: the training step as a custom job."""

    replica_count: int = 1  # machines: workerpool0 holds the primary, workerpool1 the others
    machine_type: str = "n1-standard-4"
    accelerator_type: str = ""  # e.g. NVIDIA_TESLA_T4; "" trains on the CPUs
    accelerator_count: int = 0  # per machine
    image: str = ""  # "" = the target's image; with accelerators, the GPU image
    nproc_per_node: int = 0  # processes per machine: 0 = one per GPU, else one per CPU core
    parallelism: str = "ddp"  # ddp | fsdp (sharded: a model too big for one device) | pipeline
    mixed_precision: str = "auto"  # fsdp: bf16 compute on GPUs with bf16
    engine: str = "torchrun"  # torchrun: a custom job over worker pools; ray: the Ray on Vertex cluster of `ray:`

    def validate(self, where: str = "distributed") -> "TrainingJob":
        from modelpress.training.distributed import Layout

        try:
            Layout(parallelism=self.parallelism, mixed_precision=self.mixed_precision, engine=self.engine).validate()
        except ModelpressError as exc:
            raise ModelpressError(f"{where}: {exc}") from None
        if self.replica_count < 1:
            raise ModelpressError(f"{where}.replica_count must be >= 1, got {self.replica_count}")
        if self.nproc_per_node < 0:
            raise ModelpressError(f"{where}.nproc_per_node must be >= 0 (0: one per GPU or CPU core), "
                                  f"got {self.nproc_per_node}")
        check_accelerator(self.accelerator_type, self.accelerator_count, where)
        return self


# ------------------------------------------------------------------ configs/vertex.yaml

def from_config(data: dict, path: Path, image_tag: str | None = None) -> dict:
    """The TargetConfig fields (target, pipeline root, labels, caching, image tag) of a vertex config."""
    where = str(path)
    missing = [k for k in REQUIRED if not data.get(k)]
    if missing:
        raise ModelpressError(f"{where} lacks {', '.join(missing)}: the vertex target needs them")
    if not str(data["pipeline_root"]).startswith("gs://"):
        raise ModelpressError(f"{where}: pipeline_root must be a gs:// URI, got {data['pipeline_root']!r}")
    labels = data.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ModelpressError(f"{where}: labels map names to strings, e.g. {{team: ml}}")
    caching = data.get("enable_caching")
    if caching is not None and not isinstance(caching, bool):
        raise ModelpressError(f"{where}: enable_caching is true, false or absent (each task's own setting)")
    serving = dict(data.get("serving") or {})
    distributed = dict(data.get("distributed") or {})
    ray = dict(data.get("ray") or {})
    images = [data["image"], serving.get("serve_image", ""), distributed.get("image", ""), ray.get("image", "")]
    if any(GIT_SHA in image for image in images):
        image_tag = image_tag or git_sha()
    if "serve_image" in serving:
        serving["serve_image"] = resolve_image(serving["serve_image"], image_tag, f"{where} serving.serve_image")
    if distributed.get("image"):
        distributed["image"] = resolve_image(distributed["image"], image_tag, f"{where} distributed.image")
    if ray.get("image"):
        ray["image"] = resolve_image(ray["image"], image_tag, f"{where} ray.image")
    training_job = block(TrainingJob, distributed, f"{where} distributed") if data.get("distributed") else None
    if training_job and training_job.engine == "ray" and not ray:
        raise ModelpressError(f"{where}: distributed.engine is ray but there is no ray: block naming the cluster "
                              "(cluster, image, machine types, workers); add it, or set engine: torchrun")
    target = Target(
        name="vertex", image=resolve_image(data["image"], image_tag, f"{where} image"), project=data["project"],
        region=data["region"], service_account=data["service_account"], labels=tuple(sorted(labels.items())),
        serving=block(Serving, serving, f"{where} serving") if data.get("serving") else None,
        training_job=training_job, ray=block(RayCluster, ray, f"{where} ray") if ray else None,
        batch_prediction=block(BatchPrediction, dict(data.get("batch_prediction") or {}), f"{where} batch_prediction"),
    )
    return dict(target=target, pipeline_root=data["pipeline_root"], labels=labels, enable_caching=caching,
                image_tag=image_tag)


def git_sha() -> str:
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelpressError(f"cannot run git to fill {GIT_SHA} in the image names ({exc}): "
                              "pass --image-tag TAG") from None
    if proc.returncode != 0:
        raise ModelpressError(f"`git rev-parse --short HEAD` failed in {ROOT} ({proc.stderr.strip()}): "
                              "pass --image-tag TAG")
    sha = proc.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "modelpress", "components", "pipelines"],
                           cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    if dirty:  # the template would carry code the image tagged `sha` does not hold
        print(f"warning: uncommitted changes under modelpress/, components/ or pipelines/; the images tagged {sha} "
              "do not contain them. Commit, run `make images`, then submit.", file=sys.stderr)
    return sha


def path_parameter(key: str, value: str, *, must_exist: bool) -> str:
    if key == "code_dir":
        raise ModelpressError(f"code_dir={value!r}: on Vertex AI your model's code is in the image: put its "
                              "package in user_code/ (make images copies it; user_code/README.md) and leave "
                              "code_dir empty")
    raise ModelpressError(f"{key}={value!r}: on Vertex AI paths must be gs:// URIs (upload it with "
                          "`gcloud storage cp`, see docs/vertex.md)")


# ------------------------------------------------------------------------ the steps

def configure(target: Target, task):
    task.set_cpu_limit(target.cpu_limit)  # compiled into the YAML; the local runner only warns
    task.set_memory_limit(target.memory_limit)
    return task


def train(target: Target, dataset, **hyperparameters):
    job = target.training_job or TrainingJob()
    if job.engine == "ray":  # a step that submits a Ray job to the Ray on Vertex cluster and follows it
        from components.ray_train import ray_train

        return target.apply(ray_train(
            dataset=dataset, project=target.project, location=target.region, service_account=target.service_account,
            ray=asdict(target.ray), labels=dict(target.labels), parallelism=job.parallelism,
            mixed_precision=job.mixed_precision, **hyperparameters), cache=True)
    # The custom job's launcher has its own image: only caching is set on the task.
    task = training_job_op(target)(dataset=dataset, nproc_per_node=job.nproc_per_node, parallelism=job.parallelism,
                                   mixed_precision=job.mixed_precision, project=target.project,
                                   location=target.region, **hyperparameters)
    return task.set_caching_options(True)


def deploy(target: Target, model, repository, model_name):
    from components.deploy_vertex import deploy_vertex

    if target.serving is None:
        raise ModelpressError("the vertex target deploys with the `serving:` block of configs/vertex.yaml; "
                              "add it (serve_image or container: triton + triton_image, model_display_name, "
                              "endpoint_display_name, ...)")
    s = target.serving
    return target.apply(deploy_vertex(
        model=model, repository=repository, model_name=model_name, project=target.project,
        location=target.region, serve_image=s.serve_image, container=s.container, triton_image=s.triton_image,
        model_display_name=s.model_display_name,
        endpoint_display_name=s.endpoint_display_name, machine_type=s.machine_type,
        min_replica_count=s.min_replica_count, max_replica_count=s.max_replica_count,
        canary_traffic_percent=s.canary_traffic_percent, accelerator_type=s.accelerator_type,
        accelerator_count=s.accelerator_count, labels=dict(target.labels)), cache=False)


def batch_predict(target: Target, *, source, key_column, version, batch_size, **local_only):
    """The registered model (version 0: the champion) scored by a Vertex AI batch prediction job:
    Vertex runs the serve image on its own machines and posts the instances to its predict route.
    `local_only` (columns, formats, threads, chunks, an ONNX folder) is for the local step;
    submit.py refuses values of them that mean something else here (batch_job.check_parameters)."""
    from google_cloud_pipeline_components.v1.batch_predict_job import ModelBatchPredictOp
    from kfp import dsl

    from components.vertex_model import vertex_model

    # a config without a fitting serving block still builds (settings read every pipeline's signature);
    # submitting batch_prediction with it is refused (batch_job.check_parameters)
    job, display_name = target.batch_prediction or BatchPrediction(), getattr(target.serving, "model_display_name", "")
    model = target.apply(vertex_model(project=target.project, location=target.region,
                                      model_display_name=display_name, version=version), cache=False)
    extra = {"accelerator_type": job.accelerator_type, "accelerator_count": job.accelerator_count} \
        if job.accelerator_type else {}
    return ModelBatchPredictOp(
        project=target.project, location=target.region, job_display_name=f"{display_name or 'modelpress'}-batch",
        model=model.outputs["model"], gcs_source_uris=[source], instances_format=job.instances_format,
        instance_type="object", key_field=key_column, predictions_format=job.predictions_format,
        gcs_destination_output_uri_prefix=f"{dsl.PIPELINE_ROOT_PLACEHOLDER}/batch-predictions",
        machine_type=job.machine_type, starting_replica_count=job.starting_replica_count,
        max_replica_count=job.max_replica_count, manual_batch_tuning_parameters_batch_size=batch_size,
        service_account=target.service_account, labels=dict(target.labels), **extra).set_caching_options(False)


@functools.lru_cache(maxsize=None)
def training_job_op(target: Target):
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
    return check_no_clashing_inputs(op, component)


def check_no_clashing_inputs(op, component):
    """GCPC merges the component's inputs over the CustomJob's, and the job request reads the
    merged value: a component input named like a CustomJob field (say `strategy`) would be
    sent to Vertex as that field. Refuse at compile time rather than at submission."""
    from google_cloud_pipeline_components.v1.custom_job.component import custom_training_job

    clashes = sorted(set(custom_training_job.component_spec.inputs) & set(component.component_spec.inputs))
    if clashes:
        raise ModelpressError(f"distributed-train inputs {clashes} share names with Vertex CustomJob fields; "
                              "rename them in components/distributed_train.py")
    return op
