"""Vertex AI: pipeline runs, schedules, model upload and endpoint deploy.

Only this module (through pipelines/submit.py and the deploy-vertex step) talks to Google
Cloud. Resources are built with google-cloud-aiplatform's own classes (``PipelineJob`` and
``PipelineJobSchedule`` turn a compiled template into the API resource) and every call goes
through its GAPIC clients with an explicit request object, so a dry run prints exactly the
requests a real run sends.

Images are referenced by an immutable tag (Vertex's cache key includes the image string, and
a schedule must keep running the code it was created with): a literal ``GIT_SHA`` in a
configured image is replaced by the tag given, ``:latest`` and untagged images are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from modelpress.core.errors import ModelpressError

GIT_SHA = "GIT_SHA"  # placeholder in configs/vertex.yaml images, replaced by the image tag
SERVE_PORT = 8080  # what `modelpress serve` binds in Vertex mode (AIP_HTTP_PORT)
PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/health"
CHAMPION_ALIAS = "champion"
NEW_MODEL = "0"  # the deploy request's traffic_split key for the model being deployed
OPERATION_TIMEOUT_S = 3600  # a first endpoint deploy takes 15-30 minutes
_DISPLAY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,127}$")  # quoted into list filters
_CRON_TZ = re.compile(r"^(CRON_TZ|TZ)=[A-Za-z0-9_+/-]+ +(\S+ +){4}\S+$")


# ------------------------------------------------------------------------------- images

def resolve_image(image: str, tag: str | None, where: str) -> str:
    """Fill the ``GIT_SHA`` placeholder with `tag`; refuse mutable references."""
    if GIT_SHA in image:
        if not tag:
            raise ModelpressError(f"{where}: image {image!r} has the {GIT_SHA} placeholder but no tag was "
                                  "given: pass --image-tag TAG or run from a git checkout")
        image = image.replace(GIT_SHA, tag)
    check_immutable(image, where)
    return image


def check_immutable(image: str, where: str) -> None:
    if not image:
        raise ModelpressError(f"{where}: no image given")
    if "@sha256:" in image:
        return
    last = image.rsplit("/", 1)[-1]  # a registry host may carry a port: host:5000/name
    if ":" not in last:
        raise ModelpressError(f"{where}: image {image!r} has no tag. Tag it immutably, e.g. "
                              f"{image}:{GIT_SHA} (replaced by `git rev-parse --short HEAD`) or @sha256:<digest>")
    if last.rsplit(":", 1)[1] == "latest":
        raise ModelpressError(f"{where}: image {image!r} is tagged 'latest', which changes under Vertex's "
                              f"cache and under running schedules. Use the git SHA: "
                              f"{image.rsplit(':', 1)[0]}:{GIT_SHA}")


def check_display_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not _DISPLAY_NAME.match(name):
        raise ModelpressError(f"{where}: display name {name!r} must be 1-128 letters, digits, spaces, "
                              "'_', '.' or '-', starting with a letter or digit")
    return name


def check_cron(cron: str, where: str) -> str:
    """Vertex cron with an explicit time zone, e.g. ``TZ=Europe/Brussels 0 3 * * 1``."""
    if not isinstance(cron, str) or not _CRON_TZ.match(cron.strip()):
        raise ModelpressError(f"{where}: cron {cron!r} must name its time zone and have five fields, "
                              "e.g. 'TZ=Europe/Brussels 0 3 * * 1' (03:00 every Monday)")
    return cron.strip()


# ------------------------------------------------------------------------------ serving

@dataclass(frozen=True)
class Serving:
    """Where and how a blessed model is served: the `serving:` block of configs/vertex.yaml."""

    serve_image: str
    model_display_name: str
    endpoint_display_name: str
    machine_type: str = "n1-standard-2"
    min_replica_count: int = 1
    max_replica_count: int = 1
    canary_traffic_percent: int = 100  # the new version's share; the rest stays on what serves now
    accelerator_type: str = ""  # e.g. NVIDIA_TESLA_T4; "" for CPU serving
    accelerator_count: int = 0

    def validate(self, where: str = "serving") -> "Serving":
        check_immutable(self.serve_image, f"{where}.serve_image")
        check_display_name(self.model_display_name, f"{where}.model_display_name")
        check_display_name(self.endpoint_display_name, f"{where}.endpoint_display_name")
        if not 1 <= self.min_replica_count <= self.max_replica_count:
            raise ModelpressError(f"{where}: replicas must satisfy 1 <= min_replica_count <= max_replica_count, "
                                  f"got {self.min_replica_count} and {self.max_replica_count}")
        if not 1 <= self.canary_traffic_percent <= 100:
            raise ModelpressError(f"{where}.canary_traffic_percent must be 1-100 (100: no canary), "
                                  f"got {self.canary_traffic_percent}")
        check_accelerator(self.accelerator_type, self.accelerator_count, where)
        return self


def check_accelerator(accelerator_type: str, accelerator_count: int, where: str) -> None:
    from google.cloud.aiplatform_v1.types import AcceleratorType

    if not accelerator_type:
        if accelerator_count:
            raise ModelpressError(f"{where}: accelerator_count {accelerator_count} without an accelerator_type")
        return
    known = [a.name for a in AcceleratorType if a.value]
    if accelerator_type not in known:
        raise ModelpressError(f"{where}: unknown accelerator_type {accelerator_type!r}; choose one of {known}")
    if accelerator_count < 1:
        raise ModelpressError(f"{where}: accelerator_type {accelerator_type} needs accelerator_count >= 1")


def traffic_split(incumbent: str | None, percent: int) -> dict[str, int]:
    """The endpoint's traffic after deploying a new model that takes `percent` of it.

    The incumbent (the model deployed before it) keeps the rest; older models get none and
    are undeployed, so at most two models serve, and cost, at a time. The next blessed
    model makes this one the incumbent.
    """
    if percent >= 100 or incumbent is None:
        return {NEW_MODEL: 100}
    return {incumbent: 100 - percent, NEW_MODEL: percent}


def incumbent(endpoint) -> str | None:
    """The most recently deployed model that still takes traffic, or None."""
    serving = [(d.create_time.timestamp() if d.create_time else 0.0, i, d.id)
               for i, d in enumerate(endpoint.deployed_models) if endpoint.traffic_split.get(d.id, 0) > 0]
    return max(serving)[2] if serving else None


def _location_parent(project: str, location: str) -> str:
    return f"projects/{project}/locations/{location}"


def _client(cls, location: str, credentials=None):
    return cls(credentials=credentials, client_options={"api_endpoint": f"{location}-aiplatform.googleapis.com"})


def upload_request(artifact_uri: str, serving: Serving, *, project: str, location: str, parent_model: str = "",
                   labels: dict | None = None, description: str = ""):
    """A new model (or a new version under `parent_model`), aliased champion and made the default."""
    from google.cloud.aiplatform_v1 import types

    container = types.ModelContainerSpec(image_uri=serving.serve_image, predict_route=PREDICT_ROUTE,
                                         health_route=HEALTH_ROUTE, ports=[types.Port(container_port=SERVE_PORT)])
    # "default" is the alias that makes a version the default one (is_default_version).
    model = types.Model(display_name=serving.model_display_name, artifact_uri=artifact_uri,
                        container_spec=container, version_aliases=[CHAMPION_ALIAS, "default"],
                        labels=dict(labels or {}), description=description)
    return types.UploadModelRequest(parent=_location_parent(project, location), parent_model=parent_model,
                                    model=model)


def deploy_request(endpoint: str, model_version: str, serving: Serving, split: dict[str, int]):
    from google.cloud.aiplatform_v1 import types

    machine = types.MachineSpec(machine_type=serving.machine_type)
    if serving.accelerator_type:
        machine.accelerator_type = types.AcceleratorType[serving.accelerator_type]
        machine.accelerator_count = serving.accelerator_count
    resources = types.DedicatedResources(machine_spec=machine, min_replica_count=serving.min_replica_count,
                                         max_replica_count=serving.max_replica_count)
    deployed = types.DeployedModel(model=model_version, display_name=serving.model_display_name,
                                   dedicated_resources=resources)
    return types.DeployModelRequest(endpoint=endpoint, deployed_model=deployed, traffic_split=split)


def _one_by_display_name(items: list, kind: str, name: str):
    if len(items) > 1:
        raise ModelpressError(f"{len(items)} {kind}s are named {name!r} ({', '.join(i.name for i in items)}); "
                              f"modelpress finds its {kind} by display name: delete or rename the extras")
    return items[0] if items else None


def deploy(artifact_uri: str, serving: Serving, *, project: str, location: str, labels: dict | None = None,
           description: str = "", credentials=None, log: Callable[[str], None] = print,
           timeout: float = OPERATION_TIMEOUT_S) -> dict:
    """Upload `artifact_uri` (a Triton-layout repository) to the Model Registry and deploy it.

    A model with the configured display name gets a new version (aliased champion, the
    default); the endpoint is found by display name or created. The new version takes
    `canary_traffic_percent` of the traffic, the previously deployed model the rest; older
    models are undeployed, so their replicas stop costing money.
    """
    from google.cloud.aiplatform_v1 import EndpointServiceClient, ModelServiceClient, types

    serving.validate()
    parent = _location_parent(project, location)
    models = _client(ModelServiceClient, location, credentials)
    endpoints = _client(EndpointServiceClient, location, credentials)
    model_filter = f'display_name="{serving.model_display_name}"'
    existing = _one_by_display_name(list(models.list_models(
        request=types.ListModelsRequest(parent=parent, filter=model_filter))), "model", serving.model_display_name)
    request = upload_request(artifact_uri, serving, project=project, location=location,
                             parent_model=existing.name if existing else "", labels=labels, description=description)
    uploaded = models.upload_model(request=request).result(timeout=timeout)
    version = f"{uploaded.model}@{uploaded.model_version_id}"
    log(f"[deploy-vertex] uploaded {artifact_uri} as {version}"
        + (" (new version of the existing model)" if existing else " (new model)"))

    endpoint_filter = f'display_name="{serving.endpoint_display_name}"'
    endpoint = _one_by_display_name(list(endpoints.list_endpoints(
        request=types.ListEndpointsRequest(parent=parent, filter=endpoint_filter))), "endpoint",
        serving.endpoint_display_name)
    if endpoint is None:
        endpoint = endpoints.create_endpoint(request=types.CreateEndpointRequest(
            parent=parent, endpoint=types.Endpoint(display_name=serving.endpoint_display_name,
                                                   labels=dict(labels or {})))).result(timeout=timeout)
        log(f"[deploy-vertex] created endpoint {endpoint.name}")
    split = traffic_split(incumbent(endpoint), serving.canary_traffic_percent)
    response = endpoints.deploy_model(request=deploy_request(endpoint.name, version, serving, split)).result(
        timeout=timeout)
    deployed_id = response.deployed_model.id
    retired = [d.id for d in endpoint.deployed_models if d.id not in split]
    for deployed_model_id in retired:
        endpoints.undeploy_model(request=types.UndeployModelRequest(
            endpoint=endpoint.name, deployed_model_id=deployed_model_id)).result(timeout=timeout)
    final_split = {(deployed_id if k == NEW_MODEL else k): v for k, v in split.items()}
    log(f"[deploy-vertex] deployed {version} to {endpoint.name} as {deployed_id}; traffic {final_split}"
        + (f"; undeployed {retired} (no traffic left)" if retired else ""))
    return {"model": uploaded.model, "model_version_id": uploaded.model_version_id, "model_version": version,
            "endpoint": endpoint.name, "deployed_model_id": deployed_id, "traffic_split": final_split,
            "undeployed": retired}


# ---------------------------------------------------------------------- pipeline runs

def pipeline_job(template_path: str, *, display_name: str, project: str, location: str, pipeline_root: str,
                 parameter_values: dict, enable_caching: bool | None, labels: dict | None,
                 job_id: str | None = None, credentials=None):
    """The PipelineJob resource for a compiled template (built locally; nothing is sent)."""
    from google.cloud import aiplatform

    try:
        return aiplatform.PipelineJob(display_name=display_name, template_path=template_path, job_id=job_id,
                                      pipeline_root=pipeline_root, parameter_values=parameter_values,
                                      enable_caching=enable_caching, labels=labels, project=project,
                                      location=location, credentials=credentials)
    except ValueError as exc:  # the SDK's checks of labels, job ids and parameter names
        raise ModelpressError(f"cannot build the PipelineJob for {display_name!r}: {exc}") from None


def create_pipeline_job_request(job, service_account: str):
    from google.cloud.aiplatform_v1 import types

    resource = types.PipelineJob(job._gca_resource)  # a copy: the job object stays as built
    if service_account:
        resource.service_account = service_account
    return types.CreatePipelineJobRequest(parent=_location_parent(job.project, job.location),
                                          pipeline_job=resource, pipeline_job_id=job.job_id)


def schedule_resource(job, *, display_name: str, cron: str, max_concurrent_run_count: int,
                      service_account: str):
    """A Schedule that runs `job`'s template; the template travels inside it, so it is immutable."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform_v1 import types

    check_display_name(display_name, "schedule")
    if max_concurrent_run_count < 1:
        raise ModelpressError(f"schedule {display_name!r}: max_concurrent_run_count must be >= 1, "
                              f"got {max_concurrent_run_count}")
    sdk = aiplatform.PipelineJobSchedule(pipeline_job=job, display_name=display_name, project=job.project,
                                         location=job.location, credentials=job.credentials)
    schedule = types.Schedule(sdk._gca_resource)
    schedule.cron = check_cron(cron, f"schedule {display_name!r}")
    schedule.max_concurrent_run_count = max_concurrent_run_count
    if service_account:
        schedule.create_pipeline_job_request.pipeline_job.service_account = service_account
    return schedule


def list_schedules_request(project: str, location: str, display_name: str):
    from google.cloud.aiplatform_v1 import types

    return types.ListSchedulesRequest(parent=_location_parent(project, location),
                                      filter=f'display_name="{check_display_name(display_name, "schedule")}"')


def create_schedule_request(schedule, project: str, location: str):
    from google.cloud.aiplatform_v1 import types

    return types.CreateScheduleRequest(parent=_location_parent(project, location), schedule=schedule)


# The SDK's PipelineJobSchedule.update() changes the timing only; the pipeline request (template,
# images, parameters) must be replaced too, or a schedule keeps running last month's code.
SCHEDULE_UPDATE_MASK = ("cron", "max_concurrent_run_count", "create_pipeline_job_request")


def update_schedule_request(schedule, name: str):
    from google.cloud.aiplatform_v1 import types
    from google.protobuf import field_mask_pb2

    updated = types.Schedule(schedule)
    updated.name = name
    return types.UpdateScheduleRequest(schedule=updated,
                                       update_mask=field_mask_pb2.FieldMask(paths=list(SCHEDULE_UPDATE_MASK)))


def submit(job, *, service_account: str, log: Callable[[str], None] = print):
    """Create the pipeline run; return the created PipelineJob resource."""
    from google.cloud.aiplatform_v1 import PipelineServiceClient

    client = _client(PipelineServiceClient, job.location, job.credentials)
    created = client.create_pipeline_job(request=create_pipeline_job_request(job, service_account))
    log(f"submitted {created.name}: https://console.cloud.google.com/vertex-ai/locations/{job.location}/"
        f"pipelines/runs/{job.job_id}?project={job.project}")
    return created


def apply_schedule(job, *, display_name: str, cron: str, max_concurrent_run_count: int, service_account: str,
                   log: Callable[[str], None] = print) -> tuple[str, object]:
    """Create the schedule named `display_name`, or update it in place when it exists."""
    from google.cloud.aiplatform_v1 import ScheduleServiceClient

    schedule = schedule_resource(job, display_name=display_name, cron=cron,
                                 max_concurrent_run_count=max_concurrent_run_count, service_account=service_account)
    client = _client(ScheduleServiceClient, job.location, job.credentials)
    found = _one_by_display_name(list(client.list_schedules(
        request=list_schedules_request(job.project, job.location, display_name))), "schedule", display_name)
    if found is None:
        created = client.create_schedule(request=create_schedule_request(schedule, job.project, job.location))
        log(f"created schedule {created.name} ({display_name!r}, {schedule.cron})")
        return "created", created
    updated = client.update_schedule(request=update_schedule_request(schedule, found.name))
    log(f"updated schedule {found.name} ({display_name!r}, {schedule.cron})")
    return "updated", updated


def planned_requests(job, *, service_account: str, schedule: dict | None = None) -> list[dict]:
    """What submit() or apply_schedule() would send, as JSON-ready dicts (for --dry-run)."""
    if schedule is None:
        return [{"method": "PipelineService.CreatePipelineJob",
                 "request": to_json(create_pipeline_job_request(job, service_account))}]
    resource = schedule_resource(job, service_account=service_account, **schedule)
    create = create_schedule_request(resource, job.project, job.location)
    return [
        {"method": "ScheduleService.ListSchedules",
         "request": to_json(list_schedules_request(job.project, job.location, schedule["display_name"]))},
        {"method": "ScheduleService.CreateSchedule", "when": "no schedule has this display name",
         "request": to_json(create)},
        {"method": "ScheduleService.UpdateSchedule", "when": "one does: its name comes from ListSchedules",
         "request": to_json(update_schedule_request(resource, "<name from ListSchedules>"))},
    ]


def to_json(message) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(type(message).pb(message), preserving_proto_field_name=True)
