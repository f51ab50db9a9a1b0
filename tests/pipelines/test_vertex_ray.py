"""The training pipeline on Ray on Vertex AI (distributed.engine: ray): the compiled step, the exact
cluster requests (against an in-memory PersistentResourceService), the Ray job it submits and
follows (against a fake job submission client), and --dry-run showing all of them."""

import contextlib
import io
import json
import shlex

import pytest
import yaml
from google.api_core import exceptions
from google.cloud.aiplatform_v1 import PersistentResourceServiceClient, types

from modelpress.core.errors import ModelpressError
from modelpress.deploy.vertex import ray_cluster
from pipelines import settings, submit
from pipelines.compile import compile_pipeline
from tests.pipelines.test_submit import PROJECT, SA, _config

LOCATION = "europe-west4"


@pytest.fixture
def ray_config(tmp_path):
    return _config(tmp_path, distributed={"engine": "ray", "parallelism": "fsdp", "replica_count": 1})


def test_engine_ray_compiles_the_train_step_as_ray_train_with_the_ray_block(ray_config, tmp_path):
    cfg = settings.load("vertex", ray_config, image_tag="abc1234")
    spec = yaml.safe_load(compile_pipeline("training", cfg.target, tmp_path / "build").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert "ray-train" in tasks and "distributed-train" not in tasks
    params = tasks["ray-train"]["inputs"]["parameters"]
    ray = params["ray"]["runtimeValue"]["constant"]
    assert ray["cluster"] == "modelpress-ray" and ray["image"].endswith("/modelpress/cpu:abc1234")
    assert (ray["min_workers"], ray["max_workers"], ray["num_workers"]) == (1, 3, 2)
    assert params["parallelism"]["runtimeValue"]["constant"] == "fsdp"
    assert params["service_account"]["runtimeValue"]["constant"] == SA


def test_engine_ray_without_a_ray_block_is_refused(tmp_path):
    data = yaml.safe_load(_config(tmp_path, distributed={"engine": "ray"}).read_text())
    del data["ray"]
    (tmp_path / "noray.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ModelpressError, match="distributed.engine is ray but there is no ray: block"):
        settings.load("vertex", tmp_path / "noray.yaml", image_tag="abc1234")


CLUSTER = ray_cluster.RayCluster(cluster="modelpress-ray", image="europe-west4-docker.pkg.dev/p/m/cpu:abc1234",
                                 head_machine_type="n1-standard-8", worker_machine_type="n1-standard-16",
                                 min_workers=1, max_workers=4, num_workers=2, cpus_per_worker=8)


def test_the_cluster_request_field_by_field():
    req = ray_cluster.create_cluster_request(CLUSTER, PROJECT, LOCATION, service_account=SA, labels={"team": "ml"})
    assert req.parent == f"projects/{PROJECT}/locations/{LOCATION}" and req.persistent_resource_id == "modelpress-ray"
    head, workers = req.persistent_resource.resource_pools
    assert (head.id, head.replica_count, head.machine_spec.machine_type) == ("head-node", 1, "n1-standard-8")
    assert (workers.id, workers.machine_spec.machine_type) == ("worker-pool1", "n1-standard-16")
    assert (workers.autoscaling_spec.min_replica_count, workers.autoscaling_spec.max_replica_count) == (1, 4)
    spec = req.persistent_resource.resource_runtime_spec
    assert dict(spec.ray_spec.resource_pool_images) == {"head-node": CLUSTER.image, "worker-pool1": CLUSTER.image}
    assert spec.ray_spec.head_node_resource_pool_id == "head-node"
    assert spec.service_account_spec.enable_custom_service_account and spec.service_account_spec.service_account == SA
    assert dict(req.persistent_resource.labels) == {"team": "ml"}


class FakeClusters:
    def __init__(self, exists: bool):
        self.exists, self.calls = exists, []

    def _resource(self):
        return types.PersistentResource(name=CLUSTER.name(PROJECT, LOCATION), resource_runtime=types.ResourceRuntime(
            access_uris={"RAY_DASHBOARD_URI": "abc-dot-europe-west4.aiplatform-training.googleusercontent.com"}))

    def get_persistent_resource(self, request):
        self.calls.append(("get", request))
        if not self.exists:
            raise exceptions.NotFound("no such resource")
        return self._resource()

    def create_persistent_resource(self, request):
        self.calls.append(("create", request))
        resource = self._resource()
        return type("Operation", (), {"result": lambda _self, timeout: resource})()


@pytest.mark.parametrize("exists", [True, False])
def test_ensure_cluster_gets_or_creates_it_and_returns_its_dashboard(patch_vertex, exists):
    fake = patch_vertex(FakeClusters(exists), {PersistentResourceServiceClient: ["get_persistent_resource",
                                                                                  "create_persistent_resource"]})
    address = ray_cluster.ensure_cluster(CLUSTER, PROJECT, LOCATION, service_account=SA, log=lambda _: None)
    assert address == "https://abc-dot-europe-west4.aiplatform-training.googleusercontent.com"
    assert [c for c, _ in fake.calls] == (["get"] if exists else ["get", "create"])
    assert fake.calls[0][1].name == f"projects/{PROJECT}/locations/{LOCATION}/persistentResources/modelpress-ray"
    if not exists:
        assert fake.calls[1][1] == ray_cluster.create_cluster_request(CLUSTER, PROJECT, LOCATION, service_account=SA)


def test_a_missing_cluster_that_may_not_be_created_is_named(patch_vertex):
    from dataclasses import replace

    patch_vertex(FakeClusters(False), {PersistentResourceServiceClient: ["get_persistent_resource"]})
    with pytest.raises(ModelpressError, match="does not exist and ray.create is false"):
        ray_cluster.ensure_cluster(replace(CLUSTER, create=False), PROJECT, LOCATION, service_account=SA)


class FakeJobs:
    def __init__(self, statuses, logs):
        self.statuses, self.logs, self.submitted = list(statuses), logs, None

    def __call__(self, address):
        self.address = address
        return self

    def submit_job(self, **kwargs):
        self.submitted = kwargs
        return kwargs["submission_id"]

    def get_job_status(self, job_id):
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]

    def get_job_logs(self, job_id):
        return self.logs


def _submission():
    return ray_cluster.job_submission(
        dataset_uri="gs://b/run/dataset", model_uri="gs://b/run/model", result_uri="gs://b/run/model-ray-result",
        architecture="cnn", model_args={"channels": [8]}, settings={"epochs": 2, "batch_size": 64},
        layout={"parallelism": "ddp"}, cluster=CLUSTER, submission_id="modelpress-train-1")


def test_the_ray_job_is_the_entrypoint_with_the_runs_settings():
    sub = _submission()
    command = shlex.split(sub["entrypoint"])
    assert command[:3] == ["python", "-m", "modelpress.deploy.vertex.ray_job"]
    args = json.loads(command[3])
    assert args["dataset"] == "gs://b/run/dataset" and args["model"] == "gs://b/run/model"
    assert args["settings"] == {"epochs": 2, "batch_size": 64} and args["model_args"] == {"channels": [8]}
    assert args["scaling"] == {"num_workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 8}}
    assert sub["submission_id"] == "modelpress-train-1" and sub["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "8"


def test_run_job_follows_the_job_and_a_failure_is_the_workers_own_message():
    said = []
    jobs = FakeJobs(["PENDING", "RUNNING", "SUCCEEDED"], "epoch 1/2 ...\nepoch 2/2 ...\n")
    ray_cluster.run_job("https://dash", _submission(), log=said.append, client_factory=jobs, poll_s=0)
    assert jobs.address == "https://dash" and jobs.submitted == _submission() and "epoch 2/2 ..." in said
    failing = FakeJobs(["RUNNING", "FAILED"], "Traceback ...\nerror: architecture: unknown architecture 'nonesuch'\n")
    with pytest.raises(ModelpressError, match="Ray job modelpress-train-1 failed: .*unknown architecture 'nonesuch'"):
        ray_cluster.run_job("https://dash", _submission(), log=lambda _: None, client_factory=failing, poll_s=0)


def test_dry_run_shows_the_cluster_and_the_ray_job_beside_the_pipeline_job(ray_config):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert submit.main(["training", "--dry-run", "--config", str(ray_config), "--image-tag", "abc1234",
                            "--set", "source_fingerprint=test", "--set", "epochs=3"]) == 0
    methods = [r["method"] for r in json.loads(buf.getvalue())]
    assert methods == ["PipelineService.CreatePipelineJob", "PersistentResourceService.GetPersistentResource",
                       "PersistentResourceService.CreatePersistentResource", "JobSubmissionClient.submit_job"]
    job = json.loads(buf.getvalue())[-1]["request"]
    args = json.loads(shlex.split(job["entrypoint"])[3])
    assert args["settings"]["epochs"] == 3 and args["layout"]["parallelism"] == "fsdp"
