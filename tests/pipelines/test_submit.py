"""pipelines/submit.py: the PipelineJob and PipelineJobSchedule requests, field by field.

The Pipeline and Schedule services are in-memory fakes patched onto the GAPIC clients; the
template is really compiled and the resources are really built by google-cloud-aiplatform.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.cloud.aiplatform_v1 import PipelineServiceClient, ScheduleServiceClient, types

from modelpress import vertex
from modelpress.errors import ModelpressError
from pipelines import settings, submit

ROOT = Path(__file__).resolve().parents[2]
PARENT = "projects/my-project/locations/europe-west4"
SA = "pipelines@my-project.iam.gserviceaccount.com"
LABELS = {"team": "ml", "app": "modelpress"}


class FakeVertex:
    def __init__(self):
        self.schedules, self.calls = {}, []

    def create_pipeline_job(self, request):
        self.calls.append(("create_pipeline_job", request))
        return types.PipelineJob(request.pipeline_job, name=f"{request.parent}/pipelineJobs/{request.pipeline_job_id}")

    def list_schedules(self, request):
        self.calls.append(("list_schedules", request))
        return [types.Schedule(s) for s in self.schedules.values()
                if request.filter == f'display_name="{s.display_name}"']

    def create_schedule(self, request):
        self.calls.append(("create_schedule", request))
        schedule = types.Schedule(request.schedule, name=f"{request.parent}/schedules/{len(self.schedules) + 1}")
        self.schedules[schedule.name] = schedule
        return types.Schedule(schedule)

    def update_schedule(self, request):
        self.calls.append(("update_schedule", request))
        stored = self.schedules[request.schedule.name]
        for path in request.update_mask.paths:
            setattr(stored, path, getattr(request.schedule, path))
        return types.Schedule(stored)

    def requests(self, method):
        return [r for m, r in self.calls if m == method]


@pytest.fixture
def fake_vertex(patch_vertex):
    return patch_vertex(FakeVertex(), {PipelineServiceClient: ["create_pipeline_job"],
                                       ScheduleServiceClient: ["list_schedules", "create_schedule", "update_schedule"]})


def _config(tmp_path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "vertex.yaml").read_text())
    data.update(changes)
    path = tmp_path / "vertex.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _submit(tmp_path, *args, config=None):
    argv = [*args, "--config", str(config or ROOT / "configs" / "vertex.yaml"), "--output-dir", str(tmp_path / "build")]
    if "--image-tag" not in args:
        argv += ["--image-tag", "abc1234"]
    assert submit.main(argv) == 0


def _parameters(runtime_config) -> dict:
    return vertex.to_json(runtime_config)["parameter_values"]


def _task_caching(pipeline_spec) -> set:
    spec = dict(pipeline_spec)
    return {t["cachingOptions"].get("enableCache", False) for t in spec["root"]["dag"]["tasks"].values()}


def test_submit_sends_the_pipeline_job_from_the_config(fake_vertex, tmp_path):
    _submit(tmp_path, "training", "--set", "epochs=3")
    (request,) = fake_vertex.requests("create_pipeline_job")
    assert request.parent == PARENT
    assert re.fullmatch(r"training-\d{14}", request.pipeline_job_id)
    job = request.pipeline_job
    assert job.display_name == "training" and job.service_account == SA and dict(job.labels) == LABELS
    assert job.runtime_config.gcs_output_directory == "gs://my-bucket/modelpress/pipeline_root"
    assert _parameters(job.runtime_config) == {"source": "gs://my-bucket/datasets/digits.npz",
                                               "architecture": "cnn", "epochs": 3}
    # the template is the one just compiled, with images at the given tag
    template = yaml.safe_load((tmp_path / "build" / "vertex" / "training.yaml").read_text())
    sent = dict(job.pipeline_spec)
    assert sent["pipelineInfo"] == template["pipelineInfo"] and sent["root"].keys() == template["root"].keys()
    images = {e["container"]["image"] for e in sent["deploymentSpec"]["executors"].values()}
    assert "europe-west4-docker.pkg.dev/my-project/modelpress/cpu:abc1234" in images
    assert job.runtime_config.parameter_values is not None
    assert _task_caching(job.pipeline_spec) == {True}  # the compiled settings: training steps are cached


def test_caching_off_in_the_config_reaches_every_task(fake_vertex, tmp_path):
    _submit(tmp_path, "retraining", config=_config(tmp_path, enable_caching=False))
    (request,) = fake_vertex.requests("create_pipeline_job")
    assert _task_caching(request.pipeline_job.pipeline_spec) == {False}
    assert _parameters(request.pipeline_job.runtime_config)["repository"] == "gs://my-bucket/modelpress/model_repository"


def test_a_second_schedule_call_updates_rather_than_duplicates(fake_vertex, tmp_path):
    cron = "TZ=Europe/Brussels 0 3 * * 1"
    _submit(tmp_path, "retraining", "--schedule", cron, "--set", "epochs=5")
    (listed,) = fake_vertex.requests("list_schedules")
    assert (listed.parent, listed.filter) == (PARENT, 'display_name="modelpress-retraining"')
    (create,) = fake_vertex.requests("create_schedule")
    schedule = create.schedule
    assert create.parent == PARENT
    assert (schedule.display_name, schedule.cron, schedule.max_concurrent_run_count) == \
        ("modelpress-retraining", cron, 1)
    run = schedule.create_pipeline_job_request
    assert run.parent == PARENT
    assert run.pipeline_job.service_account == SA and dict(run.pipeline_job.labels) == LABELS
    assert run.pipeline_job.runtime_config.gcs_output_directory == "gs://my-bucket/modelpress/pipeline_root"
    assert _parameters(run.pipeline_job.runtime_config)["epochs"] == 5
    assert dict(run.pipeline_job.pipeline_spec)["pipelineInfo"]["name"] == "retraining"
    assert fake_vertex.requests("create_pipeline_job") == []  # a schedule, not a run now

    _submit(tmp_path, "retraining", "--schedule", "TZ=UTC 30 1 * * *", "--set", "epochs=7",
            "--max-concurrent-runs", "2", "--image-tag", "def5678")
    assert len(fake_vertex.requests("create_schedule")) == 1 and len(fake_vertex.schedules) == 1
    (update,) = fake_vertex.requests("update_schedule")
    assert update.schedule.name == f"{PARENT}/schedules/1"
    assert list(update.update_mask.paths) == ["cron", "max_concurrent_run_count", "create_pipeline_job_request"]
    (stored,) = fake_vertex.schedules.values()
    assert (stored.cron, stored.max_concurrent_run_count) == ("TZ=UTC 30 1 * * *", 2)
    assert _parameters(stored.create_pipeline_job_request.pipeline_job.runtime_config)["epochs"] == 7
    # the schedule now runs the newly tagged images, not the ones it was created with
    spec = dict(stored.create_pipeline_job_request.pipeline_job.pipeline_spec)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"europe-west4-docker.pkg.dev/my-project/modelpress/cpu:def5678"}


def test_schedules_file_applies_every_entry_idempotently(fake_vertex, tmp_path):
    path = tmp_path / "schedules.yaml"
    path.write_text(yaml.safe_dump({"schedules": [
        {"pipeline": "retraining", "display_name": "retrain-weekly", "cron": "TZ=Europe/Brussels 0 3 * * 1",
         "max_concurrent_run_count": 1, "parameters": {"source": "gs://b/new.npz"}},
        {"pipeline": "training", "display_name": "train-nightly", "cron": "CRON_TZ=America/New_York 0 2 * * *",
         "parameters": {"epochs": 4}}]}))
    _submit(tmp_path, "--schedules", str(path))
    _submit(tmp_path, "--schedules", str(path))
    created = {r.schedule.display_name: r.schedule for r in fake_vertex.requests("create_schedule")}
    assert set(created) == {"retrain-weekly", "train-nightly"} and len(fake_vertex.schedules) == 2
    assert len(fake_vertex.requests("update_schedule")) == 2
    weekly = created["retrain-weekly"]
    assert weekly.cron == "TZ=Europe/Brussels 0 3 * * 1"
    # the file's parameters over the config's block for that pipeline
    assert _parameters(weekly.create_pipeline_job_request.pipeline_job.runtime_config) == {
        "source": "gs://b/new.npz", "repository": "gs://my-bucket/modelpress/model_repository",
        "model_name": "digits", "epochs": 10, "accuracy_floor": 0.9}
    nightly = created["train-nightly"]
    assert nightly.cron == "CRON_TZ=America/New_York 0 2 * * *" and nightly.max_concurrent_run_count == 1
    assert _parameters(nightly.create_pipeline_job_request.pipeline_job.runtime_config)["epochs"] == 4


def test_dry_run_needs_no_credentials_and_prints_what_a_real_run_sends(fake_vertex, tmp_path):
    # No credentials anywhere, no metadata server, and any network use fails the run.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "GCE_"))}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), GCE_METADATA_HOST="127.0.0.1:9",
               GCE_METADATA_IP="127.0.0.1:9", NO_GCE_CHECK="True")
    # sitecustomize runs before the script: any connection attempt fails the run
    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "sitecustomize.py").write_text(
        "import socket\n"
        "def refuse(*a, **k):\n    raise OSError('a dry run must not use the network')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\n")
    env["PYTHONPATH"] = str(tmp_path / "guard")
    cli = [sys.executable, str(ROOT / "pipelines" / "submit.py")]
    args = ["training", "--dry-run", "--image-tag", "abc1234", "--job-id", "training-dry-1",
            "--output-dir", str(tmp_path / "dry")]
    proc = subprocess.run([*cli, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (printed,) = json.loads(proc.stdout)
    assert printed["method"] == "PipelineService.CreatePipelineJob"
    request = printed["request"]
    assert request["parent"] == PARENT and request["pipeline_job_id"] == "training-dry-1"
    assert request["pipeline_job"]["service_account"] == SA

    _submit(tmp_path, "training", "--job-id", "training-dry-1")
    (sent,) = fake_vertex.requests("create_pipeline_job")
    assert vertex.to_json(sent) == request

    proc = subprocess.run([*cli, "--schedules", str(ROOT / "configs" / "schedules.yaml"), "--dry-run",
                           "--image-tag", "abc1234", "--output-dir", str(tmp_path / "dry")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    methods = [r["method"] for r in json.loads(proc.stdout)]
    assert methods == ["ScheduleService.ListSchedules", "ScheduleService.CreateSchedule",
                       "ScheduleService.UpdateSchedule"]


@pytest.mark.parametrize("entry, message", [
    ({"cron": "0 3 * * 1"}, "must name its time zone"),
    ({"cron": "TZ=UTC 0 3 * *"}, "five fields"),
    ({"pipeline": "retrain"}, "unknown pipeline 'retrain'"),
    ({"max_concurrent_runs": 2}, "'max_concurrent_runs' \\(did you mean 'max_concurrent_run_count'\\?\\)"),
    ({"parameters": {"epocs": 2}}, "'epocs' \\(did you mean 'epochs'\\?\\)"),
    ({"display_name": 'a"b'}, "display name"),
])
def test_bad_schedules_are_refused_with_the_fix(tmp_path, entry, message):
    path = tmp_path / "schedules.yaml"
    base = {"pipeline": "retraining", "display_name": "weekly", "cron": "TZ=UTC 0 3 * * 1"}
    path.write_text(yaml.safe_dump({"schedules": [{**base, **entry}]}))
    cfg = settings.load("vertex", ROOT / "configs" / "vertex.yaml", image_tag="abc1234")
    with pytest.raises(ModelpressError, match=message):
        settings.load_schedules(path, cfg)


def test_duplicate_schedule_names_are_refused(tmp_path):
    path = tmp_path / "schedules.yaml"
    entry = {"pipeline": "retraining", "display_name": "weekly", "cron": "TZ=UTC 0 3 * * 1"}
    path.write_text(yaml.safe_dump({"schedules": [entry, entry]}))
    cfg = settings.load("vertex", ROOT / "configs" / "vertex.yaml", image_tag="abc1234")
    with pytest.raises(ModelpressError, match="'weekly' is used twice"):
        settings.load_schedules(path, cfg)


def test_cli_errors_name_the_problem(tmp_path, capsys):
    argv = ["training", "--config", str(_config(tmp_path, image="r.io/p/cpu:latest")), "--dry-run",
            "--output-dir", str(tmp_path / "b")]
    assert submit.main(argv) == 2
    assert "tagged 'latest'" in capsys.readouterr().err
    assert submit.main(["training", "--schedule", "0 3 * * *", "--dry-run", "--image-tag", "abc1234",
                        "--output-dir", str(tmp_path / "b")]) == 2
    assert "must name its time zone" in capsys.readouterr().err
