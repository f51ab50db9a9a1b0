"""The Vertex target: the custom training job in the compiled template, and the deploy step's requests.

Google Cloud is replaced by in-memory Model and Endpoint services patched onto the GAPIC
clients; everything else (the component, the library, the protos it builds) is real.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from google.cloud.aiplatform_v1 import EndpointServiceClient, ModelServiceClient, types
from kfp.dsl import Model

from components.deploy_vertex import deploy_vertex
from components.distributed_train import distributed_train
from modelpress.deploy import repository
from modelpress.deploy import vertex
from modelpress.core.errors import ModelpressError
from pipelines import settings
from pipelines.compile import compile_pipeline
from pipelines.targets import Target
from pipelines.targets.vertex import TrainingJob, training_job_op

ROOT = Path(__file__).resolve().parents[2]
GCPC_LAUNCHER = "gcr.io/ml-pipeline/google-cloud-pipeline-components:2.22.0"
PARENT = "projects/my-project/locations/europe-west4"


@pytest.fixture(scope="module")
def vertex_cfg():
    return settings.load("vertex", ROOT / "configs" / "vertex.yaml", image_tag="abc1234")


@pytest.fixture(scope="module")
def compiled(vertex_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("vertex")
    return {name: yaml.safe_load(compile_pipeline(name, vertex_cfg.target, out).read_text())
            for name in ("training", "optimise", "retraining")}


def test_training_runs_distributed_train_as_a_custom_job_with_the_configured_worker_pools(compiled, vertex_cfg):
    spec = compiled["training"]
    job = vertex_cfg.raw["distributed"]
    executor = spec["deploymentSpec"]["executors"]["exec-distributed-train"]["container"]
    assert executor["image"] == GCPC_LAUNCHER  # the launcher; the worker pools run the project's image
    assert executor["command"][-1].endswith("custom_job.launcher")
    inputs = spec["components"]["comp-distributed-train"]["inputDefinitions"]["parameters"]
    pools = inputs["worker_pool_specs"]["defaultValue"]
    assert [p["replica_count"] for p in pools] == [1, job["replica_count"] - 1]
    for pool in pools:
        assert pool["machine_spec"] == {"machine_type": job["machine_type"],
                                        "accelerator_type": job["accelerator_type"],
                                        "accelerator_count": job["accelerator_count"]}
        assert pool["container_spec"]["image_uri"] == "europe-west4-docker.pkg.dev/my-project/modelpress/gpu:abc1234"
        assert "distributed_train" in pool["container_spec"]["args"]
    task = spec["root"]["dag"]["tasks"]["distributed-train"]["inputs"]["parameters"]
    assert task["location"]["runtimeValue"]["constant"] == "europe-west4"
    assert task["project"]["runtimeValue"]["constant"] == "my-project"
    assert task["nproc_per_node"]["runtimeValue"]["constant"] == job["nproc_per_node"]
    assert inputs["service_account"]["defaultValue"] == vertex_cfg.raw["service_account"]
    # Every input of distributed-train reaches the workers with its own default, and none of them
    # is also a CustomJob field (GCPC would send the component's value to Vertex as that field).
    own = distributed_train.component_spec.inputs
    assert {k: inputs[k].get("defaultValue") for k in own if own[k].default is not None} == \
        {k: v.default for k, v in own.items() if v.default is not None}
    payload = next(a for a in executor["args"] if a.startswith('{"display_name"'))
    (scheduling,) = re.findall(r'"strategy": "\{\{\$\.inputs\.parameters\[\'(\w+)\'\]\}\}"', payload)
    assert scheduling == "strategy" and inputs["strategy"]["defaultValue"] == "STANDARD"


def test_the_custom_job_op_is_built_once_per_target():
    a = Target(name="vertex", image="r/cpu:1", project="p", region="europe-west4",
               training_job=TrainingJob(replica_count=3, machine_type="n1-standard-4"))
    b = Target(name="vertex", image="r/cpu:1", project="p", region="europe-west4",
               training_job=TrainingJob(replica_count=3, machine_type="n1-standard-4"))
    assert training_job_op(a) is training_job_op(b)
    other = training_job_op(Target(name="vertex", image="r/cpu:2", project="p", region="europe-west4"))
    assert other is not training_job_op(a)
    pools = other.component_spec.inputs["worker_pool_specs"].default
    assert len(pools) == 1 and pools[0]["container_spec"]["image_uri"] == "r/cpu:2"
    assert "accelerator_type" not in pools[0]["machine_spec"]


def test_the_deploy_step_follows_the_target(compiled, tmp_path):
    for name in ("optimise", "retraining"):
        spec = compiled[name]
        executors = spec["deploymentSpec"]["executors"]
        assert "exec-deploy-vertex" in executors and "exec-deploy-local" not in executors
        assert executors["exec-deploy-vertex"]["container"]["image"].endswith("/cpu:abc1234")
        # the deploy task sits under the blessing gate
        (gate,) = [t for t in spec["root"]["dag"]["tasks"].values()
                   if "deploy-vertex" in spec["components"][t["componentRef"]["name"]].get("dag", {}).get("tasks", {})]
        assert gate["triggerPolicy"]["condition"].endswith("== true")
        gated = spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
        deploy = gated["deploy-vertex"]["inputs"]["parameters"]
        constant = {k: v["runtimeValue"]["constant"] for k, v in deploy.items() if "runtimeValue" in v}
        assert constant == {"project": "my-project", "location": "europe-west4",
                            "serve_image": "europe-west4-docker.pkg.dev/my-project/modelpress/serve:abc1234",
                            "container": "modelpress", "triton_image": "",
                            "model_display_name": "modelpress-digits", "endpoint_display_name": "modelpress-digits",
                            "machine_type": "n1-standard-2", "min_replica_count": 1, "max_replica_count": 3,
                            "canary_traffic_percent": 10, "accelerator_type": "", "accelerator_count": 0,
                            "labels": {"team": "ml", "app": "modelpress"}}
    local = compile_pipeline("optimise", settings.load("local").target, tmp_path)
    assert "exec-deploy-local" in yaml.safe_load(local.read_text())["deploymentSpec"]["executors"]


# ---------------------------------------------------------------- deploy against fake services

class Operation:
    def __init__(self, value):
        self.value = value

    def result(self, timeout=None):
        return self.value


class FakeVertex:
    """Model Registry and endpoints in memory, enough for upload, deploy and undeploy."""

    def __init__(self):
        self.models, self.endpoints, self.calls = {}, {}, []
        self.next_id = 100

    def _id(self) -> str:
        self.next_id += 1
        return str(self.next_id)

    def list_models(self, request):
        self.calls.append(("list_models", request))
        return [types.Model(m) for m in self.models.values() if request.filter == f'display_name="{m.display_name}"']

    def upload_model(self, request):
        self.calls.append(("upload_model", request))
        if request.parent_model:
            model = self.models[request.parent_model]
            model.version_id = str(int(model.version_id) + 1)
        else:
            model = types.Model(request.model, name=f"{request.parent}/models/{self._id()}", version_id="1")
            self.models[model.name] = model
        return Operation(types.UploadModelResponse(model=model.name, model_version_id=model.version_id))

    def list_endpoints(self, request):
        self.calls.append(("list_endpoints", request))
        return [types.Endpoint(e) for e in self.endpoints.values()
                if request.filter == f'display_name="{e.display_name}"']

    def create_endpoint(self, request):
        self.calls.append(("create_endpoint", request))
        endpoint = types.Endpoint(request.endpoint, name=f"{request.parent}/endpoints/{self._id()}")
        self.endpoints[endpoint.name] = endpoint
        return Operation(types.Endpoint(endpoint))

    def deploy_model(self, request):
        self.calls.append(("deploy_model", request))
        endpoint = self.endpoints[request.endpoint]
        deployed = types.DeployedModel(request.deployed_model, id=self._id())
        endpoint.deployed_models.append(deployed)
        split = {deployed.id if k == vertex.NEW_MODEL else k: v for k, v in request.traffic_split.items()}
        assert sum(split.values()) == 100, split  # Vertex refuses any other total
        endpoint.traffic_split.clear()
        endpoint.traffic_split.update(split)
        return Operation(types.DeployModelResponse(deployed_model=deployed))

    def undeploy_model(self, request):
        self.calls.append(("undeploy_model", request))
        endpoint = self.endpoints[request.endpoint]
        # Vertex refuses to undeploy a model that still has traffic
        assert not endpoint.traffic_split.get(request.deployed_model_id)
        kept = [d for d in endpoint.deployed_models if d.id != request.deployed_model_id]
        del endpoint.deployed_models[:]
        endpoint.deployed_models.extend(kept)
        return Operation(types.UndeployModelResponse())

    def requests(self, method):
        return [r for m, r in self.calls if m == method]


@pytest.fixture
def fake_vertex(patch_vertex):
    return patch_vertex(FakeVertex(), {
        ModelServiceClient: ["list_models", "upload_model"],
        EndpointServiceClient: ["list_endpoints", "create_endpoint", "deploy_model", "undeploy_model"]})


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    """gs:// URIs as on Vertex: artifacts' .path and modelpress's local_path map them under one mount."""
    from kfp.dsl.types import artifact_types

    from modelpress.core import fileio

    mount = tmp_path / "gcs"
    monkeypatch.setattr(artifact_types, "_GCS_LOCAL_MOUNT_PREFIX", f"{mount}/")
    monkeypatch.setattr(fileio, "GCS_MOUNT", str(mount))
    return mount


def _deploy(onnx_dir, gcs, run: str, **serving):
    chosen = Model(name="chosen", uri=f"gs://bucket/{run}/select/chosen", metadata={"variant": "static-int8"})
    shutil.copytree(onnx_dir, chosen.path)
    served = Model(name="served", uri=f"gs://bucket/{run}/deploy-vertex/served", metadata={})
    settings_ = dict(project="my-project", location="europe-west4",
                     serve_image="europe-west4-docker.pkg.dev/my-project/modelpress/serve:abc1234",
                     model_display_name="modelpress-digits", endpoint_display_name="digits-endpoint",
                     repository="gs://bucket/modelpress/model_repository", model_name="digits",
                     machine_type="n1-standard-4", min_replica_count=1, max_replica_count=4,
                     canary_traffic_percent=100, accelerator_type="", accelerator_count=0, labels={"team": "ml"})
    settings_.update(serving)
    version = deploy_vertex.python_func(model=chosen, served=served, **settings_)
    return version, served


def test_first_deploy_uploads_a_new_model_and_creates_the_endpoint(fake_vertex, gcs, mlp_onnx_dir):
    version, served = _deploy(mlp_onnx_dir, gcs, "run1")
    (upload,) = fake_vertex.requests("upload_model")
    assert upload.parent == PARENT and upload.parent_model == ""
    model = upload.model
    assert model.display_name == "modelpress-digits"
    assert model.artifact_uri == "gs://bucket/run1/deploy-vertex/served" == served.uri
    assert list(model.version_aliases) == ["champion", "default"]
    assert model.container_spec.image_uri == "europe-west4-docker.pkg.dev/my-project/modelpress/serve:abc1234"
    assert (model.container_spec.predict_route, model.container_spec.health_route) == ("/predict", "/health")
    assert [p.container_port for p in model.container_spec.ports] == [8080]
    # the configured labels over the model card's; the version's description: the card's summary, then the card
    accuracy = json.loads((gcs / "bucket/run1/deploy-vertex/served/digits/1/meta.json").read_text())["accuracy"]
    assert dict(model.labels) == {"team": "ml", "variant": "static-int8", "task": "classification",
                                  "precision": "fp32", "accuracy_pct": str(int(accuracy * 100))}
    text, card_md = model.version_description, "gs://bucket/run1/deploy-vertex/served/digits/1/model_card.md"
    assert text.startswith("digits: static-int8 (fp32 mlp), classification on digits") and len(text) <= 2000
    assert f"Test: Accuracy {accuracy:.4g}" in text and "Lineage: train -> export-onnx" in text
    assert text.endswith(f"Full card: {card_md}") and (gcs / card_md[5:]).is_file()
    assert model.description == "modelpress digits: static-int8"
    # what Vertex copies to AIP_STORAGE_URI: a one-model Triton repository
    assert repository.versions(served.path, "digits") == [1]
    assert repository.read_config(served.path, "digits").name == "digits"
    (list_models,) = fake_vertex.requests("list_models")
    assert (list_models.parent, list_models.filter) == (PARENT, 'display_name="modelpress-digits"')
    (create,) = fake_vertex.requests("create_endpoint")
    assert create.parent == PARENT and create.endpoint.display_name == "digits-endpoint"
    assert dict(create.endpoint.labels) == {"team": "ml"}  # the endpoint outlives versions: no card labels
    (deploy,) = fake_vertex.requests("deploy_model")
    endpoint_name = next(iter(fake_vertex.endpoints))
    model_name = next(iter(fake_vertex.models))
    assert deploy.endpoint == endpoint_name
    assert deploy.deployed_model.model == f"{model_name}@1" == version
    resources = deploy.deployed_model.dedicated_resources
    assert resources.machine_spec.machine_type == "n1-standard-4"
    assert resources.machine_spec.accelerator_count == 0
    assert (resources.min_replica_count, resources.max_replica_count) == (1, 4)
    assert dict(deploy.traffic_split) == {"0": 100}
    assert served.metadata["model_version"] == version and served.metadata["endpoint"] == endpoint_name
    # recorded as the champion for the next run's scoring, after the deploy succeeded
    assert repository.versions(gcs / "bucket/modelpress/model_repository", "digits") == [1]


def test_next_deploys_add_versions_and_split_traffic_for_a_canary(fake_vertex, gcs, mlp_onnx_dir):
    _deploy(mlp_onnx_dir, gcs, "run1")
    endpoint_name = next(iter(fake_vertex.endpoints))
    (first_id,) = fake_vertex.endpoints[endpoint_name].traffic_split
    version, _ = _deploy(mlp_onnx_dir, gcs, "run2", canary_traffic_percent=10, accelerator_type="NVIDIA_TESLA_T4",
                         accelerator_count=1)
    model_name = next(iter(fake_vertex.models))
    upload = fake_vertex.requests("upload_model")[-1]
    assert upload.parent_model == model_name and list(upload.model.version_aliases) == ["champion", "default"]
    assert version == f"{model_name}@2"
    assert len(fake_vertex.requests("create_endpoint")) == 1  # the endpoint is reused
    deploy = fake_vertex.requests("deploy_model")[-1]
    assert deploy.endpoint == endpoint_name and deploy.deployed_model.model == version
    assert dict(deploy.traffic_split) == {first_id: 90, "0": 10}
    machine = deploy.deployed_model.dedicated_resources.machine_spec
    assert (machine.accelerator_type, machine.accelerator_count) == (types.AcceleratorType.NVIDIA_TESLA_T4, 1)
    assert fake_vertex.requests("undeploy_model") == []  # the canary runs beside the champion

    # a full rollout: the new version takes everything, the others are undeployed
    _deploy(mlp_onnx_dir, gcs, "run3", canary_traffic_percent=100)
    assert dict(fake_vertex.requests("deploy_model")[-1].traffic_split) == {"0": 100}
    assert len(fake_vertex.requests("undeploy_model")) == 2
    endpoint = fake_vertex.endpoints[endpoint_name]
    assert [d.model for d in endpoint.deployed_models] == [f"{model_name}@3"]
    assert repository.versions(gcs / "bucket/modelpress/model_repository", "digits") == [1, 2, 3]


def test_a_failed_deploy_records_no_champion(fake_vertex, gcs, mlp_onnx_dir, monkeypatch):
    from google.api_core import exceptions

    def refuse(self, request):
        raise exceptions.ResourceExhausted("quota exceeded for n1-standard-4")

    monkeypatch.setattr(EndpointServiceClient, "deploy_model", refuse)
    with pytest.raises(exceptions.ResourceExhausted):
        _deploy(mlp_onnx_dir, gcs, "run1")
    assert repository.versions(gcs / "bucket/modelpress/model_repository", "digits") == []


@pytest.mark.parametrize("incumbent, percent, expected", [
    (None, 10, {"0": 100}),
    ("a", 100, {"0": 100}),
    ("a", 10, {"a": 90, "0": 10}),
    ("b", 25, {"b": 75, "0": 25}),
])
def test_traffic_split(incumbent, percent, expected):
    split = vertex.traffic_split(incumbent, percent)
    assert split == expected and sum(split.values()) == 100


def test_canary_after_canary_keeps_two_models_serving(fake_vertex, gcs, mlp_onnx_dir):
    for run in range(4):  # weekly retraining with a 10 % canary must not pile models up
        _deploy(mlp_onnx_dir, gcs, f"run{run}", canary_traffic_percent=10)
    endpoint = next(iter(fake_vertex.endpoints.values()))
    model_name = next(iter(fake_vertex.models))
    assert [d.model for d in endpoint.deployed_models] == [f"{model_name}@3", f"{model_name}@4"]
    ids = {d.model: d.id for d in endpoint.deployed_models}
    assert dict(endpoint.traffic_split) == {ids[f"{model_name}@3"]: 90, ids[f"{model_name}@4"]: 10}
    assert len(fake_vertex.requests("undeploy_model")) == 2


@pytest.mark.parametrize("change, message", [
    ({"min_replica_count": 3, "max_replica_count": 2}, "min_replica_count <= max_replica_count"),
    ({"canary_traffic_percent": 0}, "canary_traffic_percent must be 1-100"),
    ({"accelerator_type": "NVIDIA_TESLA_X1", "accelerator_count": 1}, "unknown accelerator_type"),
    ({"accelerator_type": "NVIDIA_L4"}, "accelerator_count >= 1"),
    ({"serve_image": "r/serve:latest"}, "tagged 'latest'"),
    ({"serve_image": "r/serve"}, "has no tag"),
    ({"endpoint_display_name": 'x" OR display_name="y'}, "display name"),
])
def test_serving_settings_are_checked(change, message):
    base = dict(serve_image="r/serve:abc1234", model_display_name="m", endpoint_display_name="e")
    with pytest.raises(ModelpressError, match=message):
        vertex.Serving(**{**base, **change}).validate()


def test_image_tags_must_be_immutable():
    assert vertex.resolve_image("r.io/p/cpu:GIT_SHA", "abc1234", "x") == "r.io/p/cpu:abc1234"
    assert vertex.resolve_image("localhost:5000/cpu@sha256:" + "0" * 64, None, "x").endswith("0" * 64)
    assert vertex.resolve_image("localhost:5000/cpu:v1.2", None, "x") == "localhost:5000/cpu:v1.2"
    with pytest.raises(ModelpressError, match="placeholder but no tag"):
        vertex.resolve_image("r.io/p/cpu:GIT_SHA", None, "x")
    with pytest.raises(ModelpressError, match="has no tag"):
        vertex.resolve_image("localhost:5000/cpu", None, "x")
    with pytest.raises(ModelpressError, match="'latest'.*r.io/p/cpu:GIT_SHA"):
        vertex.resolve_image("r.io/p/cpu:latest", None, "x")


def _vertex_config(tmp_path, **changes):
    data = yaml.safe_load((ROOT / "configs" / "vertex.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            data[section][name] = value
        elif value is None:
            data.pop(section)
        else:
            data[section] = value
    path = tmp_path / "vertex.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"image": "europe-west4-docker.pkg.dev/my-project/modelpress/cpu:latest"}, "tagged 'latest'"),
    ({"serving.serve_image": "europe-west4-docker.pkg.dev/my-project/modelpress/serve"}, "serving.serve_image.*no tag"),
    ({"serving.canary_percent": 5}, "'canary_percent' \\(did you mean 'canary_traffic_percent'\\?\\)"),
    ({"distributed.replica_count": "two"}, "distributed.replica_count must be int"),
    ({"distributed.accelerator_type": "NVIDIA_TESLA_T4", "distributed.accelerator_count": 0}, "accelerator_count >= 1"),
    ({"pipeline_root": "/tmp/root"}, "pipeline_root must be a gs:// URI"),
    ({"project": None}, "lacks project"),
])
def test_bad_vertex_config_is_refused_with_the_fix(tmp_path, changes, message):
    with pytest.raises(ModelpressError, match=message):
        settings.load("vertex", _vertex_config(tmp_path, **changes), image_tag="abc1234")


def test_git_sha_fills_the_image_tag(tmp_path):
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    cfg = settings.load("vertex", ROOT / "configs" / "vertex.yaml")
    assert cfg.image_tag == head and cfg.target.image.endswith(f"/cpu:{head}")
    assert cfg.target.serving.serve_image.endswith(f"/serve:{head}")
    assert cfg.target.training_job.image.endswith(f"/gpu:{head}")


def test_a_component_input_named_like_a_custom_job_field_is_refused():
    from kfp import dsl

    from modelpress.core.errors import ModelpressError
    from pipelines.targets.vertex import check_no_clashing_inputs

    @dsl.component
    def clashing(strategy: str = "ddp"):
        pass

    with pytest.raises(ModelpressError, match=r"\['strategy'\] share names with Vertex CustomJob fields"):
        check_no_clashing_inputs(None, clashing)
