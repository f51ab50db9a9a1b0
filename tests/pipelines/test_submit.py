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

from modelpress.deploy import vertex
from modelpress.core.errors import ModelpressError
from pipelines import settings, submit

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "vertex.yaml"
# A real submission refuses the shipped placeholders: the tests send from a filled-in copy.
PROJECT, BUCKET = "acme-ml", "acme-ml-pipelines"
PARENT = f"projects/{PROJECT}/locations/europe-west4"
SA = f"pipelines@{PROJECT}.iam.gserviceaccount.com"
LABELS = {"team": "ml", "app": "modelpress"}
PLACEHOLDER_KEYS = ["project", "pipeline_root", "service_account", "image", "distributed.image", "ray.image",
                    "serving.serve_image"]


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

    def list_blobs(self, bucket, prefix):  # Cloud Storage: the data behind `source`
        self.calls.append(("list_blobs", (bucket, prefix)))
        return [_Blob(prefix, generation=1733000000000001, md5_hash="q1w2e3==")]


class _Blob:
    def __init__(self, name, generation, md5_hash):
        self.name, self.generation, self.md5_hash = name, generation, md5_hash


@pytest.fixture
def fake_vertex(patch_vertex, monkeypatch):
    from google.cloud import storage

    fake = patch_vertex(FakeVertex(), {PipelineServiceClient: ["create_pipeline_job"],
                                       ScheduleServiceClient: ["list_schedules", "create_schedule", "update_schedule"]})
    monkeypatch.setattr(storage.Client, "list_blobs", lambda self, bucket, prefix: fake.list_blobs(bucket, prefix))
    return fake


def _filled(text: str) -> str:
    return text.replace("my-project", PROJECT).replace("my-bucket", BUCKET)


def _config(tmp_path, **changes) -> Path:
    """The shipped config with its placeholders replaced (and `changes` applied)."""
    data = yaml.safe_load(_filled(SHIPPED.read_text()))
    data.update(changes)
    path = tmp_path / "vertex.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _submit(tmp_path, *args, config=None):
    argv = [*args, "--config", str(config or _config(tmp_path)), "--output-dir", str(tmp_path / "build")]
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
    assert job.runtime_config.gcs_output_directory == f"gs://{BUCKET}/modelpress/pipeline_root"
    # the data's fingerprint (object generation and MD5 from one listing) keys the data step's cache
    assert fake_vertex.requests("list_blobs") == [(BUCKET, "datasets/digits.npz")]
    sent_params = _parameters(job.runtime_config)
    assert re.fullmatch(r"gcs:[0-9a-f]{32}", sent_params.pop("source_fingerprint"))
    assert sent_params == {"source": f"gs://{BUCKET}/datasets/digits.npz", "architecture": "cnn", "epochs": 3}
    # the template is the one just compiled, with images at the given tag
    template = yaml.safe_load((tmp_path / "build" / "vertex" / "training.yaml").read_text())
    sent = dict(job.pipeline_spec)
    assert sent["pipelineInfo"] == template["pipelineInfo"] and sent["root"].keys() == template["root"].keys()
    images = {e["container"]["image"] for e in sent["deploymentSpec"]["executors"].values()}
    assert f"europe-west4-docker.pkg.dev/{PROJECT}/modelpress/cpu:abc1234" in images
    assert job.runtime_config.parameter_values is not None
    assert _task_caching(job.pipeline_spec) == {True}  # the compiled settings: training steps are cached


def test_caching_off_in_the_config_reaches_every_task(fake_vertex, tmp_path):
    _submit(tmp_path, "retraining", config=_config(tmp_path, enable_caching=False))
    (request,) = fake_vertex.requests("create_pipeline_job")
    assert _task_caching(request.pipeline_job.pipeline_spec) == {False}
    repository = _parameters(request.pipeline_job.runtime_config)["repository"]
    assert repository == f"gs://{BUCKET}/modelpress/model_repository"


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
    assert run.pipeline_job.runtime_config.gcs_output_directory == f"gs://{BUCKET}/modelpress/pipeline_root"
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
    assert images == {f"europe-west4-docker.pkg.dev/{PROJECT}/modelpress/cpu:def5678"}


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
        "source": "gs://b/new.npz", "repository": f"gs://{BUCKET}/modelpress/model_repository",
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
    config = _config(tmp_path)
    args = ["training", "--dry-run", "--config", str(config), "--image-tag", "abc1234", "--job-id", "training-dry-1",
            "--output-dir", str(tmp_path / "dry")]
    proc = subprocess.run([*cli, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning" not in proc.stderr  # every placeholder replaced: nothing to warn about
    (printed,) = json.loads(proc.stdout)
    assert printed["method"] == "PipelineService.CreatePipelineJob"
    request = printed["request"]
    assert request["parent"] == PARENT and request["pipeline_job_id"] == "training-dry-1"
    assert request["pipeline_job"]["service_account"] == SA

    _submit(tmp_path, "training", "--job-id", "training-dry-1")
    (sent,) = fake_vertex.requests("create_pipeline_job")
    sent = vertex.to_json(sent)
    # the one difference: a real run reads the gs:// data's fingerprint, a dry run has no credentials
    assert sent["pipeline_job"]["runtime_config"]["parameter_values"].pop("source_fingerprint").startswith("gcs:")
    assert "source_fingerprint of gs://" in proc.stderr and "read from Cloud Storage at submission" in proc.stderr
    assert sent == request

    proc = subprocess.run([*cli, "--schedules", str(ROOT / "configs" / "schedules.yaml"), "--dry-run",
                           "--config", str(config), "--image-tag", "abc1234", "--output-dir", str(tmp_path / "dry")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the shipped schedules file still names the example bucket: its own key is reported
    weekly, nightly = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert weekly.startswith("warning: configs/schedules.yaml modelpress-retraining-weekly parameters.source = "
                             "'gs://my-bucket/datasets/digits-latest.npz'")
    assert nightly.startswith("warning: configs/schedules.yaml modelpress-scoring-nightly parameters.source = "
                              "'gs://my-bucket/scoring/tonight.jsonl'")
    planned = json.loads(proc.stdout)
    assert [r["method"] for r in planned] == 2 * ["ScheduleService.ListSchedules", "ScheduleService.CreateSchedule",
                                                  "ScheduleService.UpdateSchedule"]
    # the nightly scoring schedule runs the batch prediction job over the registered champion
    scoring = planned[4]["request"]["schedule"]
    assert scoring["cron"] == "TZ=Europe/Brussels 0 2 * * *"
    tasks = scoring["create_pipeline_job_request"]["pipeline_job"]["pipeline_spec"]["root"]["dag"]["tasks"]
    assert set(tasks) == {"vertex-model", "model-batch-predict"}


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


def test_dry_run_of_the_shipped_config_warns_once_per_placeholder_key(tmp_path, capsys):
    argv = ["optimise", "--dry-run", "--image-tag", "abc1234", "--output-dir", str(tmp_path / "b")]
    assert submit.main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)[0]["method"] == "PipelineService.CreatePipelineJob"  # the requests still print
    warnings = _warnings(err)
    keys = [*PLACEHOLDER_KEYS, "parameters.optimise.source", "parameters.optimise.repository"]
    assert [w.split(" = ")[0] for w in warnings] == [f"warning: configs/vertex.yaml {k}" for k in keys]
    by_key = dict(zip(keys, warnings))
    assert "example project 'my-project': set your Google Cloud project id" in by_key["project"]
    assert "example bucket 'my-bucket': set a gs:// URI in your bucket" in by_key["pipeline_root"]
    assert "<name>@<your project>.iam.gserviceaccount.com" in by_key["service_account"]
    assert "<region>-docker.pkg.dev/<your project>/modelpress/<name>:GIT_SHA" in by_key["serving.serve_image"]
    assert "gcloud storage cp" in by_key["parameters.optimise.source"]
    assert all("docs/vertex.md, step 0" in w for w in warnings)

    # a --set value replaces the config's placeholder for that run: no warning for it
    assert submit.main([*argv, "--set", "source=gs://acme-data/data/iris.csv"]) == 0
    keys = [w.split(" = ")[0] for w in _warnings(capsys.readouterr().err)]
    assert "warning: configs/vertex.yaml parameters.optimise.source" not in keys and len(keys) == 8
    # ... while a placeholder given with --set is reported as such
    assert submit.main([*argv, "--set", "source=gs://my-bucket/x.npz"]) == 0
    assert "warning: --set source = 'gs://my-bucket/x.npz'" in capsys.readouterr().err


def test_dry_run_with_every_placeholder_replaced_warns_nothing(tmp_path, capsys):
    for pipeline in ("training", "optimise", "retraining"):
        assert submit.main([pipeline, "--dry-run", "--config", str(_config(tmp_path)), "--image-tag", "abc1234",
                            "--output-dir", str(tmp_path / "b")]) == 0
        assert _warnings(capsys.readouterr().err) == []
    # a project merely starting like the example is a real one
    config = _config(tmp_path, project="my-project-123")
    assert submit.main(["training", "--dry-run", "--config", str(config), "--image-tag", "abc1234",
                        "--output-dir", str(tmp_path / "b")]) == 0
    assert _warnings(capsys.readouterr().err) == []


@pytest.mark.parametrize("args, config, named", [
    (["training"], SHIPPED, ["project, pipeline_root, service_account, image", "parameters.training.source"]),
    (["retraining", "--schedule", "TZ=UTC 0 3 * * 1"], SHIPPED, ["parameters.retraining.repository"]),
    (["--schedules", str(ROOT / "configs" / "schedules.yaml")], None,
     ["in configs/schedules.yaml modelpress-retraining-weekly parameters.source, ",
      "configs/schedules.yaml modelpress-scoring-nightly parameters.source:"]),
])
def test_a_real_submission_with_placeholders_fails_before_any_google_call(fake_vertex, tmp_path, capsys,
                                                                          monkeypatch, args, config, named):
    def no_google(*a, **k):
        raise AssertionError("a placeholder must stop the submission before any Google Cloud call")

    import google.auth

    monkeypatch.setattr(google.auth, "default", no_google)  # not even a credentials lookup
    monkeypatch.setattr(submit.vertex, "pipeline_job", no_google)
    monkeypatch.setattr(submit, "compile_pipeline", no_google)  # refused before compiling, too
    argv = [*args, "--config", str(config or _config(tmp_path)), "--image-tag", "abc1234",
            "--output-dir", str(tmp_path / "b")]
    assert submit.main(argv) == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()  # one line, and no requests printed
    assert out == "" and fake_vertex.calls == []
    shown = "configs/vertex.yaml" if config else str(_config(tmp_path))
    assert line.startswith(f"error: {shown} still holds the example project/bucket in ")
    assert all(n in line for n in named)
    assert line.endswith("set your project, bucket, service account and registry there "
                         "(docs/vertex.md, step 0); --dry-run lists each")


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
