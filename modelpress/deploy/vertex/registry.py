"""Model Registry upload and endpoint deploy, with a canary: what the deploy-vertex step calls."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from modelpress.core.errors import ModelpressError
from modelpress.deploy.vertex.checks import check_accelerator, check_display_name, check_immutable
from modelpress.deploy.vertex.client import client, location_parent, one_by_display_name

SERVE_PORT = 8080  # what `modelpress serve` (and Triton, in Vertex mode) binds: AIP_HTTP_PORT
CONTAINERS = ("modelpress", "triton")
PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/health"
CHAMPION_ALIAS = "champion"
NEW_MODEL = "0"  # the deploy request's traffic_split key for the model being deployed
OPERATION_TIMEOUT_S = 3600  # a first endpoint deploy takes 15-30 minutes
# Vertex documents no length limit for Model.versionDescription; the card's summary stays short
# enough to read whole in the console, and ends with where the full card is.
VERSION_DESCRIPTION_LIMIT = 2000
LABEL_MAX = 63  # Google Cloud labels: keys and values of at most 63 lowercase [a-z0-9_-], keys start a-z
_NOT_LABEL = re.compile(r"[^a-z0-9_-]+")


@dataclass(frozen=True)
class Serving:
    """Where and how a blessed model is served: the `serving:` block of configs/vertex.yaml."""

    serve_image: str = ""  # container modelpress: the serve image (make images)
    model_display_name: str = ""
    endpoint_display_name: str = ""
    container: str = "modelpress"  # or triton: NVIDIA's own tritonserver image serves the same repository
    triton_image: str = ""  # container triton: nvcr.io/nvidia/tritonserver:<tag>-py3 mirrored into Artifact Registry
    machine_type: str = "n1-standard-2"
    min_replica_count: int = 1
    max_replica_count: int = 1
    canary_traffic_percent: int = 100  # the new version's share; the rest stays on what serves now
    accelerator_type: str = ""  # e.g. NVIDIA_TESLA_T4; "" for CPU serving
    accelerator_count: int = 0

    @property
    def image(self) -> str:
        return self.triton_image if self.container == "triton" else self.serve_image

    def validate(self, where: str = "serving") -> "Serving":
        if self.container not in CONTAINERS:
            raise ModelpressError(f"{where}.container must be one of {', '.join(CONTAINERS)}, got {self.container!r}")
        if self.container == "triton":
            if not self.triton_image:
                raise ModelpressError(f"{where}: container triton needs triton_image: nvcr.io/nvidia/tritonserver:"
                                      "<tag>-py3 mirrored into your Artifact Registry (docs/vertex.md shows how)")
            check_immutable(self.triton_image, f"{where}.triton_image")
        else:
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


def container_spec(serving: Serving, model_name: str):
    """What Vertex runs: `modelpress serve` (its own routes), or Triton over the same repository.

    Triton's image starts tritonserver when Vertex sets AIP_MODE, serves Vertex's default
    predict and health routes on AIP_HTTP_PORT, and takes a KServe v2 body on the predict
    route as an infer on `--vertex-ai-default-model`. Vertex expands $(AIP_STORAGE_URI).
    """
    from google.cloud.aiplatform_v1 import types

    ports = [types.Port(container_port=SERVE_PORT)]
    if serving.container == "triton":
        if not model_name:
            raise ModelpressError("container triton needs the model's name for --vertex-ai-default-model")
        return types.ModelContainerSpec(
            image_uri=serving.triton_image, ports=ports,
            args=["--model-repository=$(AIP_STORAGE_URI)", f"--vertex-ai-default-model={model_name}"])
    return types.ModelContainerSpec(image_uri=serving.serve_image, predict_route=PREDICT_ROUTE,
                                    health_route=HEALTH_ROUTE, ports=ports)


def label_value(text) -> str:
    """`text` as a Google Cloud label value: lowercase, [a-z0-9_-] (others become '_'), at most 63."""
    return _NOT_LABEL.sub("_", str(text).lower())[:LABEL_MAX]


def card_labels(card: dict) -> dict[str, str]:
    """Labels from a model card, to find versions in the Model Registry by: variant, task, precision,
    blessed, and the test quality in whole percent (accuracy_pct for classification, r2_pct for regression)."""
    details, params, q = card["model_details"], card["model_parameters"], card["quantitative_analysis"]
    labels = {"variant": details.get("variant"), "task": params["data"].get("task"),
              "precision": params.get("precision"), "blessed": card["blessing"].get("blessed")}
    for m in q["performance_metrics"]:
        if m["type"] in ("accuracy", "r2") and m["value"] is not None:
            labels[f"{m['type']}_pct"] = int(m["value"] * 100 // 1)  # a bucket: 0.978 is "97"
    return {k: label_value(v) for k, v in labels.items() if v is not None}


def upload_request(artifact_uri: str, serving: Serving, *, project: str, location: str, parent_model: str = "",
                   labels: dict | None = None, description: str = "", model_name: str = "",
                   version_description: str = ""):
    """A new model (or a new version under `parent_model`), aliased champion and made the default;
    `version_description` describes this version alone (the model card's summary)."""
    from google.cloud.aiplatform_v1 import types

    container = container_spec(serving, model_name)
    # "default" is the alias that makes a version the default one (is_default_version).
    model = types.Model(display_name=serving.model_display_name, artifact_uri=artifact_uri,
                        container_spec=container, version_aliases=[CHAMPION_ALIAS, "default"],
                        labels=dict(labels or {}), description=description,
                        version_description=version_description)
    return types.UploadModelRequest(parent=location_parent(project, location), parent_model=parent_model,
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


def deploy(artifact_uri: str, serving: Serving, *, project: str, location: str, labels: dict | None = None,
           description: str = "", model_name: str = "", credentials=None, log: Callable[[str], None] = print,
           timeout: float = OPERATION_TIMEOUT_S, version_description: str = "",
           model_labels: dict | None = None) -> dict:
    """Upload `artifact_uri` (a Triton-layout repository) to the Model Registry and deploy it.

    A model with the configured display name gets a new version (aliased champion, the
    default) with `labels` over `model_labels` (the version's own, e.g. from its card; a new endpoint
    gets `labels` only); the endpoint is found by display name or created. The new version takes
    `canary_traffic_percent` of the traffic, the previously deployed model the rest; older
    models are undeployed, so their replicas stop costing money.
    """
    from google.cloud.aiplatform_v1 import EndpointServiceClient, ModelServiceClient, types

    serving.validate()
    parent = location_parent(project, location)
    models = client(ModelServiceClient, location, credentials)
    endpoints = client(EndpointServiceClient, location, credentials)
    model_filter = f'display_name="{serving.model_display_name}"'
    existing = one_by_display_name(list(models.list_models(
        request=types.ListModelsRequest(parent=parent, filter=model_filter))), "model", serving.model_display_name)
    request = upload_request(artifact_uri, serving, project=project, location=location,
                             parent_model=existing.name if existing else "",
                             labels={**(model_labels or {}), **(labels or {})}, description=description,
                             model_name=model_name, version_description=version_description)
    uploaded = models.upload_model(request=request).result(timeout=timeout)
    version = f"{uploaded.model}@{uploaded.model_version_id}"
    log(f"[deploy-vertex] uploaded {artifact_uri} as {version}"
        + (" (new version of the existing model)" if existing else " (new model)"))

    endpoint_filter = f'display_name="{serving.endpoint_display_name}"'
    endpoint = one_by_display_name(list(endpoints.list_endpoints(
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


def publish(model_dir: str, served_dir: str, served_uri: str, serving: Serving, *, project: str, location: str,
            model_name: str, repository: str = "", labels: dict | None = None, variant: str | None = None,
            log: Callable[[str], None] = print) -> dict:
    """The deploy-vertex step: write the one-model repository Vertex serves (`served_dir`, whose
    gs:// URI is `served_uri`), upload and deploy it, then record the version in `repository`
    (where later runs read the champion) only once the deploy succeeded."""
    from modelpress.deploy import card, repository as repo
    from modelpress.deploy.card_markdown import summary
    from modelpress.export import runtime

    meta = {"variant": variant}
    triton = serving.container == "triton"
    if triton and runtime.read_meta(model_dir).get("token_inputs"):
        log("[deploy-vertex] note: Triton serves the text model's ONNX inputs (token ids); only modelpress serve "
            "takes raw strings and tokenises them")
    # Triton places instances by kind; modelpress serve picks its device from the machine.
    served = repo.deploy(model_dir, served_dir, model_name, extra_meta=meta,
                         gpu=triton and bool(serving.accelerator_type))
    # the registry shows the card's summary and labels; the whole card travels in the artifact
    the_card = card.read(f"{served_dir}/{model_name}/{served}", "json")
    pointer = f"{served_uri.rstrip('/')}/{model_name}/{served}/{card.CARD_MD}"
    result = deploy(served_uri, serving, project=project, location=location, labels=labels,
                    description=f"modelpress {model_name}: {variant or 'model'}", model_name=model_name, log=log,
                    version_description=summary(the_card, VERSION_DESCRIPTION_LIMIT, pointer),
                    model_labels=card_labels(the_card))
    if repository:
        version = repo.deploy(model_dir, repository, model_name, extra_meta={**meta, **result})
        log(f"[deploy-vertex] champion recorded as {repository}/{model_name}/{version}")
    return result
